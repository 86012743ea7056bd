"""Atomic file writes, output-folder locks and the clean-up after a killed writer.

A crash never leaves a half-written checkpoint or result behind: files are written to a
temporary `.{name}.*.tmp` beside them and renamed over. A kill -9 between the two leaves the
temporary file; `remove_stale_tmp` deletes such leftovers when the next run takes the folder's
lock (`FolderLock`), so no writer can still be using them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from onceforall.errors import OFAError

LOCK_NAME = ".lock"


class OutputLocked(OFAError):
    """Another process is writing into the same output folder."""


def _new_file_mode() -> int:
    """The mode `open()` gives a new file (0o666 less the umask); mkstemp's 0o600 would hide it from others."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, then rename over it."""
    return _atomic(path, lambda handle: torch.save(obj, handle))


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    return _atomic(path, lambda handle: handle.write(data))


def write_text_atomic(text: str, path: str | Path) -> Path:
    return write_bytes_atomic(text.encode(), path)


def write_json_atomic(data: Any, path: str | Path) -> Path:
    return write_text_atomic(json.dumps(data, indent=2) + "\n", path)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = ("method", "space")  # every search / Pareto result JSON this library writes has them


def is_png(data: bytes) -> bool:
    return data.startswith(PNG_MAGIC)


def is_result_json(data: bytes) -> bool:
    """A search or Pareto result of ours: a JSON object with `method` and `space`."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and all(key in value for key in RESULT_KEYS)


def refuse_foreign_file(path: str | Path, kind: str, is_ours: Callable[[bytes], bool]) -> None:
    """Refuse to replace an existing file that is not a `kind` this library wrote (judged by its bytes).

    A user's notes, a latency table or another command's output given as an output path are left
    untouched; an empty file or one of the same kind may be replaced.
    """
    path = Path(path)
    if path.is_dir():
        raise OFAError(f"{path} is a folder; give a file path for the {kind}")
    if not path.is_file() or not path.stat().st_size:
        return
    if path.stat().st_size > MAX_REPLACEABLE or not is_ours(path.read_bytes()):
        raise OFAError(f"{path} exists and is not a {kind}; it is left untouched: give another path")


MAX_REPLACEABLE = 256 << 20  # a larger file is no result or plot of ours: never read it whole


@contextmanager
def replaced_folder(path: str | Path):
    """Build a folder's new contents beside it, then swap them in only if the block succeeds.

    Yields a fresh temporary folder next to `path`. On success the old folder (if any) is moved
    aside, the new one renamed to `path`, and the old one removed; on any error the temporary
    folder is removed and `path` is left exactly as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


class FolderLock:
    """An exclusive lock on an output folder (its `.lock` file), held from `acquire` to `release`.

    The lock is a `flock`, which the kernel drops when the holder exits however it dies, so the
    lock of a killed run is simply taken over by the next one; the file keeps the holder's pid
    only to name it in the error a second writer gets.
    """

    def __init__(self, folder: str | Path, what: str = "--out"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(
                f"{self.folder} is in use by another process (pid {holder}); wait for it to finish, or "
                f"give another {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete what interrupted atomic writes left in `folder`: `.{name}.*.tmp` files and folders and
    `replaced_folder`'s `.{name}.old`. Call it only while holding the folder's `FolderLock`."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or not entry.name.endswith((".tmp", ".old")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
