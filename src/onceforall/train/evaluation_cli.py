"""`ofa eval`: load a supernet, pick a subnet, recalibrate BN, score it on the test split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from onceforall.arch import Arch
from onceforall.cost import count_macs, count_params
from onceforall.data import DatasetInfo, FolderLoader, TensorLoader, load_dataset
from onceforall.errors import ArchError, CheckpointError
from onceforall.train.checkpoint import load_supernet
from onceforall.train.data import Source, calibration_batches, make_loader, source_size, splits, subset
from onceforall.train.evaluate import SubnetEvaluator
from onceforall.train.recipe import DataConfig


def resolve_supernet(name: str):
    """A supernet file, or a zoo id with shipped weights."""
    if Path(name).is_file():
        return load_supernet(name)
    from onceforall import zoo

    if name in zoo.PRETRAINED:
        return load_supernet(zoo.pretrained_path(name))
    raise CheckpointError(f"{name} is neither a supernet file nor a zoo id with shipped weights")


def pick_arch(net, choice: str, resolution: int | None) -> Arch:
    space = net.search_space()
    size = resolution or max(space.resolutions)
    if choice in ("max", "min"):
        arch = space.max_arch(size) if choice == "max" else space.min_arch(size)
    else:
        arch = Arch.from_json(choice, space=space.name)
        if resolution is not None:
            arch = Arch(**{**arch.__dict__, "image_size": resolution})
    if arch.image_size not in space.resolutions:
        raise ArchError(f"resolution {arch.image_size} is not one of the supernet's {space.resolutions}")
    return space.validate(arch)


class SupernetData(NamedTuple):
    """The data a supernet was trained on: its splits and the recipe's data settings."""

    info: DatasetInfo
    train: Source
    holdout: Source
    test: Source
    config: dict[str, Any]


def supernet_data(
    net, saved: dict[str, Any], data: str | None = None, root: str | None = None
) -> SupernetData:
    """Load the supernet's dataset (or `data`) and split it as its recipe did."""
    recipe = saved.get("recipe") or {}
    config = recipe.get("data", {})
    name = data or config.get("name")
    if name is None:
        raise CheckpointError("the supernet file names no dataset; pass --data")
    info = load_dataset(name, root or (config.get("root") if data is None else None))
    if info.n_classes != net.n_classes or info.in_channels != net.in_channels:
        raise CheckpointError(
            f"{name} has {info.n_classes} classes and {info.in_channels} channels; the supernet expects "
            f"{net.n_classes} and {net.in_channels}"
        )
    train, holdout, test = splits(info, config.get("holdout", 0), config.get("limit"))
    return SupernetData(info, train, holdout, test, config)


def pick_device(device: str | None) -> torch.device:
    """`device`, or CUDA when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def dataset_evaluator(
    net,
    saved: dict[str, Any],
    split: str,
    data: str | None,
    root: str | None,
    device: str | None,
    limit: int | None = None,
    source: SupernetData | None = None,
) -> tuple[SubnetEvaluator, DatasetInfo, int]:
    """A SubnetEvaluator scoring `split` ("test" or "holdout") of the data the supernet was trained on.

    BN statistics are recalibrated on training images as during training; `limit` scores
    only the split's first images; `source` reuses already loaded data. Returns the evaluator, the
    dataset info and the number of images scored.
    """
    info, train, holdout, test, config = source or supernet_data(net, saved, data, root)
    recipe = saved.get("recipe") or {}
    dev = pick_device(device)
    net.to(dev, memory_format=torch.channels_last)
    scored = test if split == "test" else holdout
    if limit is not None:
        scored = subset(scored, torch.arange(min(limit, source_size(scored))))
    crop_scale = config.get("crop_scale", DataConfig().crop_scale)
    n_images, batch = recipe.get("bn_calibration_images", 2000), recipe.get("bn_calibration_batch", 200)
    augment = recipe.get("bn_calibration_augment", False)

    def calibration(r: int):
        return calibration_batches(train, info, r, n_images, batch, crop_scale, dev, augment)

    def batches(r: int):
        return make_loader(
            scored, info, 500, train=False, resolutions=[r], device=dev, memory_format=torch.channels_last
        )

    return SubnetEvaluator(net, calibration, batches), info, source_size(scored)


def training_loader(
    source: SupernetData, device: str | None, seed: int = 0
) -> Callable[[int], TensorLoader | FolderLoader]:
    """resolution -> augmented training batches as in the supernet's recipe (for fine-tuning)."""
    config, defaults = source.config, DataConfig()
    extra = {} if source.info.in_memory else {"workers": config.get("workers", defaults.workers)}

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
            **extra,
        )

    return loader


def evaluate_subnet(
    supernet: str,
    arch_choice: str,
    data: str | None,
    root: str | None,
    resolution: int | None,
    device: str | None,
) -> dict[str, Any]:
    net, saved = resolve_supernet(supernet)
    evaluator, info, images = dataset_evaluator(net, saved, "test", data, root, device)
    arch = pick_arch(net, arch_choice, resolution)
    top1, loss = evaluator(arch)
    space = net.search_space()
    return {
        "supernet": supernet,
        "dataset": info.name,
        "arch_name": arch_choice if arch_choice in ("max", "min") else Path(arch_choice).name,
        "arch": arch.to_dict(),
        "image_size": arch.image_size,
        "top1": top1,
        "loss": loss,
        "images": images,
        "macs": int(count_macs(space, arch).item()),
        "params": int(count_params(space, arch).item()),
    }
