"""Checkpoint commit protocol under faults: kills at every write, truncated pointers, empty shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.rundir import checkpoints as ckpt
from launcher.runtime.checkpoint import CheckpointFiles, CheckpointManager


class Killed(Exception):
    """Stands in for SIGKILL: the writer stops dead at that point."""


def _manager(root: Path, keep_last: int = 2) -> CheckpointManager:
    return CheckpointManager(str(root), keep_last, rank=0, barrier=lambda: None)


def _writer(payload: bytes, kill_after: int | None = None):
    """Writes three shard files in chunks; with kill_after=N it dies at the N-th write call."""
    calls = {"n": 0}

    def write(files: CheckpointFiles) -> None:
        for shard in ("model.bin", "optim.bin", "extra.bin"):
            with files.open(shard) as handle:
                for start in range(0, len(payload), 64):
                    calls["n"] += 1
                    if kill_after is not None and calls["n"] > kill_after:
                        raise Killed
                    handle.write(payload[start:start + 64])

    return write


def test_commit_writes_manifest_pointer_and_prunes_after_commit(tmp_path):
    manager = _manager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        manager.save(step, {"step": step}, _writer(bytes([step]) * 200))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".commits", "latest", "step-00000020", "step-00000030"]
    assert (tmp_path / "latest").read_text().strip() == "step-00000030"
    assert ckpt.verify(ckpt.find_resume_dir(tmp_path, "auto")) == {"step": 30}


@pytest.mark.parametrize("keep_last", [1, 2])
def test_kill_at_every_write_point_never_breaks_resume(tmp_path, keep_last):
    """Kill the writer at each of the 3 x 20 write calls of a new save:
    resume always finds the previous committed checkpoint, intact."""
    payload = bytes(range(256)) * 5  # 20 chunks per shard: 60 kill points
    total_writes = 3 * (len(payload) // 64)
    points = 0
    for kill_after in range(total_writes):
        root = tmp_path / f"k{kill_after}"
        manager = _manager(root, keep_last)
        manager.save(1, {"step": 1}, _writer(b"\x01" * 256))
        with pytest.raises(Killed):
            manager.save(2, {"step": 2}, _writer(payload, kill_after))
        found = ckpt.find_resume_dir(root, "auto")
        assert found is not None and found.name == "step-00000001"
        assert ckpt.verify(found) == {"step": 1}
        assert (root / "latest").read_text().strip() == "step-00000001"
        assert not (root / "step-00000002").exists()
        points += 1
        # the next save after the crash cleans up and commits
        manager.save(2, {"step": 2}, _writer(payload))
        assert ckpt.verify(ckpt.find_resume_dir(root, "auto")) == {"step": 2}
    assert points >= 50


def test_truncated_pointer_is_a_hard_error(tmp_path):
    _manager(tmp_path).save(5, {"step": 5}, _writer(b"x" * 100))
    (tmp_path / "latest").write_text("step-000")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.find_resume_dir(tmp_path, "auto")
    (tmp_path / "latest").write_text("")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.find_resume_dir(tmp_path, "auto")


def test_pointer_to_missing_directory_is_a_hard_error(tmp_path):
    _manager(tmp_path).save(5, {"step": 5}, _writer(b"x" * 100))
    (tmp_path / "latest").write_text("step-00000009\n")
    with pytest.raises(ckpt.CheckpointError, match="missing or incomplete"):
        ckpt.find_resume_dir(tmp_path, "auto")


def test_zero_byte_or_truncated_shard_is_a_hard_error(tmp_path):
    committed = _manager(tmp_path).save(5, {"step": 5}, _writer(b"x" * 100))
    (committed / "optim.bin").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="optim.bin has 0 bytes"):
        ckpt.verify(committed)
    (committed / "optim.bin").write_bytes(b"x" * 50)
    with pytest.raises(ckpt.CheckpointError, match="manifest says 100"):
        ckpt.verify(committed)


def test_resume_from_missing_explicit_path_is_a_hard_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="refusing to start from scratch"):
        ckpt.find_resume_dir(tmp_path / "checkpoints", str(tmp_path / "nowhere"))


def test_auto_without_any_checkpoint_starts_fresh_and_never_ignores_tmp(tmp_path):
    assert ckpt.find_resume_dir(tmp_path / "none", "auto") is None
    (tmp_path / ".tmp-step-00000007").mkdir()
    (tmp_path / ".tmp-step-00000007" / "model.bin").write_bytes(b"half")
    assert ckpt.find_resume_dir(tmp_path, "auto") is None
    assert ckpt.find_resume_dir(tmp_path, "never") is None


def test_kill_between_rename_and_pointer_update_resumes_the_new_one(tmp_path):
    manager = _manager(tmp_path)
    manager.save(1, {"step": 1}, _writer(b"a" * 64))
    manager.save(2, {"step": 2}, _writer(b"b" * 64))
    (tmp_path / "latest").unlink()  # as if killed right after the rename of step 2, before the pointer
    assert ckpt.find_resume_dir(tmp_path, "auto").name == "step-00000002"


def test_explicit_path_may_be_a_checkpoints_root(tmp_path):
    _manager(tmp_path).save(3, {"step": 3}, _writer(b"a" * 64))
    assert ckpt.find_resume_dir(Path("/unused"), str(tmp_path)).name == "step-00000003"
    manifest = json.loads((tmp_path / "step-00000003" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.bin", "optim.bin", "extra.bin", "rng-rank00000.pt"}


# Every call by which a save touches the file system: torch.save's zip records, file and
# directory operations of the commit (manifest, rename, pointer) and of the pruning after it.
_FILE_SYSTEM_CALLS = {"write_record", "write_end_of_file", "write", "flush", "fsync", "rename", "replace",
                      "mkdir", "unlink", "rmdir", "open", "close", "truncate"}


def _save_and_die_at(manager: CheckpointManager, step: int, writer, kill_at: int,
                     tally: Path | None = None) -> None:
    """In a forked child: save, and SIGKILL itself just before its kill_at-th file-system call
    (with `tally`, a save that is never killed writes its number of calls there)."""
    import os
    import signal
    import sys

    calls = [0]

    def watch(_frame, event, function) -> None:
        if event == "c_call" and getattr(function, "__name__", "") in _FILE_SYSTEM_CALLS:
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    try:
        sys.setprofile(watch)
        manager.save(step, {"step": step}, writer)
        sys.setprofile(None)
        if tally is not None:
            tally.write_text(str(calls[0]))
    except BaseException:  # noqa: BLE001 - a forked child must never return into pytest
        os._exit(1)
    os._exit(0)


def test_sigkill_at_every_file_system_call_of_a_real_save_never_breaks_resume(tmp_path):
    """docs/faults.md 6 and 7 with real kills: a forked process saves a real model and AdamW state with
    torch.save through the commit protocol (keep_last=1, so the old checkpoint is pruned after the
    commit) and is SIGKILLed before its N-th file-system call: every N of the commit and the pruning
    (the last 60 calls) and of the start, every 6th among torch.save's record writes between. Each
    time, resume finds a committed checkpoint whose tensors are exactly the ones saved at that step,
    and the next save commits."""
    import os
    import signal

    import torch
    from torch import nn

    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
    optimizer = torch.optim.AdamW(model.parameters())

    def train_one_step() -> dict:
        model(torch.randn(2, 8)).sum().backward()
        optimizer.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    def writer(files: CheckpointFiles) -> None:
        files.save(model.state_dict(), "model.pt")
        files.save(optimizer.state_dict(), "optimizer.pt")

    expected = {1: train_one_step()}
    expected[2] = train_one_step()  # the state the killed save was writing
    total = _calls_of_a_save(tmp_path, writer, model, expected)
    points = sorted({*range(1, 31), *range(31, total - 60, 6), *range(max(1, total - 60), total + 2)})
    resumed_at = []
    for kill_at in points:
        root = tmp_path / f"kill-{kill_at:03d}"
        manager, status = _second_save_in_a_child(root, writer, model, expected, kill_at)
        if not os.WIFSIGNALED(status):  # the save made fewer calls than kill_at: every point was tried
            assert os.WEXITSTATUS(status) == 0 and kill_at > total
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        found = ckpt.find_resume_dir(root, "auto")
        assert found is not None, f"kill at call {kill_at}: nothing to resume"
        step = ckpt.verify(found)["step"]
        restored = torch.load(found / "model.pt", weights_only=True)
        assert all(torch.equal(restored[k], expected[step][k]) for k in restored), f"kill at call {kill_at}"
        resumed_at.append(step)
        manager.save(2, {"step": 2}, writer)  # the next save cleans up after the dead one and commits
        assert ckpt.verify(ckpt.find_resume_dir(root, "auto")) == {"step": 2}
        assert not list(root.glob(".tmp-*"))
    print(f"{len(resumed_at)} kill points of {total} calls; resumed at step 1: {resumed_at.count(1)}, "
          f"at step 2: {resumed_at.count(2)}")
    assert len(resumed_at) >= 100  # distinct kill points, each resumed
    assert resumed_at.count(1) >= 40 and resumed_at[-1] == 2  # killed while pruning: the new one is committed


def _calls_of_a_save(tmp_path: Path, writer, model, expected: dict) -> int:
    """How many file-system calls a whole save makes (a child counts them, unkilled)."""
    import os

    tally = tmp_path / "calls"
    _, status = _second_save_in_a_child(tmp_path / "count", writer, model, expected, 10**9, tally)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return int(tally.read_text())


def _second_save_in_a_child(root: Path, writer, model, expected: dict, kill_at: int, tally: Path | None = None):
    """Step 1 committed here; step 2 saved by a forked child that dies at its kill_at-th
    file-system call (counting them into `tally`). (manager, the child's wait status)."""
    import os

    manager = CheckpointManager(str(root), 1, rank=0, barrier=lambda: None)
    model.load_state_dict(expected[1])
    manager.save(1, {"step": 1}, writer)
    model.load_state_dict(expected[2])
    pid = os.fork()
    if pid == 0:
        _save_and_die_at(manager, 2, writer, kill_at, tally)
    return manager, os.waitpid(pid, 0)[1]


def _real_checkpoint(root: Path, step: int = 1) -> Path:
    """A checkpoint as the trainer writes one: torch.save of a model and AdamW state (hashed while
    written), plus a file written as bytes, plus one a library copied in by itself (adopted by
    name), plus the RNG state."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 16)).sum().backward()
    optimizer.step()

    def writer(files: CheckpointFiles) -> None:
        files.save(model.state_dict(), "model.pt")
        files.save_at(optimizer.state_dict(), files.path("optimizer.pt"))  # a library that names the path
        files.save({"embedding": torch.randn(1 << 19)}, "big.pt")  # 2 MB: hashed beside the write
        with files.open("notes.json") as handle:
            handle.write(b'{"written": "without torch.save"}')
        Path(files.path("script.py")).write_text("print('copied in by a library')\n")
        files.adopt("script.py")

    return _manager(root).save(step, {"step": step}, writer)


def test_every_byte_flip_at_20_places_of_every_file_is_refused(tmp_path):
    """Same size, one bit changed: the manifest's checksum catches each of them (0 silent resumes)."""
    committed = _real_checkpoint(tmp_path)
    manifest = json.loads((committed / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "optimizer.pt", "big.pt", "notes.json", "script.py",
                                      "rng-rank00000.pt"}
    assert all(set(entry) == {"size", "xxh3_128"} for entry in manifest["files"].values())
    refused = silent = 0
    for name in manifest["files"]:
        path = committed / name
        original = path.read_bytes()
        for k in range(20):
            position = k * (len(original) - 1) // 19  # first byte, last byte and 18 between
            damaged = bytearray(original)
            damaged[position] ^= 0x10
            path.write_bytes(bytes(damaged))
            try:
                ckpt.verify(ckpt.find_resume_dir(tmp_path, "auto"))
                silent += 1
            except ckpt.CheckpointError as error:
                assert f"{name}: its content differs from the manifest" in str(error)
                refused += 1
        path.write_bytes(original)
    assert (refused, silent) == (120, 0)
    assert ckpt.verify(committed) == {"step": 1}  # restored: intact again


def test_checksums_are_streamed_while_writing_and_split_between_ranks(tmp_path):

    committed = _real_checkpoint(tmp_path)
    manifest = ckpt.read_manifest(committed)
    for name, entry in manifest["files"].items():
        assert entry["xxh3_128"] == ckpt.file_digest(committed / name), name
    assert not list(committed.glob(".digests-*"))  # merged into the manifest, then removed
    # Each of 3 ranks checks every third file: together they check each file once.
    shares = [ckpt.file_problems(committed, manifest, rank, 3) for rank in range(3)]
    assert shares == [[], [], []]
    (committed / "model.pt").write_bytes(b"\0" * (committed / "model.pt").stat().st_size)
    shares = [ckpt.file_problems(committed, manifest, rank, 3) for rank in range(3)]
    assert sum(len(s) for s in shares) == 1



def test_a_file_written_past_the_checkpoint_writer_fails_the_save_and_keeps_the_last_one(tmp_path):
    """Checksums by construction: a writer that bypasses CheckpointFiles (a plain open, or a library
    writing by itself without being adopted) cannot commit a file without a checksum."""
    import torch

    committed = _real_checkpoint(tmp_path)

    def bypassing(files: CheckpointFiles) -> None:
        files.save({"w": torch.ones(3)}, "model.pt")
        torch.save({"w": torch.zeros(3)}, files.path("sneaked.pt"))  # torch.save itself: no seam

    with pytest.raises(ckpt.CheckpointError, match="sneaked.pt was written outside the checkpoint writer"):
        _manager(tmp_path).save(2, {"step": 2}, bypassing)
    assert ckpt.find_resume_dir(tmp_path, "auto") == committed and ckpt.verify(committed) == {"step": 1}
    with pytest.raises(ckpt.CheckpointError, match="outside the checkpoint being written"):
        _manager(tmp_path).save(3, {"step": 3}, lambda files: files.save({}, "../escaped.pt"))


def test_a_file_the_manifest_does_not_list_is_damage(tmp_path):
    committed = _real_checkpoint(tmp_path)
    (committed / "extra.pt").write_bytes(b"dropped in later")
    with pytest.raises(ckpt.CheckpointError, match="extra.pt is not in the manifest"):
        ckpt.verify(committed)
    manifest = ckpt.read_manifest(committed)
    assert ckpt.file_problems(committed, manifest, rank=1, world_size=2) == []  # rank 0 looks for strays


def test_an_edited_manifest_cannot_vouch_for_a_file_it_no_longer_describes(tmp_path):
    """Issue 32: an entry dropped from manifest.json and its file then damaged was a silent resume;
    so was a checksum replaced by the damaged file's. The manifest's own checksum, recorded at the
    commit outside the step directory, refuses both; and a file without an entry is a stray."""
    committed = _real_checkpoint(tmp_path)
    original = (committed / "manifest.json").read_text()
    manifest = json.loads(original)
    del manifest["files"]["model.pt"]
    (committed / "manifest.json").write_text(json.dumps(manifest))
    (committed / "model.pt").write_bytes(b"\0" * 64)
    with pytest.raises(ckpt.CheckpointError, match="manifest.json was changed after its checkpoint was committed"):
        ckpt.verify(committed)
    (tmp_path / ckpt.COMMITS).rename(tmp_path / "moved-aside")  # no record: the stray file still refuses
    with pytest.raises(ckpt.CheckpointError, match="model.pt is not in the manifest"):
        ckpt.verify(committed)
    (tmp_path / "moved-aside").rename(tmp_path / ckpt.COMMITS)
    manifest = json.loads(original)  # the entry kept, its checksum replaced by the damaged file's
    manifest["files"]["model.pt"] = {"size": 64, ckpt.CHECKSUM: ckpt.file_digest(committed / "model.pt")}
    (committed / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(ckpt.CheckpointError, match="changed after its checkpoint was committed"):
        ckpt.verify(committed)
    (committed / "manifest.json").write_text(original)
    with pytest.raises(ckpt.CheckpointError, match="model.pt has 64 bytes"):
        ckpt.verify(committed)


def test_each_commit_records_its_manifest_and_a_later_commit_of_the_step_wins(tmp_path):
    first = _real_checkpoint(tmp_path)
    again = _real_checkpoint(tmp_path)  # the same step committed again (a restart): the last record counts
    assert first == again and ckpt.verify(again) == {"step": 1}
    lines = (tmp_path / ckpt.COMMITS).read_text().splitlines()
    assert [json.loads(line)["step_dir"] for line in lines] == ["step-00000001", "step-00000001"]
    (tmp_path / ckpt.COMMITS).write_text((tmp_path / ckpt.COMMITS).read_text() + '{"step_dir": "step-0000')
    assert ckpt.verify(again) == {"step": 1}  # a line cut by a kill is skipped


@pytest.mark.parametrize("pointer", [b"\xff\xfe\x00garbage", b"step-12", b"x" * 5000])
def test_unreadable_pointers_are_one_clear_error(tmp_path, pointer):
    _real_checkpoint(tmp_path)
    (tmp_path / "latest").write_bytes(pointer)
    with pytest.raises(ckpt.CheckpointError, match="latest is (corrupt|unreadable)"):
        ckpt.find_resume_dir(tmp_path, "auto")


def test_a_pointer_that_is_a_link_or_a_directory_is_refused(tmp_path):
    _real_checkpoint(tmp_path)
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").symlink_to("/")
    with pytest.raises(ckpt.CheckpointError, match="is not a plain file"):
        ckpt.find_resume_dir(tmp_path, "auto")
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="is not a plain file"):
        ckpt.find_resume_dir(tmp_path, "auto")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"meta": {"step": "ten"}, "files": {}}', "\udcff"])
def test_a_broken_manifest_is_one_clear_error(tmp_path, text):
    committed = _real_checkpoint(tmp_path)
    (committed / "manifest.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ckpt.CheckpointError, match="manifest"):
        ckpt.verify(ckpt.find_resume_dir(tmp_path, "auto"))


def test_step_numbers_past_eight_digits_resume_and_prune_in_numeric_order(tmp_path):
    manager = _manager(tmp_path, keep_last=2)
    for step in (99_999_998, 99_999_999, 100_000_001):
        manager.save(step, {"step": step}, _writer(b"s" * 64))
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-100000001", "step-99999999"]
    found = ckpt.find_resume_dir(tmp_path, "auto")
    assert found.name == "step-100000001" and ckpt.verify(found) == {"step": 100_000_001}
    (tmp_path / "latest").unlink()  # without the pointer, the newest by number, not by name
    assert ckpt.find_resume_dir(tmp_path, "auto").name == "step-100000001"
