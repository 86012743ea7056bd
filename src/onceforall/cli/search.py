"""`ofa predictor fit`, `ofa search`, `ofa pareto`, `ofa export`: from measurements to one exported subnet."""

from __future__ import annotations

import json
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
    predictor_app,
    say,
    user_errors,
)
from onceforall.errors import OFAError
from onceforall.io import is_png, is_result_json, refuse_foreign_file, write_json_atomic
from onceforall.specialize.accuracy_dataset import AccuracyDataset
from onceforall.specialize.predictor import AccuracyPredictor, fit_predictor
from onceforall.workflow import search as jobs
from onceforall.workflow.data import supernet_data
from onceforall.workflow.evaluate import read_arch
from onceforall.workflow.export import export_arch
from onceforall.workflow.specialize import parse_formats

LABELS = ("accuracy", "loss-calibrated")
PredictorFileOpt = Annotated[Path, typer.Option(help="accuracy predictor file (ours or official)")]
BackendOpt = Annotated[str | None, typer.Option(help="refuse a latency table not measured with this backend")]
ThreadsOpt = Annotated[int | None, typer.Option(help="refuse a latency table measured with other threads")]
BatchOpt = Annotated[int | None, typer.Option(help="refuse a latency table measured at another batch size")]


@predictor_app.command("fit")
def predictor_fit(
    supernet: SupernetOpt,
    dataset: Annotated[Path, typer.Option(help="accuracy dataset (JSON lines of `ofa acc-dataset`)")],
    out: Annotated[Path, typer.Option(help="where the predictor is saved")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    holdout: Annotated[float, typer.Option(min=0.0, max=0.9, help="fraction of subnets held out")] = 0.2,
    epochs: Annotated[int, typer.Option(min=1, max=100_000)] = 200,
    lr: Annotated[float, typer.Option(min=0.0, max=10.0)] = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, max=65_536)] = 256,
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1, max=256)] = 1,
    label: Annotated[
        str,
        typer.Option(
            help="accuracy (fit to the measured top-1) or loss-calibrated (to the top-1 predicted from "
            "each subnet's held-out loss: less label noise; needs rows with a loss)"
        ),
    ] = "accuracy",
    as_json: JsonOpt = False,
) -> None:
    """Train the accuracy predictor; report RMSE, MAE, Kendall tau and Spearman on held-out subnets."""
    with user_errors():
        space = open_supernet(supernet, checkpoint, net_id, resolutions).net.search_space()
        if label not in LABELS:
            raise OFAError(f"--label {label!r} is not known; choose one of {', '.join(LABELS)}")
        rows = AccuracyDataset(dataset)
        population, accuracy = rows.population(space)
        loss = rows.losses() if label == "loss-calibrated" else None
        predictor, metrics = fit_predictor(
            space,
            population,
            accuracy,
            holdout,
            epochs,
            lr,
            batch_size,
            seed=seed,
            threads=threads,
            loss=loss,
        )
        predictor.save(out, metrics.to_dict())
    say(
        f"predictor {out}: {metrics.n_train} train / {metrics.n_test} held-out subnets; RMSE "
        f"{100 * metrics.rmse:.3f} pts, MAE {100 * metrics.mae:.3f} pts, Kendall tau {metrics.kendall_tau:.3f}, "
        f"Spearman {metrics.spearman:.3f}"
        + (
            ""
            if metrics.measured is None
            else f" (against the loss-calibrated labels; against the measured top-1: RMSE "
            f"{100 * metrics.measured['rmse']:.3f} pts, Kendall tau {metrics.measured['kendall_tau']:.3f})"
        ),
        as_json,
    )
    if as_json:
        emit({"path": str(out), **metrics.to_dict()})


@app.command("search")
def search(
    supernet: SupernetOpt,
    predictor: PredictorFileOpt,
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    table: Annotated[Path | None, typer.Option(help="latency table (for --max-latency)")] = None,
    max_latency: Annotated[str | None, typer.Option(help="e.g. 4ms")] = None,
    max_macs: Annotated[str | None, typer.Option(help="e.g. 300M")] = None,
    max_params: Annotated[str | None, typer.Option(help="e.g. 5M")] = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    method: Annotated[str, typer.Option(help="evolution or random")] = "evolution",
    generations: Annotated[int, typer.Option(min=1, max=1_000_000)] = 500,
    population: Annotated[int, typer.Option(min=2, max=1_000_000)] = 100,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="write the result (best archs) as JSON")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the subnet with the best predicted accuracy within the budget(s)."""
    with user_errors():
        space = open_supernet(supernet, checkpoint, net_id, resolutions).net.search_space()
        accuracy = AccuracyPredictor.load(predictor, space)
        expect = {"backend": backend, "threads": threads, "batch_size": batch_size}
        names, models, budgets = jobs.constraints(space, table, expect, max_latency, max_macs, max_params)
        if out is not None:  # before the search: a refused --out costs nothing
            refuse_foreign_file(out, "search result (JSON)", is_result_json)
        result = jobs.search(space, accuracy, names, models, budgets, method, population, generations, seed)
        payload = {**result.to_dict(), "constraints": names}
        if out is not None:
            write_json_atomic(payload, out)
    best = payload["best"]
    efficiency = best["efficiency"] if isinstance(best["efficiency"], list) else [best["efficiency"]]
    say(
        f"best predicted accuracy {100 * best['accuracy']:.2f} % with {dict(zip(names, efficiency))} "
        f"in {result.seconds:.2f} s: {json.dumps(best['arch'])}",
        as_json,
    )
    if as_json:
        emit(payload)


@app.command("pareto")
def pareto(
    supernet: SupernetOpt,
    predictor: PredictorFileOpt,
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    table: Annotated[Path | None, typer.Option(help="latency table (objective latency_ms)")] = None,
    objectives: Annotated[str, typer.Option(help="comma-separated: latency, macs, params")] = "latency",
    backend: BackendOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    generations: Annotated[int, typer.Option(min=1, max=1_000_000)] = 100,
    population: Annotated[int, typer.Option(min=2, max=1_000_000)] = 100,
    seed: int = 0,
    plot: Annotated[Path | None, typer.Option(help="PNG of the front")] = None,
    out: Annotated[Path | None, typer.Option(help="write the front as JSON")] = None,
    as_json: JsonOpt = False,
) -> None:
    """NSGA-II Pareto front of predicted accuracy against latency (and/or MACs, params), with hypervolume."""
    from onceforall.specialize.plots import plot_front

    with user_errors():
        loaded = open_supernet(supernet, checkpoint, net_id, resolutions)
        space = loaded.net.search_space()
        accuracy = AccuracyPredictor.load(predictor, space)
        expect = {"backend": backend, "threads": threads, "batch_size": batch_size}
        models = jobs.objective_models(space, objectives, table, expect)
        if out is not None:
            refuse_foreign_file(out, "Pareto result (JSON)", is_result_json)
        if plot is not None:
            refuse_foreign_file(plot, "PNG image", is_png)
        result = jobs.pareto(space, accuracy, models, population, generations, seed)
        payload = result.to_dict()
        if out is not None:
            write_json_atomic(payload, out)
        if plot is not None:
            plot_front(result, plot, title=f"{loaded.info.get('net_id') or space.name}: NSGA-II front")
    say(
        f"{len(result.accuracy)} non-dominated subnets; hypervolume {result.hypervolume:.4g} "
        f"(reference point {result.ref_point}) in {result.seconds:.1f} s",
        as_json,
    )
    if as_json:
        emit(payload)


@app.command("export")
def export(
    supernet: SupernetOpt,
    arch: Annotated[
        str, typer.Option(help="an arch file any command writes (arch.json, search result), max or min")
    ],
    out: Annotated[Path, typer.Option(help="output folder: model.onnx, model.pt2, arch.json, deploy.json")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    data: DataOpt = None,
    root: RootOpt = None,
    formats: Annotated[str, typer.Option(help="comma-separated: onnx, pt2")] = "onnx,pt2",
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 1,
    atol: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1e-4,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Extract a subnet (BN recalibrated on the supernet's training data), export it to ONNX and
    torch.export, each checked against PyTorch, with deploy.json (input size, resize, mean/std)."""
    with user_errors():
        loaded = open_supernet(supernet, checkpoint, net_id, resolutions)
        chosen = read_arch(arch, loaded.net.search_space())
        has_data = data is not None or (loaded.info.get("recipe") or {}).get("data")
        source = supernet_data(loaded, data, root) if has_data else None
        deploy = export_arch(loaded, chosen, out, source, parse_formats(formats), batch_size, atol, device)
    for r in deploy["exports"]:
        say(f"{r['format']}: {r['path']} (max abs diff vs PyTorch {r['max_abs_diff']:.2e})", as_json)
    if deploy["bn_calibration"] is None:
        say("BN statistics: the supernet's (no data to recalibrate on; pass --data)", as_json)
    if as_json:
        emit(deploy)
