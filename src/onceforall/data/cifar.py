"""CIFAR-10 / CIFAR-100 from the python pickle batches, as uint8 image and int64 label tensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from onceforall.errors import DataError

IMAGE_SIZE = 32
_LAYOUT = {  # n_classes -> (folder name of the official archive, train files, test files, label key)
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
# The only globals a CIFAR pickle needs: numpy array reconstruction (old and new module names) and bytes.
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global a CIFAR batch does not need, so a file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise DataError(f"pickle asks for {module}.{name}, which no CIFAR batch needs; refusing to load")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one pickle batch."""
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}; re-download the python version") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} has keys {keys}, expected b'data' and {label_key!r}; is it the right CIFAR?")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE or len(labels) != len(data):
        raise DataError(
            f"{path} holds data {data.shape} and {len(labels)} labels, expected [N, 3072] and N labels"
        )
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels


def load_cifar(
    root: str | Path, n_classes: int = 10, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of CIFAR-10 or CIFAR-100 ('train' or 'test').

    `root` is the extracted folder (`cifar-10-batches-py` / `cifar-100-python`) or the folder holding it.
    """
    if n_classes not in _LAYOUT:
        raise DataError(f"CIFAR has 10 or 100 classes, got n_classes={n_classes}; use 10 or 100")
    if split not in ("train", "test"):
        raise DataError(f"unknown CIFAR split {split!r}; use 'train' or 'test'")
    folder, train_files, test_files, label_key = _LAYOUT[n_classes]
    root = Path(root)
    if (root / folder).is_dir():
        root = root / folder
    paths = [root / name for name in (train_files if split == "train" else test_files)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"CIFAR-{n_classes} files {missing} not found in {root}; download the python version from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass the folder"
        )
    batches = [read_batch(p, label_key) for p in paths]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"CIFAR-{n_classes} labels span {labels.min()}..{labels.max()}; check n_classes")
    return torch.from_numpy(images), torch.from_numpy(labels)
