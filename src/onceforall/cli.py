"""The `ofa` command."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from onceforall.arch import Arch
from onceforall.errors import OFAError
from onceforall.io import save_atomic, write_json_atomic
from onceforall.spaces import OFAMobileNetV3
from onceforall.specialize import count_macs, count_params
from onceforall.specialize.commands import app as specialize_app
from onceforall.specialize.measure import time_forward

app = typer.Typer(
    help="Once-for-All: train one supernet, specialize it for every device.", no_args_is_help=True
)
console = Console()
# The specialization commands (latency, predictor, search, pareto, export) live in their own module.
app.registered_groups.extend(specialize_app.registered_groups)
app.registered_commands.extend(specialize_app.registered_commands)


def describe(arch: Arch) -> str:
    """A one-line summary: resolution, depths, mean kernel and expand ratio of the active blocks."""
    per_stage = len(arch.ks) // len(arch.d)
    active = [i for s, d in enumerate(arch.d) for i in range(s * per_stage, s * per_stage + d)]
    mean_k = sum(arch.ks[i] for i in active) / len(active)
    mean_e = sum(arch.e[i] for i in active) / len(active)
    return f"R{arch.image_size} D{''.join(map(str, arch.d))} K{mean_k:.1f} E{mean_e:.1f}"


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the extracted subnet is written")] = Path("runs/demo"),
    samples: Annotated[int, typer.Option(min=1, help="random subnets besides the largest and smallest")] = 5,
    seed: Annotated[int, typer.Option(help="seed of the subnet sampler")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for latency (0: torch's default)")] = 0,
) -> None:
    """Build OFA-MobileNetV3 w1.0, size its space, profile a few subnets, and extract one."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = OFAMobileNetV3(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], dropout_rate=0)
    net.eval()
    space = net.search_space()
    console.print(
        f"[bold]{space.name}[/]: {sum(p.numel() for p in net.parameters()):,} parameters (untrained)"
    )
    console.print(
        f"subnets: {space.count():.3e} architectures, {space.count(include_resolution=True):.3e} "
        f"with {len(space.resolutions)} resolutions ({space.resolutions[0]}-{space.resolutions[-1]} px)"
    )
    generator = torch.Generator().manual_seed(seed)
    archs = [("max", space.max_arch()), ("min", space.min_arch(space.resolutions[0]))]
    archs += [(f"random {i}", a) for i, a in enumerate(space.decode(space.sample(samples, generator)))]
    macs = count_macs(space, [a for _, a in archs]) / 1e6
    params = count_params(space, [a for _, a in archs]) / 1e6

    table = Table(
        title=f"subnets: MACs, parameters and CPU latency (batch 1, {torch.get_num_threads()} threads)"
    )
    for column in ("subnet", "architecture", "MACs (M)", "params (M)", "latency (ms)"):
        table.add_column(column, justify="left" if column in ("subnet", "architecture") else "right")
    for (name, arch), m, p in track(
        list(zip(archs, macs.tolist(), params.tolist())), description="measuring"
    ):
        net.set_arch(arch)
        subnet = net.get_active_subnet().to(memory_format=torch.channels_last)
        x = torch.randn(1, 3, arch.image_size, arch.image_size).contiguous(memory_format=torch.channels_last)
        timing = time_forward(subnet, x, warmup=3, repeats=10)
        table.add_row(name, describe(arch), f"{m:.1f}", f"{p:.2f}", f"{timing.median_ms:.2f}")
    console.print(table)

    name, arch = archs[2] if len(archs) > 2 else archs[0]
    net.set_arch(arch)
    subnet = net.get_active_subnet()
    save_atomic({"state_dict": subnet.state_dict()}, out / "model.pt")
    write_json_atomic(net.get_active_net_config(), out / "net.config")
    arch.to_json(out / "arch.json")
    console.print(
        f"extracted '{name}' ({describe(arch)}) to {out}/: model.pt, net.config (official JSON), arch.json"
    )


@app.callback()
def main() -> None:
    """Once-for-All command-line tool."""


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
    import json

    from onceforall.train.evaluation_cli import evaluate_subnet

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
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
) -> None:
    """Accuracy of random subnets on the held-out training images, for the accuracy predictor.

    Each result is appended (and fsynced) as it is made, so a killed run resumes; under torchrun each
    rank takes every WORLD_SIZE-th subnet of the same list (merge the files, or give each rank its own
    --out).
    """
    import os

    from onceforall.specialize.predictor import collect_accuracy_dataset
    from onceforall.train.evaluation_cli import dataset_evaluator, resolve_supernet

    shard = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    with user_errors():
        net, saved = resolve_supernet(supernet)
        evaluator, info, images = dataset_evaluator(net, saved, "holdout", None, None, device)
        summary = collect_accuracy_dataset(
            lambda arch: evaluator(arch)[0] / 100,
            net.search_space(),
            n,
            out,
            seed=seed,
            shard=shard,
            meta={"supernet": supernet, "dataset": info.name, "images": images},
        )
    console.print(
        f"{summary.evaluated} subnets evaluated, {summary.skipped} already in {summary.path}, "
        f"{summary.seconds:.0f} s"
    )


@app.command()
def specialize(
    supernet: Annotated[str, typer.Option(help="supernet file written by `ofa train`, or a zoo id")],
    predictor: Annotated[Path, typer.Option(help="accuracy predictor (`ofa predictor fit`)")],
    budgets: Annotated[str, typer.Option(help="comma-separated latency budgets, e.g. 2ms,4ms,8ms")],
    table: Annotated[
        Path, typer.Option(help="latency table; measured here first if the file is missing")
    ] = Path("runs/specialize/latency.jsonl"),
    backend: Annotated[str, typer.Option(help="torch or onnxruntime")] = "torch",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the target")] = 1,
    out: Annotated[Path, typer.Option(help="report.md, pareto.png, results.json, exported subnets")] = Path(
        "runs/specialize"
    ),
    seed: Annotated[int, typer.Option(help="search seed")] = 0,
) -> None:
    """Best subnet per latency budget: search, extract, recalibrate BN, score, measure, export, report."""
    from onceforall.specialize.commands import parse_quantity
    from onceforall.specialize.latency import LatencyTable, build_latency_table, current_settings
    from onceforall.specialize.pipeline import specialize as run
    from onceforall.specialize.predictor import AccuracyPredictor
    from onceforall.train.evaluation_cli import dataset_evaluator, resolve_supernet

    with user_errors():
        limits = [parse_quantity(b, "time") for b in budgets.split(",") if b.strip()]
        net, saved = resolve_supernet(supernet)
        evaluator, _, _ = dataset_evaluator(net, saved, "test", None, None, "cpu")
        space = net.search_space()
        if table.is_file():
            latency = LatencyTable.load(table, expect=current_settings(backend, "cpu", threads, 1))
        else:
            latency = build_latency_table(space, table, backend=backend, threads=threads, progress=True)
        results = run(evaluator, AccuracyPredictor.load(predictor, space), latency, limits, out, seed)
    for r in results:
        console.print(
            f"{r.budget_ms:g} ms: predicted {r.predicted_ms:.2f} ms / measured {r.measured_ms:.2f} ms, "
            f"top-1 {r.top1:.2f} % (predicted {r.predicted_top1:.2f} %), {r.macs / 1e6:.1f}M MACs"
        )
    console.print(f"report: {out / 'report.md'}, plot: {out / 'pareto.png'}, models: {out}/budget_*/")


@contextmanager
def user_errors():
    """Print onceforall's own errors as one clear line and exit 2, instead of a traceback."""
    try:
        yield
    except OFAError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
