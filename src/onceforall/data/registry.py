"""`load_dataset`: a dataset by name (Fashion-MNIST, CIFAR-10/100) or an ImageFolder path (ImageNet-like)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from onceforall.data import cifar, fashion_mnist
from onceforall.data.image_folder import find_classes
from onceforall.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}
_TEST_DIRS = ("val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset and what a model needs to know about it.

    Small sets come as uint8 [N, C, H, W] image and int64 label tensors; an ImageFolder dataset comes as
    its `train_dir` / `test_dir`: build `ImageFolder(info.train_dir, size, train=True, classes=info.classes)`.
    `image_size` is the native side (the default training resolution, 224, for folders).
    """

    name: str
    n_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_images: torch.Tensor | None = field(default=None, repr=False)
    train_labels: torch.Tensor | None = field(default=None, repr=False)
    test_images: torch.Tensor | None = field(default=None, repr=False)
    test_labels: torch.Tensor | None = field(default=None, repr=False)
    train_dir: Path | None = None
    test_dir: Path | None = None
    classes: tuple[str, ...] = ()

    @property
    def in_memory(self) -> bool:
        """True when the images are tensors, False for an ImageFolder dataset."""
        return self.train_images is not None


def _fashion_mnist(root: Path | None) -> DatasetInfo:
    train = fashion_mnist.load_fashion_mnist(root, "train")
    test = fashion_mnist.load_fashion_mnist(root, "test")
    return DatasetInfo(
        name="fashion-mnist",
        n_classes=fashion_mnist.N_CLASSES,
        in_channels=1,
        image_size=fashion_mnist.IMAGE_SIZE,
        mean=(0.2860,),
        std=(0.3530,),
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
    )


def _cifar(root: Path | None, n_classes: int) -> DatasetInfo:
    if root is None:
        raise DataError(
            f"cifar{n_classes} has no default folder; pass root= the extracted python version "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html"
        )
    if n_classes == 10:
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    else:
        mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    train = cifar.load_cifar(root, n_classes, "train")
    test = cifar.load_cifar(root, n_classes, "test")
    return DatasetInfo(
        name=f"cifar{n_classes}",
        n_classes=n_classes,
        in_channels=3,
        image_size=cifar.IMAGE_SIZE,
        mean=mean,
        std=std,
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
    )


def _image_folder(path: Path) -> DatasetInfo:
    train_dir = path / "train"
    test_dirs = [path / name for name in _TEST_DIRS if (path / name).is_dir()]
    if not train_dir.is_dir() or not test_dirs:
        raise DataError(
            f"{path} needs train/ and val/ (or test/) subfolders of class folders, as ImageNet; "
            f"found train/: {train_dir.is_dir()}, val/ or test/: {bool(test_dirs)}"
        )
    classes = tuple(find_classes(train_dir))
    return DatasetInfo(
        name=path.name,
        n_classes=len(classes),
        in_channels=3,
        image_size=IMAGENET_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train_dir=train_dir,
        test_dir=test_dirs[0],
        classes=classes,
    )


def load_dataset(name_or_path: str | Path, root: str | Path | None = None) -> DatasetInfo:
    """Load `fashion-mnist` (alias `fashion_mnist`), `cifar10`, `cifar100`, or an ImageFolder root path.

    `root` is the folder of a named dataset's files (Fashion-MNIST defaults to the Debian package's).
    """
    key = _ALIASES.get(str(name_or_path).lower())
    root = Path(root) if root is not None else None
    if key == "fashion-mnist":
        return _fashion_mnist(root)
    if key in ("cifar10", "cifar100"):
        return _cifar(root, int(key.removeprefix("cifar")))
    path = Path(name_or_path)
    if path.is_dir():
        return _image_folder(path)
    raise DataError(
        f"unknown dataset {str(name_or_path)!r}: not one of {sorted(_ALIASES)} and not a folder; "
        f"pass a known name or the path of an ImageFolder root (with train/ and val/)"
    )


def with_channels(info: DatasetInfo, channels: int | None) -> DatasetInfo:
    """`info` with grey images repeated into `channels` (3: RGB), for a supernet made for colour images."""
    if channels is None or channels == info.in_channels:
        return info
    if info.in_channels != 1 or channels != 3 or not info.in_memory:
        raise DataError(
            f"{info.name} has {info.in_channels} channel(s); only grey in-memory images become 3 channels "
            f"(data.channels: 3), not {channels}"
        )
    return dataclasses.replace(
        info,
        in_channels=3,
        mean=info.mean * 3,
        std=info.std * 3,
        train_images=info.train_images.expand(-1, 3, -1, -1),
        test_images=info.test_images.expand(-1, 3, -1, -1),
    )
