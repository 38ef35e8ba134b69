"""Reading the small text files a user names (recipes, hostfiles): regular files of bounded size.

`/dev/zero`, a FIFO or a multi-gigabyte file given by mistake must be refused at once, not read.
"""

from __future__ import annotations

import os
import stat

RECIPE_LIMIT = 1 << 20  # 1 MiB: a recipe is a few KB
HOSTFILE_LIMIT = 10 << 20  # 10 MiB: tens of thousands of hosts


class UnreadableFile(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def read_small_text(path: str | os.PathLike, limit: int) -> str:
    """The file's text (UTF-8, a leading byte-order mark kept), or UnreadableFile."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnreadableFile("file not found", "check the path") from None
    except IsADirectoryError:
        raise UnreadableFile("is a directory, not a file", "name the file inside it") from None
    except OSError as error:
        raise UnreadableFile(f"cannot open: {error.strerror}", "check the path and its permissions") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile("is not a regular file (a device, pipe or socket)", "give a plain text file")
        if info.st_size > limit:
            raise UnreadableFile(f"is {info.st_size:,} bytes, more than the {limit:,} a file like this may have",
                                 "is this the right file?")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"is more than {limit:,} bytes", "is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnreadableFile(f"is not UTF-8 text (byte {error.start})", "save it as UTF-8") from None
