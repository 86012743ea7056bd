"""`ofa` sub-commands to specialize a supernet for a device: latency tables, predictor, search, export.

Thin argument parsing over the library (`latency`, `predictor`, `search`, `export`); every input
and output is an explicit file. With `--json` the last stdout line is the result as JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from onceforall.arch import Arch, SearchSpace
from onceforall.cost import LayerTable
from onceforall.errors import OFAError
from onceforall.spaces.mobilenet_v3 import IMAGENET_RESOLUTIONS, SMALL_INPUT_STRIDES, OFAMobileNetV3
from onceforall.specialize.latency import (
    LatencyTable,
    build_latency_table,
    current_settings,
    merge_latency_tables,
    validate_latency_table,
)

app = typer.Typer(help="Specialize a supernet for a device.", no_args_is_help=True)
latency_app = typer.Typer(help="Latency lookup tables measured on this machine.", no_args_is_help=True)
predictor_app = typer.Typer(help="The accuracy predictor.", no_args_is_help=True)
app.add_typer(latency_app, name="latency")
app.add_typer(predictor_app, name="predictor")
console = Console(stderr=True)

LISTS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], dropout_rate=0)
SPACES = {
    "mbv3_w1.0": lambda res: OFAMobileNetV3(width_mult=1.0, resolutions=res or IMAGENET_RESOLUTIONS, **LISTS),
    "mbv3_w1.2": lambda res: OFAMobileNetV3(width_mult=1.2, resolutions=res or IMAGENET_RESOLUTIONS, **LISTS),
    "mbv3_small": lambda res: OFAMobileNetV3(
        n_classes=10,
        width_mult=0.5,
        in_channels=1,
        first_stride=1,
        stage_strides=SMALL_INPUT_STRIDES,
        resolutions=res or (24, 28),
        **LISTS,
    ),
}

SpaceOpt = Annotated[
    str,
    typer.Option(
        "--space", help=f"supernet: one of {', '.join(SPACES)}, a shipped zoo id or a supernet file"
    ),
]
ResOpt = Annotated[str, typer.Option(help="comma-separated input resolutions (default: the space's)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON on the last stdout line")]


# --------------------------------------------------------------------------- parsing helpers
def make_supernet(name: str, resolutions: str = "", checkpoint: Path | None = None) -> OFAMobileNetV3:
    """A supernet by factory name and resolutions, or a trained one by file or zoo id (its own space).

    Weights come from `checkpoint` if given.
    """
    from onceforall import zoo
    from onceforall.train.evaluation_cli import resolve_supernet

    res = tuple(int(r) for r in resolutions.split(",") if r.strip()) if resolutions else None
    if name in SPACES:
        net = SPACES[name](res)
    elif name in zoo.PRETRAINED or Path(name).is_file():
        if res is not None:
            raise OFAError(f"--resolutions cannot change the space of the trained supernet {name}")
        net = resolve_supernet(name)[0]
    else:
        raise OFAError(
            f"unknown space {name!r}; choose one of {sorted(SPACES)}, a zoo id with shipped weights "
            f"({', '.join(sorted(zoo.PRETRAINED))}) or a supernet file written by `ofa train`"
        )
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return net.eval()


_SCALES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIMES = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}


def parse_quantity(text: str, kind: str = "count") -> float:
    """'300M' -> 3e8, '1.2G' -> 1.2e9 (kind "count"); '4ms' -> 4.0, '4000us' -> 4.0 (kind "time", in ms)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*", text)
    units = _TIMES if kind == "time" else _SCALES
    unit = match.group(2).lower() if match else None
    if match is None or unit not in units:
        example = "4ms, 2.5ms, 800us or 0.004s" if kind == "time" else "300M, 1.2G, 5e8 or 600k"
        raise OFAError(
            f"cannot read {text!r} as a {'latency' if kind == 'time' else 'count'}; write e.g. {example}"
        )
    return float(match.group(1)) * units[unit]


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, default=str))


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/] {err}")
    raise typer.Exit(2) from None


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None:
        raise OFAError(f"--shard takes RANK/WORLD, e.g. 0/4; got {text!r}")
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------- latency
@latency_app.command("build")
def latency_build(
    out: Annotated[Path, typer.Option(help="the table file (JSON lines); an unfinished one is resumed")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    backend: Annotated[str, typer.Option(help="torch or onnxruntime")] = "torch",
    device: Annotated[str, typer.Option(help="cpu or cuda (torch backend)")] = "cpu",
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads")] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="untimed runs per round")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="timed runs per round")] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds per layer")] = 5,
    statistic: Annotated[str, typer.Option(help="p10 (fastest round's 10th percentile) or median")] = "p10",
    shard: Annotated[str, typer.Option(help="RANK/WORLD: measure this share of the layers")] = "0/1",
    calibration_subnets: Annotated[int, typer.Option(min=1)] = 10,
    seed: int = 0,
    json_out: JsonOpt = False,
) -> None:
    """Measure every distinct layer of the space on this machine (resumable; shardable)."""
    try:
        rank, world = _shard(shard)
        path = out if world == 1 else out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}")
        space_ = make_supernet(space, resolutions).search_space()
        table = build_latency_table(
            space_,
            path,
            backend=backend,
            device=device,
            threads=threads,
            batch_size=batch_size,
            warmup=warmup,
            repeats=repeats,
            rounds=rounds,
            statistic=statistic,
            shard=(rank, world),
            calibration_subnets=calibration_subnets,
            seed=seed,
            progress=True,
        )
    except OFAError as err:
        _fail(err)
    summary = {"path": str(path), "layers": len(table.layers), "meta": table.meta}
    if table.calibration is not None:
        c = table.calibration
        summary["calibration"] = {
            "call_overhead_ms": c.call_overhead_ms,
            "scale": c.scale,
            "overhead_ms": c.overhead_ms,
        }
    console.print(f"latency table {path}: {len(table.layers)} layers measured")
    if json_out:
        _print_json(summary)


@latency_app.command("merge")
def latency_merge(
    shards: Annotated[list[Path], typer.Argument(help="the shard files")],
    out: Annotated[Path, typer.Option(help="the merged table")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    calibration_subnets: int = 10,
    seed: int = 0,
) -> None:
    """Combine shard files and calibrate the merged table here (same settings as the shards)."""
    try:
        space_ = make_supernet(space, resolutions).search_space()
        table = merge_latency_tables(shards, out, space_, calibration_subnets, seed, progress=True)
    except OFAError as err:
        _fail(err)
    console.print(f"merged {len(shards)} shards into {out}: {len(table.layers)} layers")


@latency_app.command("validate")
def latency_validate(
    table: Annotated[Path, typer.Option(help="the latency table")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    n: Annotated[int, typer.Option(min=1, help="random subnets to measure end to end")] = 100,
    seed: int = 1,
    plot: Annotated[Path | None, typer.Option(help="measured-vs-predicted PNG")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="supernet weights (timing does not need them)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure N random extracted subnets here and compare with the table's prediction."""
    try:
        net = make_supernet(space, resolutions, checkpoint)
        space_ = net.search_space()
        loaded = LatencyTable.load(table)
        m = loaded.meta
        loaded.check(current_settings(m["backend"], m["device"], m["threads"], m["batch_size"]))

        def extract(arch: Arch) -> torch.nn.Module:
            net.set_arch(arch)
            return net.get_active_subnet().eval()

        report = validate_latency_table(loaded, space_, n, seed, extract, plot=plot, progress=True)
    except OFAError as err:
        _fail(err)
    console.print(
        f"{report.n} subnets: {100 * report.within_10:.1f} % within ±10 %, MAPE {report.mape:.2f} %, "
        f"Spearman {report.spearman:.3f}, max error {report.max_error:.1f} %"
        + (f"; plot {report.plot}" if report.plot else "")
    )
    if json_out:
        _print_json(report.to_dict())


# --------------------------------------------------------------------------- predictor
@predictor_app.command("fit")
def predictor_fit(
    dataset: Annotated[Path, typer.Option(help="accuracy dataset (JSON lines)")],
    out: Annotated[Path, typer.Option(help="where the predictor is saved")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    holdout: float = 0.2,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    threads: int = 1,
    json_out: JsonOpt = False,
) -> None:
    """Train the accuracy predictor; report RMSE, MAE, Kendall tau and Spearman on held-out subnets."""
    from onceforall.specialize.predictor import AccuracyDataset, fit_predictor

    try:
        space_ = make_supernet(space, resolutions).search_space()
        population, accuracy = AccuracyDataset(dataset).population(space_)
        predictor, metrics = fit_predictor(
            space_, population, accuracy, holdout, epochs, lr, batch_size, seed=seed, threads=threads
        )
        predictor.save(out, metrics.to_dict())
    except OFAError as err:
        _fail(err)
    console.print(
        f"predictor {out}: {metrics.n_train} train / {metrics.n_test} held-out subnets; RMSE "
        f"{100 * metrics.rmse:.3f} pts, MAE {100 * metrics.mae:.3f} pts, Kendall tau {metrics.kendall_tau:.3f}, "
        f"Spearman {metrics.spearman:.3f}"
    )
    if json_out:
        _print_json({"path": str(out), **metrics.to_dict()})


# --------------------------------------------------------------------------- search
def _models(
    space: SearchSpace,
    table: Path | None,
    expect: dict,
    max_latency: str | None,
    max_macs: str | None,
    max_params: str | None,
) -> tuple[list[str], list, list[float]]:
    """Names, efficiency models and budgets of the given constraints."""
    names, models, budgets = [], [], []
    if max_latency is not None:
        if table is None:
            raise OFAError("--max-latency needs --table (a latency table built on the target)")
        names.append("latency_ms")
        models.append(_latency_model(space, table, expect))
        budgets.append(parse_quantity(max_latency, "time"))
    if max_macs is not None:
        names.append("macs")
        models.append(LayerTable(space, lambda spec: spec.macs))
        budgets.append(parse_quantity(max_macs))
    if max_params is not None:
        names.append("params")
        models.append(LayerTable(space, lambda spec: spec.params))
        budgets.append(parse_quantity(max_params))
    if not models:
        raise OFAError("give a budget: --max-latency (with --table), --max-macs or --max-params")
    return names, models, budgets


def _latency_model(space: SearchSpace, table: Path, expect: dict) -> LayerTable:
    """The table's model; refuses a table whose settings differ from the stated target settings."""
    loaded = LatencyTable.load(table, expect={k: v for k, v in expect.items() if v is not None})
    m = loaded.meta
    console.print(
        f"latency table {table}: {m['backend']} on {m['device_name']} ({m['device']}), {m['threads']} thread(s), "
        f"batch {m['batch_size']}"
    )
    return loaded.model(space)


BackendOpt = Annotated[str | None, typer.Option(help="refuse a latency table not measured with this backend")]
ThreadsOpt = Annotated[int | None, typer.Option(help="refuse a latency table measured with other threads")]
BatchOpt = Annotated[int | None, typer.Option(help="refuse a latency table measured at another batch size")]


@app.command("search")
def search(
    predictor: Annotated[Path, typer.Option(help="accuracy predictor file")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    table: Annotated[Path | None, typer.Option(help="latency table (for --max-latency)")] = None,
    max_latency: Annotated[str | None, typer.Option(help="e.g. 4ms")] = None,
    max_macs: Annotated[str | None, typer.Option(help="e.g. 300M")] = None,
    max_params: Annotated[str | None, typer.Option(help="e.g. 5M")] = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    method: Annotated[str, typer.Option(help="evolution or random")] = "evolution",
    generations: int = 500,
    population: int = 100,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="write the result (best archs) as JSON")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the subnet with the best predicted accuracy within the budget(s)."""
    from onceforall.io import write_json_atomic
    from onceforall.specialize.predictor import AccuracyPredictor
    from onceforall.specialize.search import evolution_search, random_search

    try:
        space_ = make_supernet(space, resolutions).search_space()
        accuracy = AccuracyPredictor.load(predictor, space_).bind(space_)
        expect = {"backend": backend, "threads": threads, "batch_size": batch_size}
        names, models, budgets = _models(space_, table, expect, max_latency, max_macs, max_params)
        efficiency = models[0] if len(models) == 1 else _stack(models)
        budget = budgets[0] if len(budgets) == 1 else budgets
        if method == "evolution":
            result = evolution_search(
                space_, accuracy, efficiency, budget, population, generations, seed=seed
            )
        elif method == "random":
            result = random_search(
                space_, accuracy, efficiency, budget, n=population * (generations + 1), seed=seed
            )
        else:
            raise OFAError(f"unknown method {method!r}; choose evolution or random")
    except OFAError as err:
        _fail(err)
    payload = {**result.to_dict(), "constraints": names}
    if out is not None:
        write_json_atomic(payload, out)
    best = payload["best"]
    console.print(
        f"best predicted accuracy {100 * best['accuracy']:.2f} % with {dict(zip(names, _as_list(best['efficiency'])))} "
        f"in {result.seconds:.2f} s: {json.dumps(best['arch'])}"
    )
    if json_out:
        _print_json(payload)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _stack(models: list):
    from onceforall.specialize.search import fast

    models = [fast(m) for m in models]
    return lambda population: torch.stack([m(population) for m in models], -1)


@app.command("pareto")
def pareto(
    predictor: Annotated[Path, typer.Option(help="accuracy predictor file")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    table: Annotated[Path | None, typer.Option(help="latency table (objective latency_ms)")] = None,
    objectives: Annotated[str, typer.Option(help="comma-separated: latency, macs, params")] = "latency",
    backend: BackendOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    generations: int = 100,
    population: int = 100,
    seed: int = 0,
    plot: Annotated[
        Path | None, typer.Option(help="PNG of the front (accuracy vs the first objective)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the front as JSON")] = None,
    json_out: JsonOpt = False,
) -> None:
    """NSGA-II Pareto front of predicted accuracy against latency (and/or MACs, params), with hypervolume."""
    from onceforall.io import write_json_atomic
    from onceforall.specialize.predictor import AccuracyPredictor
    from onceforall.specialize.search import nsga2_search

    try:
        space_ = make_supernet(space, resolutions).search_space()
        accuracy = AccuracyPredictor.load(predictor, space_).bind(space_)
        models = {}
        for name in [o.strip() for o in objectives.split(",") if o.strip()]:
            if name == "latency":
                if table is None:
                    raise OFAError("objective latency needs --table")
                expect = {"backend": backend, "threads": threads, "batch_size": batch_size}
                models["latency_ms"] = _latency_model(space_, table, expect)
            elif name in ("macs", "params"):
                models[name] = LayerTable(space_, lambda spec, name=name: getattr(spec, name))
            else:
                raise OFAError(f"unknown objective {name!r}; choose from latency, macs, params")
        result = nsga2_search(space_, accuracy, models, population, generations, seed)
    except OFAError as err:
        _fail(err)
    payload = result.to_dict()
    if out is not None:
        write_json_atomic(payload, out)
    if plot is not None:
        _plot_front(result, plot)
    console.print(
        f"{len(result.accuracy)} non-dominated subnets; hypervolume {result.hypervolume:.4g} "
        f"(reference point {result.ref_point}) in {result.seconds:.1f} s"
    )
    if json_out:
        _print_json(payload)


def _read_arch(path: Path, space: str) -> Arch:
    """An arch from an arch JSON file or from a search result's `best` entry."""
    if not path.is_file():
        raise OFAError(f"arch file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise OFAError(f"{path} is not JSON: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("best"), dict):
        data = data["best"].get("arch")
    return Arch.from_dict(data, space=space)


def _plot_front(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = next(iter(result.objectives))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(result.objectives[name].numpy(), 100 * result.accuracy.numpy(), "o-", ms=3)
    ax.set(xlabel=name, ylabel="predicted accuracy (%)", title=f"{result.space.name}: NSGA-II front")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- export
@app.command("export")
def export(
    arch: Annotated[Path, typer.Option(help="an arch JSON, or a search result JSON (its best arch)")],
    out: Annotated[Path, typer.Option(help="output folder: model.onnx, model.pt2, arch.json")],
    space: SpaceOpt = "mbv3_w1.0",
    resolutions: ResOpt = "",
    checkpoint: Annotated[Path | None, typer.Option(help="supernet weights")] = None,
    formats: Annotated[str, typer.Option(help="comma-separated: onnx, pt2")] = "onnx,pt2",
    batch_size: int = 1,
    atol: float = 1e-4,
    json_out: JsonOpt = False,
) -> None:
    """Extract a subnet and export it to ONNX and torch.export, each checked against PyTorch."""
    from onceforall.export import export_subnet, extract_subnet

    try:
        net = make_supernet(space, resolutions, checkpoint)
        chosen = _read_arch(arch, net.search_space().name)
        net.search_space().validate(chosen)
        subnet = extract_subnet(net, chosen)
        shape = (batch_size, net.in_channels, chosen.image_size, chosen.image_size)
        reports = export_subnet(subnet, shape, out, tuple(f.strip() for f in formats.split(",")), atol)
        chosen.to_json(out / "arch.json")
    except OFAError as err:
        _fail(err)
    for r in reports:
        console.print(f"{r.format}: {r.path} (max abs diff vs PyTorch {r.max_abs_diff:.2e})")
    if json_out:
        _print_json({"arch": chosen.to_dict(), "exports": [r.to_dict() for r in reports]})


if __name__ == "__main__":  # until mounted in the `ofa` command: python -m onceforall.specialize.commands
    app()
