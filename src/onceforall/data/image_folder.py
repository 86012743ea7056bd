"""ImageFolder trees (`root/<class>/<image>`, e.g. ImageNet's `train/` and `val/`) decoded with Pillow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from onceforall.data.augment import Range, crop_boxes, flip_mask
from onceforall.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EVAL_CROP = 0.875  # eval resizes the shorter side to ceil(size / 0.875), then center-crops size


def find_classes(root: str | Path) -> list[str]:
    """Sorted names of the class subfolders of `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass a folder of class subfolders of images")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class subfolders; expected {root}/<class>/<image>")
    return classes


def list_images(root: str | Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """Sorted (path, class index) of every image under `root/<class>/`; classes may be missing from `root`."""
    root = Path(root)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in find_classes(root) if name not in index]
    if unknown:
        raise DataError(
            f"{root} has class folders {unknown[:5]} not in the class list; use the train classes"
        )
    samples = []
    for name in classes:
        folder = root / name
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
            samples += [(p, index[name]) for p in files]
    if not samples:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) under {root}/<class>/; check the folder")
    return samples


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W] of an RGB Pillow image."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def train_view(image: Image.Image, size: int, scale: Range, ratio: Range) -> Image.Image:
    """Random resized crop to size x size, mirrored with probability 1/2 (torch's global RNG)."""
    top, left, h, w = crop_boxes(1, image.height, image.width, scale, ratio)[0].tolist()
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if flip_mask(1)[0]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_view(image: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to ceil(size / 0.875), then the central size x size crop."""
    short = math.ceil(size / EVAL_CROP)
    factor = short / min(image.width, image.height)
    width, height = max(short, round(image.width * factor)), max(short, round(image.height * factor))
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageFolder(Dataset):
    """Images of `root/<class>/*` as (uint8 [3, size, size], label); decoding runs in DataLoader workers.

    Train mode draws crops and flips from torch's global RNG, which DataLoader seeds per worker.
    Normalisation is left to the batch on the device. Pass `classes` (the train list) for val folders.
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        train: bool,
        classes: Sequence[str] | None = None,
        scale: Range = (0.08, 1.0),
        ratio: Range = (3 / 4, 4 / 3),
    ) -> None:
        self.root = Path(root)
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.samples = list_images(self.root, self.classes)
        self.size, self.train, self.scale, self.ratio = size, train, scale, ratio

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N] label of every sample, without decoding any image."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from e
        if self.train:
            image = train_view(image, self.size, self.scale, self.ratio)
        else:
            image = eval_view(image, self.size)
        return to_tensor(image), label
