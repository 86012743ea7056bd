"""Datasets, batched on-device augmentation, and the in-memory loader."""

from onceforall.data.augment import center_resize, normalize, random_flip, random_resized_crop
from onceforall.data.cifar import load_cifar
from onceforall.data.fashion_mnist import load_fashion_mnist, read_idx
from onceforall.data.folder_loader import FolderLoader
from onceforall.data.image_folder import ImageFolder, find_classes
from onceforall.data.loader import TensorLoader
from onceforall.data.registry import DatasetInfo, load_dataset, with_channels
from onceforall.data.splits import holdout_split

__all__ = [
    "DatasetInfo",
    "FolderLoader",
    "ImageFolder",
    "TensorLoader",
    "center_resize",
    "find_classes",
    "holdout_split",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "normalize",
    "random_flip",
    "random_resized_crop",
    "read_idx",
    "with_channels",
]
