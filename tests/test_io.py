"""Atomic writes and latency measurement."""

import json
import os
import stat

import pytest
import torch

from onceforall.io import save_atomic, write_json_atomic


def test_save_atomic_replaces_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    save_atomic({"a": torch.ones(2)}, path)
    save_atomic({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(Exception, match="pickle"):
        save_atomic({"weights": torch.ones(1000), "unpicklable": lambda: 0}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_atomic({"step": 1}, tmp_path / "ckpt.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_json_atomic(tmp_path):
    path = write_json_atomic({"ok": [1, 2]}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"ok": [1, 2]}
