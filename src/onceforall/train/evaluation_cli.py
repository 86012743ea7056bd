"""`ofa eval`: load a supernet, pick a subnet, recalibrate BN, score it on the test split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from onceforall.arch import Arch
from onceforall.data import FolderLoader, TensorLoader, load_dataset
from onceforall.errors import ArchError, CheckpointError
from onceforall.specialize import count_macs, count_params
from onceforall.train.checkpoint import load_supernet
from onceforall.train.data import calibration_batches, make_loader, splits
from onceforall.train.evaluate import SubnetEvaluator


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


def supernet_data(net, saved: dict[str, Any], data: str | None, root: str | None):
    """(dataset info, train, holdout, test sources, data recipe) of the data the supernet was trained on."""
    recipe = saved.get("recipe") or {}
    data_cfg = recipe.get("data", {})
    name = data or data_cfg.get("name")
    if name is None:
        raise CheckpointError("the supernet file names no dataset; pass --data")
    info = load_dataset(name, root or (data_cfg.get("root") if data is None else None))
    if info.n_classes != net.n_classes or info.in_channels != net.in_channels:
        raise CheckpointError(
            f"{name} has {info.n_classes} classes and {info.in_channels} channels; the supernet expects "
            f"{net.n_classes} and {net.in_channels}"
        )
    train, holdout, test = splits(info, data_cfg.get("holdout", 0), data_cfg.get("limit"))
    return info, train, holdout, test, data_cfg


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def dataset_evaluator(
    net, saved: dict[str, Any], split: str, data: str | None, root: str | None, device: str | None
) -> tuple[SubnetEvaluator, Any, int]:
    """A SubnetEvaluator scoring `split` ("test" or "holdout") of the data the supernet was trained on.

    BN statistics are recalibrated on augmented training images, as during training. Returns the
    evaluator, the dataset info and the number of images scored.
    """
    info, train, holdout, test, data_cfg = supernet_data(net, saved, data, root)
    recipe = saved.get("recipe") or {}
    dev = _device(device)
    net.to(dev, memory_format=torch.channels_last)
    scored = test if split == "test" else holdout
    crop_scale = data_cfg.get("crop_scale", [0.08, 1.0])
    n_images, batch = recipe.get("bn_calibration_images", 2000), recipe.get("bn_calibration_batch", 200)

    def calibration(r: int):
        return calibration_batches(train, info, r, n_images, batch, crop_scale, dev)

    def batches(r: int):
        return make_loader(
            scored, info, 500, train=False, resolutions=[r], device=dev, memory_format=torch.channels_last
        )

    size = len(scored[1]) if isinstance(scored, tuple) else len(scored)
    return SubnetEvaluator(net, calibration, batches), info, size


def training_loader(
    net, saved: dict[str, Any], data: str | None, root: str | None, device: str | None, seed: int = 0
) -> Callable[[int], TensorLoader | FolderLoader]:
    """resolution -> augmented training batches as in the supernet's recipe (for fine-tuning)."""
    info, train, _, _, data_cfg = supernet_data(net, saved, data, root)
    dev = _device(device)
    extra = {"workers": data_cfg.get("workers", 4)} if not info.in_memory else {}

    def loader(r: int) -> TensorLoader | FolderLoader:
        return make_loader(
            train,
            info,
            data_cfg.get("batch_size", 128),
            train=True,
            resolutions=[r],
            seed=seed,
            scale=tuple(data_cfg.get("crop_scale", [0.08, 1.0])),
            flip=data_cfg.get("flip", True),
            device=dev,
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
