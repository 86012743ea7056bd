"""The loaders a run needs: training batches, BN-calibration batches, holdout and test batches.

In-memory datasets (Fashion-MNIST, CIFAR) use TensorLoader; ImageFolder trees stream through
FolderLoader. Both draw everything from (seed, epoch, batch), so runs resume exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from onceforall.data import (
    DatasetInfo,
    FolderLoader,
    ImageFolder,
    TensorLoader,
    holdout_split,
    load_dataset,
    with_channels,
)
from onceforall.errors import ConfigError
from onceforall.train.distributed import World
from onceforall.train.recipe import DataConfig

CALIBRATION_SEED = 937162211
Source = tuple[torch.Tensor, torch.Tensor] | ImageFolder


@dataclass
class RunData:
    info: DatasetInfo
    train: TensorLoader | FolderLoader
    calibration: Callable[[int], list[torch.Tensor]]
    holdout: Callable[[int], TensorLoader | FolderLoader]
    test: Callable[[int], TensorLoader | FolderLoader]


def subset(source: Source, indices: torch.Tensor) -> Source:
    """The samples of `source` at `indices`."""
    if isinstance(source, ImageFolder):
        part = copy.copy(source)
        part.samples = [source.samples[i] for i in indices.tolist()]
        return part
    images, labels = source
    return images[indices], labels[indices]


def source_size(source: Source) -> int:
    """The number of samples in `source`."""
    return len(source) if isinstance(source, ImageFolder) else len(source[1])


def make_loader(source: Source, info: DatasetInfo, batch_size: int, **kwargs) -> TensorLoader | FolderLoader:
    if isinstance(source, ImageFolder):
        return FolderLoader(source, batch_size, info.mean, info.std, **kwargs)
    images, labels = source
    return TensorLoader(images, labels, batch_size, info.mean, info.std, **kwargs)


def splits(info: DatasetInfo, holdout: int | None, limit: int | None = None) -> tuple[Source, Source, Source]:
    """(train, holdout, test) sources: `holdout` images split off the training set with a fixed seed.

    `holdout=None` (no recipe says how many): a tenth of the training images, at most the original's 10,000.
    """
    if info.in_memory:
        train: Source = (info.train_images, info.train_labels)
        test: Source = (info.test_images, info.test_labels)
    else:
        train = ImageFolder(info.train_dir, info.image_size, train=True, classes=info.classes)
        test = ImageFolder(info.test_dir, info.image_size, train=False, classes=info.classes)
    if limit is not None:
        train = subset(train, torch.arange(min(limit, source_size(train))))
    if holdout is None:
        holdout = min(10_000, source_size(train) // 10)
    if holdout >= source_size(train):
        raise ConfigError(
            f"data.holdout {holdout} must be smaller than the {source_size(train)} training images"
        )
    train_idx, holdout_idx = holdout_split(source_size(train), holdout)
    return subset(train, train_idx), subset(train, holdout_idx), test


def calibration_batches(
    source: Source,
    info: DatasetInfo,
    resolution: int,
    images: int,
    batch: int,
    crop_scale: Sequence[float],
    device,
    augment: bool = False,
) -> list[torch.Tensor]:
    """The fixed training images BN statistics are recalibrated on (the same on every rank).

    A seeded sample of `images` training images, preprocessed as the images a subnet is scored on
    (resized to `resolution`), or with the training crops and flips when `augment` (the original's
    choice; it scores lower on Fashion-MNIST, see docs/training.md).
    """
    augmentation = dict(train=True, scale=tuple(crop_scale)) if augment else dict(train=False, shuffle=True)
    loader = make_loader(
        source,
        info,
        batch,
        resolutions=[resolution],
        seed=CALIBRATION_SEED,
        device=device,
        memory_format=torch.channels_last,
        **augmentation,
    )
    n_batches = max(1, images // batch)
    return [x for _, (x, _) in zip(range(n_batches), loader)]


def run_data(
    cfg: DataConfig,
    seed: int,
    calibration_images: int,
    calibration_batch: int,
    calibration_augment: bool,
    world: World,
    device: torch.device,
) -> RunData:
    info = with_channels(load_dataset(cfg.name, cfg.root), cfg.channels)
    train, holdout, test = splits(info, cfg.holdout, cfg.limit)
    shard = dict(rank=world.rank, world_size=world.size, device=device, memory_format=torch.channels_last)
    extra = {"workers": cfg.workers} if not info.in_memory else {}
    loader = make_loader(
        train,
        info,
        cfg.batch_size // world.size,
        train=True,
        resolutions=cfg.resolutions,
        seed=seed,
        scale=tuple(cfg.crop_scale),
        flip=cfg.flip,
        **shard,
        **extra,
    )

    def calibration(resolution: int) -> list[torch.Tensor]:
        return calibration_batches(
            train,
            info,
            resolution,
            calibration_images,
            calibration_batch,
            cfg.crop_scale,
            device,
            calibration_augment,
        )

    def evaluation(source: Source) -> Callable[[int], TensorLoader | FolderLoader]:
        return lambda r: make_loader(
            source, info, cfg.eval_batch_size, train=False, resolutions=[r], **shard, **extra
        )

    return RunData(info, loader, calibration, evaluation(holdout), evaluation(test))
