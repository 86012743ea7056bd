"""`ofa list`, `ofa specialize` and `ofa demo`: the registry, and a supernet specialized for latency budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    console,
    emit,
    err_console,
    open_supernet,
    registry_rows,
    say,
    user_errors,
)
from onceforall.specialize.pipeline import Specialized
from onceforall.workflow.specialize import parse_budgets, parse_formats, specialize_supernet

BackendOpt = Annotated[str, typer.Option(help="torch or onnxruntime")]
ThreadsOpt = Annotated[int, typer.Option(min=1, max=256, help="CPU threads of the target")]
FormatsOpt = Annotated[str, typer.Option(help="comma-separated export formats: onnx, pt2")]
PredictorOpt = Annotated[
    Path | None,
    typer.Option(
        help="accuracy predictor (`ofa predictor fit`, or an official file; default: the id's shipped one)"
    ),
]


@app.command("list")
def list_supernets(as_json: JsonOpt = False) -> None:
    """The registered supernet ids: family, elastic dimensions, shipped weights and predictor."""
    rows = registry_rows()
    if as_json:
        emit(rows)
        return
    table = Table(title="registered supernets (every family trains, evaluates, times, searches and exports)")
    for column in ("id", "family", "elastic", "weights", "predictor"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["id"], r["family"], r["elastic"], r["weights"], r["predictor"])
    console.print(table)


@app.command()
def demo(
    supernet: SupernetOpt = "ofa_mbv3_fashion_mnist",
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    predictor: PredictorOpt = None,
    out: Annotated[Path, typer.Option(help="latency table, report, plot and exported subnets")] = Path(
        "runs/demo"
    ),
    budgets: Annotated[
        str, typer.Option(help="comma-separated latency budgets (default: three spread over the space)")
    ] = "",
    backend: BackendOpt = "torch",
    threads: ThreadsOpt = 1,
    finetune_epochs: Annotated[int, typer.Option(min=0, max=1000, help="fine-tuning epochs per subnet")] = 0,
    data: DataOpt = None,
    root: RootOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """`ofa specialize` with defaults: the shipped Fashion-MNIST supernet on this CPU, three budgets.

    Measures a latency table here (reused on later runs), searches with the shipped accuracy
    predictor, extracts each subnet, recalibrates BN, scores it on the test set (fine-tunes it first
    with --finetune-epochs), measures it and exports it to ONNX and torch.export.
    """
    with user_errors():
        limits = parse_budgets(budgets)
        loaded = open_supernet(supernet, checkpoint, net_id)
        table = out / f"latency_{backend}_{threads}t.jsonl"
        say(f"specializing {supernet} for this CPU ({backend}, {threads} thread(s), batch 1)", as_json)
        results = specialize_supernet(
            loaded,
            limits,
            predictor,
            table,
            backend,
            threads,
            out,
            finetune_epochs,
            device=device,
            data=data,
            root=root,
        )
    print_specialized(results, out, as_json)


@app.command()
def specialize(
    supernet: SupernetOpt,
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    budgets: Annotated[
        str, typer.Option(help="comma-separated latency budgets, e.g. 2ms,4ms,8ms (default: three spread)")
    ] = "",
    predictor: PredictorOpt = None,
    table: Annotated[
        Path, typer.Option(help="latency table; measured here first if the file is missing")
    ] = Path("runs/specialize/latency.jsonl"),
    backend: BackendOpt = "torch",
    threads: ThreadsOpt = 1,
    out: Annotated[Path, typer.Option(help="report.md, pareto.png, results.json, exported subnets")] = Path(
        "runs/specialize"
    ),
    data: DataOpt = None,
    root: RootOpt = None,
    finetune_epochs: Annotated[
        int,
        typer.Option(
            min=0, max=1000, help="fine-tune each subnet this many epochs, distilling from the largest"
        ),
    ] = 0,
    finetune_lr: Annotated[
        float, typer.Option(min=0.0, max=10.0, help="fine-tuning learning rate (cosine)")
    ] = 0.01,
    seed: Annotated[int, typer.Option(help="search seed")] = 0,
    formats: FormatsOpt = "onnx,pt2",
    max_searches: Annotated[
        int,
        typer.Option(min=1, max=10, help="searches per budget while all its subnets so far measure over it"),
    ] = 3,
    generations: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="evolution generations per search")
    ] = 500,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Best subnet per latency budget: search, extract, recalibrate BN, score, fine-tune (optional),
    measure, export, report."""
    with user_errors():
        limits = parse_budgets(budgets)
        loaded = open_supernet(supernet, checkpoint, net_id, resolutions)
        results = specialize_supernet(
            loaded,
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
            data,
            root,
            parse_formats(formats),
            max_searches,
            generations,
        )
    print_specialized(results, out, as_json)


def print_specialized(results: list[Specialized], out: Path, as_json: bool = False) -> None:
    """The per-budget table and where the report, plot and models are."""
    from dataclasses import asdict

    table = Table(title="specialized subnets (latency measured on this machine, top-1 on the test set)")
    for column in ("budget ms", "pred. ms", "meas. ms", "within", "pred. top-1", "top-1 %", "MACs M"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in results:
        top1 = f"{r.top1:.2f}" + (f" -> {r.finetuned_top1:.2f}" if r.finetuned_top1 is not None else "")
        table.add_row(
            f"{r.budget_ms:g}",
            f"{r.predicted_ms:.2f}",
            f"{r.measured_ms:.2f}",
            "yes" if r.within_budget else f"no (+{r.measured_ms - r.budget_ms:.2f})",
            f"{r.predicted_top1:.2f}",
            top1,
            f"{r.macs / 1e6:.1f}",
        )
    (err_console if as_json else console).print(table)
    say(f"report: {out / 'report.md'}, plot: {out / 'pareto.png'}, models: {out}/budget_*/", as_json)
    if as_json:
        emit([asdict(r) for r in results])
