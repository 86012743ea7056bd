"""`ofa train`, `ofa eval`, `ofa acc-dataset`: training a supernet and scoring its subnets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from onceforall.cli.common import (
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    NetIdOpt,
    ResolutionsOpt,
    RootOpt,
    SupernetOpt,
    app,
    emit,
    open_supernet,
    say,
    user_errors,
)
from onceforall.specialize.accuracy_dataset import collect_accuracy_dataset
from onceforall.workflow.data import dataset_evaluator, supernet_data
from onceforall.workflow.evaluate import evaluate_subnet


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="recipe YAML (see configs/)")],
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, log.jsonl, supernet.pt")] = Path(
        "runs/train"
    ),
    resume: Annotated[bool, typer.Option(help="continue the run in --out where it stopped")] = False,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Progressive shrinking: train a once-for-all supernet of any family (run under torchrun for several ranks)."""
    from onceforall.train import Trainer, load_recipe
    from onceforall.workflow.data import pick_device

    with user_errors():
        trainer = Trainer(load_recipe(config), out, resume=resume, device=pick_device(device))
        final = trainer.run()
    say(f"supernet written to {final}", as_json)
    if as_json:
        emit({"supernet": str(final)})


@app.command("eval")
def evaluate(
    supernet: SupernetOpt,
    arch: Annotated[
        str,
        typer.Option(
            help="max, min, or an arch file any command writes (arch.json, search result, export folder)"
        ),
    ] = "max",
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    data: DataOpt = None,
    root: RootOpt = None,
    resolution: Annotated[
        int | None, typer.Option(min=1, max=4096, help="input size (default: the arch's, or the largest)")
    ] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Test accuracy of one subnet after BN recalibration."""
    with user_errors():
        loaded = open_supernet(supernet, checkpoint, net_id)
        result = evaluate_subnet(loaded, arch, data, root, resolution, device)
    say(
        f"{result['arch_name']} subnet at {result['image_size']} px: top-1 {result['top1']:.2f} % "
        f"(loss {result['loss']:.4f}) on {result['images']} {result['dataset']} test images; "
        f"{result['macs'] / 1e6:.1f}M MACs, {result['params'] / 1e6:.2f}M params",
        as_json,
    )
    if as_json:
        emit(result)


@app.command("acc-dataset")
def acc_dataset(
    supernet: SupernetOpt,
    out: Annotated[Path, typer.Option(help="JSON-lines file; an unfinished one is resumed")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    data: DataOpt = None,
    root: RootOpt = None,
    n: Annotated[
        int, typer.Option(min=1, max=10_000_000, help="distinct random subnets in all (over all shards)")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the subnet list")] = 0,
    images: Annotated[
        int | None,
        typer.Option(min=1, max=10**9, help="score only the first N held-out images (default: all)"),
    ] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of random subnets on the held-out training images, for the accuracy predictor.

    Each result is appended (and fsynced) as it is made, so a killed run resumes; under torchrun each
    rank takes every WORLD_SIZE-th subnet of the same list (merge the files, or give each rank its own
    --out).
    """
    shard = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    with user_errors():
        loaded = open_supernet(supernet, checkpoint, net_id, resolutions)
        source = supernet_data(loaded, data, root)
        evaluator, scored = dataset_evaluator(loaded, source, "holdout", device, images)
        summary = collect_accuracy_dataset(
            lambda arch: _fraction(*evaluator(arch)),
            loaded.net.search_space(),
            n,
            out,
            seed=seed,
            shard=shard,
            # The supernet by content, not by path: retrained weights at the same path do not mix in.
            meta={
                "supernet": loaded.info.get("file_sha256") or supernet,
                "dataset": source.info.name,
                "images": scored,
            },
        )
    say(
        f"{summary.evaluated} subnets evaluated, {summary.skipped} already in {summary.path}, "
        f"{summary.seconds:.0f} s",
        as_json,
    )
    if as_json:
        emit({"path": str(summary.path), "evaluated": summary.evaluated, "skipped": summary.skipped})


def _fraction(top1: float, loss: float) -> tuple[float, float]:
    """(top-1 as a fraction, mean loss): what a row of the accuracy dataset holds."""
    return top1 / 100, loss
