"""A supernet's data: its dataset split as its recipe did, and the evaluators that score its subnets.

Every command that scores or exports a subnet gets its BN statistics from `dataset_evaluator`, so
`ofa eval`, `ofa acc-dataset`, `ofa specialize` and `ofa export` recalibrate the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from onceforall.data import DatasetInfo, FolderLoader, TensorLoader, load_dataset, with_channels
from onceforall.errors import DataError
from onceforall.registry import LoadedSupernet
from onceforall.train.data import Source, calibration_batches, make_loader, source_size, splits, subset
from onceforall.train.evaluate import SubnetEvaluator
from onceforall.train.recipe import DataConfig


class SupernetData(NamedTuple):
    """The data a supernet is scored on: its splits, the data settings and the BN calibration settings."""

    info: DatasetInfo
    train: Source
    holdout: Source
    test: Source
    config: dict[str, Any]
    calibration: dict[str, Any]


def supernet_data(loaded: LoadedSupernet, data: str | None = None, root: str | None = None) -> SupernetData:
    """Load the supernet's dataset (or `data`) and split it as its recipe did."""
    net, saved = loaded
    recipe = saved.get("recipe") or {}
    config = dict(recipe.get("data", {}))
    name = data or config.get("name")
    if name is None:
        raise DataError(
            f"{saved.get('net_id') or saved.get('source')} names no dataset (it was not trained by "
            "`ofa train`); pass --data: a dataset name (fashion-mnist, cifar10, cifar100) or an ImageFolder "
            "root with train/ and val/"
        )
    info = load_dataset(name, root or (config.get("root") if data is None else None))
    # Grey images for a colour supernet (an official one, or one trained with data.channels: 3): repeat.
    info = with_channels(info, 3 if info.in_channels == 1 and net.in_channels == 3 else None)
    if info.n_classes != net.n_classes or info.in_channels != net.in_channels:
        raise DataError(
            f"{name} has {info.n_classes} classes and {info.in_channels} channels; the supernet expects "
            f"{net.n_classes} and {net.in_channels}"
        )
    train, holdout, test = splits(info, config.get("holdout"), config.get("limit"))
    calibration = {
        "images": recipe.get("bn_calibration_images", 2000),
        "batch": recipe.get("bn_calibration_batch", 200),
        "augment": recipe.get("bn_calibration_augment", False),
        "crop_scale": list(config.get("crop_scale", DataConfig().crop_scale)),
    }
    return SupernetData(info, train, holdout, test, config, calibration)


def pick_device(device: str | None) -> torch.device:
    """`device`, or CUDA when there is one; a clear error for a device this machine lacks."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DataError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DataError(f"--device {device}: only cpu and cuda are supported")
    return dev


def _extra(source: SupernetData) -> dict[str, Any]:
    """Loader options of folder datasets (in-memory ones need none): the recipe's workers, else no more
    than the machine's cores (more only makes the DataLoader warn and wait)."""
    if source.info.in_memory:
        return {}
    return {"workers": source.config.get("workers", min(DataConfig().workers, os.cpu_count() or 1))}


def dataset_evaluator(
    loaded: LoadedSupernet,
    source: SupernetData,
    split: str,
    device: str | None,
    limit: int | None = None,
) -> tuple[SubnetEvaluator, int]:
    """A SubnetEvaluator scoring `split` ("test" or "holdout") of `source`, and the images it scores.

    BN statistics are recalibrated on training images as during training; `limit` scores only the
    split's first images.
    """
    net = loaded.net
    dev = pick_device(device)
    net.to(dev, memory_format=torch.channels_last)
    scored = source.test if split == "test" else source.holdout
    if limit is not None:
        scored = subset(scored, torch.arange(min(limit, source_size(scored))))
    if source_size(scored) == 0:
        raise DataError(f"the {split} split of {source.info.name} is empty; nothing to score on")
    cal = source.calibration
    batch = source.config.get("eval_batch_size", DataConfig().eval_batch_size)

    def calibration(r: int) -> list[torch.Tensor]:
        return calibration_batches(
            source.train, source.info, r, cal["images"], cal["batch"], cal["crop_scale"], dev, cal["augment"]
        )

    def batches(r: int) -> TensorLoader | FolderLoader:
        return make_loader(
            scored,
            source.info,
            batch,
            train=False,
            resolutions=[r],
            device=dev,
            memory_format=torch.channels_last,
            **_extra(source),
        )

    return SubnetEvaluator(net, calibration, batches), source_size(scored)


def training_loader(
    source: SupernetData, device: str | None, seed: int = 0
) -> Callable[[int], TensorLoader | FolderLoader]:
    """resolution -> augmented training batches as in the supernet's recipe (for fine-tuning)."""
    config, defaults = source.config, DataConfig()

    def loader(r: int) -> TensorLoader | FolderLoader:
        return make_loader(
            source.train,
            source.info,
            config.get("batch_size", defaults.batch_size),
            train=True,
            resolutions=[r],
            seed=seed,
            scale=tuple(config.get("crop_scale", defaults.crop_scale)),
            flip=config.get("flip", defaults.flip),
            device=pick_device(device),
            memory_format=torch.channels_last,
            **_extra(source),
        )

    return loader


def preprocessing(source: SupernetData, image_size: int) -> dict[str, Any]:
    """What a deployer must do to an image before the exported model sees it."""
    info = source.info
    resize = (
        f"resize the shorter side to ceil({image_size} / 0.875), centre-crop {image_size}x{image_size}"
        if not info.in_memory
        else f"resize to {image_size}x{image_size} (bilinear, align_corners=False, no antialiasing)"
    )
    return {
        "input_size": [info.in_channels, image_size, image_size],
        "channels": info.in_channels,
        "resize": resize,
        "scale": "pixel values / 255",
        "mean": list(info.mean),
        "std": list(info.std),
        "dataset": info.name,
        "n_classes": info.n_classes,
    }
