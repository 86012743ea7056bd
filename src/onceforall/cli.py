"""The `ofa` command."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from onceforall import zoo
from onceforall.allocator import reuse_freed_memory
from onceforall.arch import SearchSpace
from onceforall.cost import LayerTable
from onceforall.errors import OFAError
from onceforall.specialize.commands import app as specialize_app
from onceforall.specialize.commands import parse_quantity
from onceforall.specialize.finetune import distilling_finetuner
from onceforall.specialize.latency import LatencyTable, build_latency_table, current_settings
from onceforall.specialize.pipeline import Specialized, check_budgets
from onceforall.specialize.pipeline import specialize as run_pipeline
from onceforall.specialize.predictor import AccuracyPredictor, collect_accuracy_dataset
from onceforall.train.evaluation_cli import (
    dataset_evaluator,
    evaluate_subnet,
    resolve_supernet,
    supernet_data,
    training_loader,
)

app = typer.Typer(
    help="Once-for-All: train one supernet, specialize it for every device.", no_args_is_help=True
)
console = Console()
DeviceOpt = Annotated[
    str | None,
    typer.Option(help="cpu or cuda for scoring and fine-tuning (latency is measured per --backend)"),
]
# The specialization commands (latency, predictor, search, pareto, export) live in their own module.
app.registered_groups.extend(specialize_app.registered_groups)
app.registered_commands.extend(specialize_app.registered_commands)


@app.command()
def demo(
    supernet: Annotated[str, typer.Option(help="zoo id or supernet file")] = "ofa_mbv3_fashion_mnist",
    predictor: Annotated[
        Path | None, typer.Option(help="accuracy predictor (default: the zoo id's shipped one)")
    ] = None,
    out: Annotated[Path, typer.Option(help="latency table, report, plot and exported subnets")] = Path(
        "runs/demo"
    ),
    budgets: Annotated[
        str, typer.Option(help="comma-separated latency budgets (default: three spread over the space)")
    ] = "",
    backend: Annotated[str, typer.Option(help="torch or onnxruntime")] = "torch",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the target")] = 1,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="fine-tuning epochs per subnet")] = 0,
    device: DeviceOpt = None,
) -> None:
    """`ofa specialize` with defaults: the shipped Fashion-MNIST supernet on this CPU, three budgets.

    Measures a latency table here (reused on later runs), searches with the shipped accuracy
    predictor, extracts each subnet, recalibrates BN, scores it on the test set (fine-tunes it first
    with --finetune-epochs), measures it and exports it to ONNX and torch.export.
    """
    with user_errors():
        limits = parse_budgets(budgets)
        table = out / f"latency_{backend}_{threads}t.jsonl"
        console.print(
            f"[bold]specializing {supernet}[/] for this CPU ({backend}, {threads} thread(s), batch 1)"
        )
        results = specialize_supernet(
            supernet, limits, predictor, table, backend, threads, out, finetune_epochs, device=device
        )
    print_specialized(results, out)


@app.callback()
def main() -> None:
    """Once-for-All command-line tool."""
    reuse_freed_memory()  # CPU training steps stop re-faulting their buffers (onceforall/allocator.py)


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="recipe YAML (see configs/)")],
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, log.jsonl, supernet.pt")] = Path(
        "runs/train"
    ),
    resume: Annotated[bool, typer.Option(help="continue the run in --out where it stopped")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available)")] = None,
) -> None:
    """Progressive shrinking: train a once-for-all supernet (run under torchrun for several ranks)."""
    from onceforall.train import Trainer, load_recipe

    with user_errors():
        trainer = Trainer(load_recipe(config), out, resume=resume, device=device)
        final = trainer.run()
    console.print(f"supernet written to {final}")


@app.command("eval")
def evaluate(
    supernet: Annotated[str, typer.Option(help="supernet file written by `ofa train`, or a zoo id")],
    arch: Annotated[str, typer.Option(help="max, min, or an arch JSON file")] = "max",
    data: Annotated[
        str, typer.Option(help="dataset name (fashion-mnist, cifar10, ...) or ImageFolder path")
    ] = "",
    root: Annotated[str | None, typer.Option(help="folder of the dataset's files")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="input size (default: the arch's, or the largest)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result as JSON on the last line")
    ] = False,
) -> None:
    """Test accuracy of one subnet after BN recalibration on training images."""
    with user_errors():
        result = evaluate_subnet(supernet, arch, data or None, root, resolution, device)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(
            f"{result['arch_name']} subnet at {result['image_size']} px: top-1 {result['top1']:.2f} % "
            f"(loss {result['loss']:.4f}) on {result['images']} {result['dataset']} test images; "
            f"{result['macs'] / 1e6:.1f}M MACs, {result['params'] / 1e6:.2f}M params"
        )


@app.command("acc-dataset")
def acc_dataset(
    supernet: Annotated[str, typer.Option(help="supernet file written by `ofa train`, or a zoo id")],
    out: Annotated[Path, typer.Option(help="JSON-lines file; an unfinished one is resumed")],
    n: Annotated[int, typer.Option(min=1, help="distinct random subnets in all (over all shards)")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the subnet list")] = 0,
    images: Annotated[
        int | None, typer.Option(min=1, help="score only the first N held-out images (default: all)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
) -> None:
    """Accuracy of random subnets on the held-out training images, for the accuracy predictor.

    Each result is appended (and fsynced) as it is made, so a killed run resumes; under torchrun each
    rank takes every WORLD_SIZE-th subnet of the same list (merge the files, or give each rank its own
    --out).
    """
    shard = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    with user_errors():
        net, saved = resolve_supernet(supernet)
        evaluator, info, scored = dataset_evaluator(net, saved, "holdout", None, None, device, images)
        summary = collect_accuracy_dataset(
            lambda arch: evaluator(arch)[0] / 100,
            net.search_space(),
            n,
            out,
            seed=seed,
            shard=shard,
            meta={"supernet": supernet, "dataset": info.name, "images": scored},
        )
    console.print(
        f"{summary.evaluated} subnets evaluated, {summary.skipped} already in {summary.path}, "
        f"{summary.seconds:.0f} s"
    )


@app.command()
def specialize(
    supernet: Annotated[str, typer.Option(help="supernet file written by `ofa train`, or a zoo id")],
    budgets: Annotated[
        str, typer.Option(help="comma-separated latency budgets, e.g. 2ms,4ms,8ms (default: three spread)")
    ] = "",
    predictor: Annotated[
        Path | None,
        typer.Option(help="accuracy predictor (`ofa predictor fit`; default: the zoo id's shipped one)"),
    ] = None,
    table: Annotated[
        Path, typer.Option(help="latency table; measured here first if the file is missing")
    ] = Path("runs/specialize/latency.jsonl"),
    backend: Annotated[str, typer.Option(help="torch or onnxruntime")] = "torch",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the target")] = 1,
    out: Annotated[Path, typer.Option(help="report.md, pareto.png, results.json, exported subnets")] = Path(
        "runs/specialize"
    ),
    finetune_epochs: Annotated[
        int, typer.Option(min=0, help="fine-tune each subnet this many epochs, distilling from the largest")
    ] = 0,
    finetune_lr: Annotated[float, typer.Option(min=0.0, help="fine-tuning learning rate (cosine)")] = 0.01,
    seed: Annotated[int, typer.Option(help="search seed")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Best subnet per latency budget: search, extract, recalibrate BN, score, fine-tune (optional),
    measure, export, report."""
    with user_errors():
        limits = parse_budgets(budgets)
        results = specialize_supernet(
            supernet,
            limits,
            predictor,
            table,
            backend,
            threads,
            out,
            finetune_epochs,
            finetune_lr,
            seed,
            device,
        )
    print_specialized(results, out)


def parse_budgets(text: str) -> list[float] | None:
    """'2ms,4ms' -> [2.0, 4.0]; empty -> None (three budgets spread over the space)."""
    return [parse_quantity(b, "time") for b in text.split(",") if b.strip()] or None


def specialize_supernet(
    supernet: str,
    budgets_ms: list[float] | None,
    predictor: Path | None,
    table: Path,
    backend: str,
    threads: int,
    out: Path,
    finetune_epochs: int = 0,
    finetune_lr: float = 0.01,
    seed: int = 0,
    device: str | None = None,
) -> list[Specialized]:
    """`ofa specialize` and `ofa demo`: budgets None picks three between the smallest and largest subnet.

    The cheap checks (predictor, table, budgets) come before the data is loaded.
    """
    net, saved = resolve_supernet(supernet)
    space = net.search_space()
    accuracy_model = AccuracyPredictor.load(predictor or zoo.pretrained_predictor_path(supernet), space)
    if table.is_file():
        latency = LatencyTable.load(table, expect=current_settings(backend, "cpu", threads, 1))
    else:
        latency = build_latency_table(space, table, backend=backend, threads=threads, progress=True)
    latency_model = latency.model(space)
    budgets_ms = budgets_ms or spread_budgets(latency_model, space)
    check_budgets(space, latency_model, budgets_ms)
    source = supernet_data(net, saved)
    evaluator, _, _ = dataset_evaluator(net, saved, "test", None, None, device, source=source)
    tune = None
    if finetune_epochs:
        loader = training_loader(source, device, seed)
        tune = distilling_finetuner(evaluator, loader, finetune_epochs, finetune_lr, seed)
    return run_pipeline(evaluator, accuracy_model, latency, budgets_ms, out, seed, finetune=tune)


def spread_budgets(
    latency: LayerTable, space: SearchSpace, fractions: tuple[float, ...] = (0.2, 0.45, 0.8)
) -> list[float]:
    """Distinct budgets (ms, 3 significant digits) at `fractions` of the way from the smallest subnet's
    latency to the largest's."""
    archs = [space.min_arch(min(space.resolutions)), space.max_arch(max(space.resolutions))]
    low, high = latency(space.encode(archs)).tolist()
    budgets = (max(low, float(f"{low + f * (high - low):.3g}")) for f in fractions)
    return sorted(set(budgets))


def print_specialized(results: list[Specialized], out: Path) -> None:
    """The per-budget table and where the report, plot and models are."""
    table = Table(title="specialized subnets (latency measured on this machine, top-1 on the test set)")
    for column in ("budget ms", "pred. ms", "meas. ms", "pred. top-1", "top-1 %", "MACs M"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in results:
        top1 = f"{r.top1:.2f}" + (f" -> {r.finetuned_top1:.2f}" if r.finetuned_top1 is not None else "")
        table.add_row(
            f"{r.budget_ms:g}",
            f"{r.predicted_ms:.2f}",
            f"{r.measured_ms:.2f}",
            f"{r.predicted_top1:.2f}",
            top1,
            f"{r.macs / 1e6:.1f}",
        )
    console.print(table)
    console.print(f"report: {out / 'report.md'}, plot: {out / 'pareto.png'}, models: {out}/budget_*/")


@contextmanager
def user_errors():
    """Print onceforall's own errors as one clear line and exit 2, instead of a traceback."""
    try:
        yield
    except OFAError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
