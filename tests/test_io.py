"""ied.io: the atomic-write contract, the user's umask, stale temp files, a full disk named as such."""
import errno
import os
import shutil
from pathlib import Path

import pytest

from ied.io import atomic_path, write_text


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_target_keeps_old_content_while_writing_and_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        Path(tmp).write_text("partial")
        assert not target.exists()  # absent while the block runs
    assert target.read_text() == "partial" and temp_files(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            Path(tmp).write_text("half-written")
            assert target.read_text() == "partial"  # old content while the block runs
            raise RuntimeError("killed")
    assert target.read_text() == "partial" and temp_files(tmp_path) == []  # old content, temp gone


def test_outputs_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "shared.txt", "x")
        assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        write_text(tmp_path / "private.txt", "x")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_temp_files_of_a_killed_write_are_removed_by_the_next(tmp_path):
    stale = tmp_path / ".ckpt-300.pt.abc123.tmp"  # what a SIGKILLed torch.save leaves behind
    stale.write_bytes(b"0" * 1000)
    other = tmp_path / ".other.pt.def456.tmp"
    other.write_bytes(b"1")
    write_text(tmp_path / "ckpt-300.pt", "new")
    assert not stale.exists() and other.exists()  # only the same target's leftovers


def test_a_full_disk_is_named(tmp_path, monkeypatch):
    import ied.io
    target = tmp_path / "ckpt-5.pt"
    # A writer that fails without saying why (torch.save reports "file write failed"), on a disk that is full.
    monkeypatch.setattr(ied.io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            Path(tmp).write_text("x")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert "No space left on device" in str(info.value) and temp_files(tmp_path) == []


def test_other_errors_pass_through_while_the_disk_has_room(tmp_path, monkeypatch):
    import ied.io
    # 1 MiB free is still room (the margin is strict); the writer's own error comes out unchanged
    monkeypatch.setattr(ied.io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 0, 1 << 20))
    with pytest.raises(ValueError, match="a bug in the writer"):
        with atomic_path(tmp_path / "out.txt") as tmp:
            Path(tmp).write_text("x")
            raise ValueError("a bug in the writer")
    assert temp_files(tmp_path) == [] and not (tmp_path / "out.txt").exists()

    def unknown(path):
        raise OSError("statvfs failed")

    monkeypatch.setattr(ied.io.shutil, "disk_usage", unknown)  # a disk that cannot say: not called full
    with pytest.raises(ValueError, match="a bug in the writer"):
        with atomic_path(tmp_path / "out.txt"):
            raise ValueError("a bug in the writer")


def test_cli_names_a_full_disk(tmp_path, monkeypatch, capsys):
    from ied import cli
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "aggregate": lambda a: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.parquet")))})
    assert cli.main(["aggregate", "--out", str(tmp_path / "m.parquet"), "--rows", "x"]) == 1
    err = capsys.readouterr().err
    assert "no space left on device writing" in err and "metrics.parquet" in err and len(err.splitlines()) == 1


def test_sha256_file_reads_every_block(tmp_path):
    import hashlib
    from ied.io import sha256_file
    data = os.urandom(3 * (1 << 20) + 17)  # several 1 MiB blocks and a partial one
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_writers_of_a_shared_file_at_once_all_succeed(tmp_path):
    """Two evaluation jobs write the reference-feature cache at once: the second's start does not delete the first's
    temporary file (it did, and the first job failed); a private output's killed-write leftovers are still removed."""
    import os
    import time

    from ied.io import SHARED_STALE_S, atomic_path
    target = tmp_path / "features.npz"
    with atomic_path(target, shared=True) as first:
        Path(first).write_text("first")
        with atomic_path(target, shared=True) as second:
            Path(second).write_text("second")
        assert Path(first).exists()
    assert target.read_text() == "first"
    old = tmp_path / f".{target.name}.killed.tmp"
    old.write_text("left by a killed writer")
    os.utime(old, (time.time() - SHARED_STALE_S - 1,) * 2)
    fresh = tmp_path / f".{target.name}.running.tmp"
    fresh.write_text("another writer's")
    with atomic_path(target, shared=True) as tmp:
        Path(tmp).write_text("third")
    assert not old.exists() and fresh.exists()
    with atomic_path(target) as tmp:  # one job writes a private output: every leftover is stale
        Path(tmp).write_text("fourth")
    assert not fresh.exists() and target.read_text() == "fourth"
