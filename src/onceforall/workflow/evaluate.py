"""Scoring one subnet (`ofa eval`) and reading the arch files every command writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onceforall.arch import Arch, SearchSpace
from onceforall.cost import count_macs, count_params
from onceforall.errors import ArchError
from onceforall.progress import progress_bar
from onceforall.registry import LoadedSupernet
from onceforall.workflow.data import dataset_evaluator, supernet_data

MAX_ARCH_FILE = 1 << 20  # an arch file is a few hundred bytes; refuse to parse anything huge


def read_arch(choice: str | Path, space: SearchSpace, resolution: int | None = None) -> Arch:
    """`max`, `min`, or a file any command writes: an arch JSON, a search result (its best arch), an
    `ofa eval --json` line, an export folder (its arch.json), or an official `{ks, e, d}` dict.

    `resolution` replaces the arch's input size. The arch is validated against `space`.
    """
    size = resolution or max(space.resolutions)
    if str(choice) in ("max", "min"):
        arch = space.max_arch(size) if str(choice) == "max" else space.min_arch(size)
        return _at(arch, resolution, space)
    path = Path(choice)
    if path.is_dir():
        path = path / "arch.json"
    if not path.is_file():
        raise ArchError(f"arch {choice}: expected max, min, or an arch JSON file (or an export folder)")
    if path.stat().st_size > MAX_ARCH_FILE:
        raise ArchError(f"{path} is {path.stat().st_size} bytes: not an arch file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ArchError(f"{path} is not an arch JSON file: {type(err).__name__}: {err}") from None
    if isinstance(data, list):
        raise ArchError(
            f"{path} holds a list ({len(data)} entries; e.g. results.json of `ofa specialize`); pass one "
            "budget's export folder or its arch.json instead"
        )
    if isinstance(data, dict) and isinstance(data.get("best"), dict):
        data = data["best"].get("arch")
    elif isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    return _at(_integral(Arch.from_dict(data, space=space.name)), resolution, space)


def _integral(arch: Arch) -> Arch:
    """Refuse a JSON arch whose sizes, kernels, depths or width indices are not integers (3.5, 20.0,
    true): they would reach the convolutions as floats. Expand ratios are numbers."""
    ints = {"image_size": [arch.image_size], "ks": arch.ks or (), "d": arch.d, "w": arch.w or ()}
    for name, values in ints.items():
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int):
                where = name if name == "image_size" else f"{name}[{i}]"
                raise ArchError(
                    f"arch.{where} = {value!r} is not an integer; write it without a decimal point"
                )
    for i, value in enumerate(arch.e):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArchError(f"arch.e[{i}] = {value!r} is not a number")
    return arch


def _at(arch: Arch, resolution: int | None, space: SearchSpace) -> Arch:
    if resolution is not None:
        arch = Arch(**{**arch.__dict__, "image_size": resolution})
    if arch.image_size not in space.resolutions:
        raise ArchError(
            f"resolution {arch.image_size} is not one of the supernet's {space.resolutions}; pass --resolution "
            "with one of them"
        )
    return space.validate(arch)


def evaluate_subnet(
    loaded: LoadedSupernet,
    arch_choice: str,
    data: str | None = None,
    root: str | None = None,
    resolution: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Test top-1 of one subnet after BN recalibration, with its MACs and params."""
    space = loaded.net.search_space()
    arch = read_arch(arch_choice, space, resolution)
    source = supernet_data(loaded, data, root)
    evaluator, images = dataset_evaluator(loaded, source, "test", device)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"BN recalibration, then top-1 on {images} test images", total=None)
        batches = evaluator.eval_loader

        def counted(resolution: int) -> Iterator:
            loader = batches(resolution)
            bar.update(task, total=len(loader))
            for batch in loader:
                yield batch
                bar.advance(task)

        evaluator.eval_loader = counted
        top1, loss = evaluator(arch)
    return {
        "supernet": loaded.info.get("net_id") or loaded.info.get("source"),
        "dataset": source.info.name,
        "arch_name": arch_choice if arch_choice in ("max", "min") else Path(arch_choice).name,
        "arch": arch.to_dict(),
        "image_size": arch.image_size,
        "top1": top1,
        "loss": loss,
        "images": images,
        "macs": int(count_macs(space, arch).item()),
        "params": int(count_params(space, arch).item()),
    }
