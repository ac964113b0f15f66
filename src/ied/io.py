"""Atomic file output and checksums: a killed job never leaves a half-written result behind.

Outputs get the user's umask (mkstemp's 0600 would hide them from collaborators on a shared file system),
temp files of an earlier killed write to the same target are removed, and a full disk is named as such.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


SHARED_STALE_S = 3600.0  # a shared file's temporary file untouched this long was left by a killed writer


def _temp_files(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*.tmp"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, shared: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    `path` keeps its old content (or stays absent) until the block has finished without an exception. Temporary
    files of `path` left by a killed write are removed first; `shared`: several processes may write `path` at once
    (a cache), so only those untouched for SHARED_STALE_S are another writer's leftovers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _temp_files(path):
        try:
            if not shared or time.time() - stale.stat().st_mtime > SHARED_STALE_S:
                stale.unlink(missing_ok=True)
        except FileNotFoundError:  # its writer finished meanwhile
            pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        # Writers word a full disk differently (torch.save: "file write failed"): ask the disk itself.
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or _disk_full(path.parent):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


class CorruptFileError(Exception):
    """Base for errors about a truncated or corrupt file the pipeline wrote itself (`path`).

    The CLI moves such a file aside (`quarantine`), so that rerunning the pipeline regenerates it.
    """

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


def quarantine(path: str | os.PathLike) -> Path:
    """Rename a corrupt file to `<name>.corrupt` (kept for inspection); returns the new path."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    return target


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def content_sha256(path: str | os.PathLike) -> str:
    """sha256_file, computed once per process for a file of a given size and modification time (the Snakefile asks
    for the digest of the same weights or network file for every job it plans)."""
    stat = os.stat(path)
    return _cached_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
