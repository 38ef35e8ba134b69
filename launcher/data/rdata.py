"""Read character vectors out of an R package's lazy-load database (data/Rdata.rdb + .rdx).

Debian's r-cran-janeaustenr ships Jane Austen's novels this way. R serialises objects in XDR
(big-endian) format, each record zlib-compressed behind a 4-byte length. We decode only what such
data needs: character/integer/double/logical vectors, lists, pairlists, symbols, references.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

_NIL, _SYM, _LIST, _CHAR, _LGL, _INT, _REAL, _STR, _VEC = 0, 1, 2, 9, 10, 13, 14, 16, 19
_REF, _NILVALUE, _GLOBALENV, _EMPTYENV, _BASEENV, _MISSINGARG, _BASENAMESPACE = 255, 254, 253, 242, 241, 251, 247
_SPECIAL_VALUES = {_NILVALUE, _GLOBALENV, _EMPTYENV, _BASEENV, _MISSINGARG, _BASENAMESPACE}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ValueError("not an XDR R serialisation")
        version = self.int()
        self.int(), self.int()  # writer and minimal reader versions
        if version == 3:
            self.take(self.int())  # native encoding name

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in _SPECIAL_VALUES:
            return None
        if kind == _REF:
            return self.refs[(flags >> 8) - 1]
        if kind == _SYM:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _LIST:  # pairlist: attributes, tag, value, rest
            out = {}
            while kind == _LIST:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag if tag is not None else len(out)] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            return out
        if kind == _CHAR:
            length = self.int()
            return None if length == -1 else self.take(length).decode("utf-8", errors="replace")
        if kind in (_STR, _VEC):
            value = [self.item() for _ in range(self.int())]
        elif kind in (_INT, _LGL):
            n = self.int()
            value = list(struct.unpack(f">{n}i", self.take(4 * n)))
        elif kind == _REAL:
            n = self.int()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        else:
            raise ValueError(f"R type {kind} is not supported by this reader")
        if has_attr:
            attributes = self.item()
            names = attributes.get("names") if isinstance(attributes, dict) else None
            if kind == _VEC and names:
                return dict(zip(names, value, strict=True))
        return value


def _unserialize(blob: bytes):
    reader = _Reader(blob)
    reader.header()
    return reader.item()


def read_lazyload(data_dir: str | Path) -> dict[str, object]:
    """All objects of an R package's data/ directory, by name."""
    data_dir = Path(data_dir)
    index_bytes = (data_dir / "Rdata.rdx").read_bytes()
    # The index is a gzip file (newer R) or a length-prefixed zlib record (older R).
    index_blob = gzip.decompress(index_bytes) if index_bytes[:2] == b"\x1f\x8b" else zlib.decompress(index_bytes[4:])
    index = _unserialize(index_blob)
    raw = (data_dir / "Rdata.rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        record = raw[offset:offset + length]
        objects[name] = _unserialize(zlib.decompress(record[4:]))
    return objects
