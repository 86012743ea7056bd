"""Fashion-MNIST from its IDX files (plain or gzipped), as uint8 image and int64 label tensors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from onceforall.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian package `dataset-fashion-mnist`
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
N_CLASSES = 10
IMAGE_SIZE = 28
_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (gzipped if its name ends in .gz) into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; re-download or reinstall the dataset") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] == 0:
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'}, "
            f"expected 0000080N); pass the folder holding the original Fashion-MNIST files"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; re-download or reinstall the dataset")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path} holds {len(raw)} bytes but its header {shape} needs {expected}; "
            f"re-download or reinstall the dataset"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_file(root: Path, name: str) -> Path:
    """The file `name` or `name.gz` in `root`; DataError saying where it looked when neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {name}[.gz] not found in {root}; run `apt-get install dataset-fashion-mnist` "
        f"(installs to {DEFAULT_ROOT}) or pass the folder holding the IDX files"
    )


def load_fashion_mnist(
    root: str | Path | None = None, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 1, 28, 28] and labels int64 [N] of the 'train' (60k) or 'test' (10k) split."""
    if split not in FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use one of {sorted(FILES)}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {root} does not exist; run `apt-get install dataset-fashion-mnist` "
            f"(installs to {DEFAULT_ROOT}) or pass the folder holding the IDX files"
        )
    image_name, label_name = FILES[split]
    images = read_idx(find_file(root, image_name))
    labels = read_idx(find_file(root, label_name))
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{image_name} holds shape {images.shape}, expected [N, 28, 28]; check the folder")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{label_name} holds shape {labels.shape} for {len(images)} images, expected [{len(images)}]; "
            f"check that images and labels come from the same split"
        )
    if labels.size and labels.max() >= N_CLASSES:
        raise DataError(
            f"{label_name} has label {labels.max()}, expected 0..{N_CLASSES - 1}; check the folder"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
