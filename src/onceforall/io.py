"""Atomic file writes: a crash never leaves a half-written checkpoint or result behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


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
