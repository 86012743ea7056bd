"""`ofa latency build|merge|calibrate|validate`: latency lookup tables measured on this machine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from onceforall.arch import Arch
from onceforall.cli.common import (
    CheckpointOpt,
    JsonOpt,
    NetIdOpt,
    ResolutionsOpt,
    SupernetOpt,
    emit,
    latency_app,
    open_supernet,
    say,
    user_errors,
)
from onceforall.errors import OFAError
from onceforall.export import extract_subnet
from onceforall.io import is_png, refuse_foreign_file
from onceforall.specialize.latency_build import (
    build_latency_table,
    calibrate_latency_table,
    merge_latency_tables,
)
from onceforall.specialize.latency_table import Calibration, LatencyTable
from onceforall.specialize.latency_validate import validate_latency_table
from onceforall.specialize.timing import current_settings


def _fitted(c: Calibration) -> dict[str, float]:
    """A calibration's fitted numbers (without the subnets it was fitted on), for --json."""
    keys = ("call_overhead_ms", "scale", "ms_per_mparam", "overhead_ms")
    return {k: getattr(c, k) for k in keys}


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise OFAError(f"--shard takes RANK/WORLD with 0 <= RANK < WORLD, e.g. 0/4; got {text!r}")
    return int(match.group(1)), int(match.group(2))


@latency_app.command("build")
def latency_build(
    supernet: SupernetOpt,
    out: Annotated[Path, typer.Option(help="the table file (JSON lines); an unfinished one is resumed")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    backend: Annotated[str, typer.Option(help="torch or onnxruntime")] = "torch",
    device: Annotated[str, typer.Option(help="cpu or cuda (torch backend)")] = "cpu",
    threads: Annotated[int, typer.Option(min=1, max=256, help="intra-op threads")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 1,
    warmup: Annotated[int, typer.Option(min=0, max=10_000, help="untimed runs per round")] = 10,
    repeats: Annotated[int, typer.Option(min=1, max=10_000, help="timed runs per round")] = 20,
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="interleaved rounds per layer")] = 5,
    subnet_rounds: Annotated[
        int, typer.Option(min=1, max=1000, help="rounds per whole subnet (calibrate, validate, budgets)")
    ] = 10,
    subnet_repeats: Annotated[int, typer.Option(min=1, max=10_000, help="timed runs per subnet round")] = 50,
    statistic: Annotated[str, typer.Option(help="p10 (fastest round's 10th percentile) or median")] = "p10",
    shard: Annotated[str, typer.Option(help="RANK/WORLD: measure this share of the layers")] = "0/1",
    calibration_subnets: Annotated[int, typer.Option(min=1, max=10_000)] = 10,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Measure every distinct layer of the supernet's space on this machine (resumable; shardable)."""
    with user_errors():
        rank, world = _shard(shard)
        path = out if world == 1 else out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}")
        space = open_supernet(supernet, checkpoint, net_id, resolutions).net.search_space()
        table = build_latency_table(
            space,
            path,
            backend=backend,
            device=device,
            threads=threads,
            batch_size=batch_size,
            warmup=warmup,
            repeats=repeats,
            rounds=rounds,
            subnet_rounds=subnet_rounds,
            subnet_repeats=subnet_repeats,
            statistic=statistic,
            shard=(rank, world),
            calibration_subnets=calibration_subnets,
            seed=seed,
            progress=True,
        )
    summary = {"path": str(path), "layers": len(table.layers), "meta": table.meta}
    if table.calibration is not None:
        summary["calibration"] = _fitted(table.calibration)
    slowdown = table.build_slowdown()
    summary["slowdown_pct"] = [round(x, 2) for x in slowdown]
    say(f"latency table {path}: {len(table.layers)} layers measured", as_json)
    again = f"--supernet {supernet}" + (f" --resolutions {resolutions}" if resolutions else "")
    warning = table.build_warning(f"ofa latency validate {again} --table {path}")
    if warning:
        say(f"warning: {warning}", as_json)
    if as_json:
        emit(summary)


@latency_app.command("merge")
def latency_merge(
    shards: Annotated[list[Path], typer.Argument(help="the shard files")],
    supernet: SupernetOpt,
    out: Annotated[Path, typer.Option(help="the merged table")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    calibration_subnets: Annotated[int, typer.Option(min=1, max=10_000)] = 10,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Combine shard files and calibrate the merged table here (same settings as the shards)."""
    with user_errors():
        space = open_supernet(supernet, checkpoint, net_id, resolutions).net.search_space()
        table = merge_latency_tables(shards, out, space, calibration_subnets, seed, progress=True)
    say(f"merged {len(shards)} shards into {out}: {len(table.layers)} layers", as_json)
    if as_json:
        emit({"path": str(out), "layers": len(table.layers), "meta": table.meta})


@latency_app.command("calibrate")
def latency_calibrate(
    supernet: SupernetOpt,
    table: Annotated[Path, typer.Option(help="the latency table (its new calibration is appended)")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    calibration_subnets: Annotated[int, typer.Option(min=1, max=10_000)] = 10,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Fit the table's calibration again on whole subnets timed here now (when `validate` reports drift)."""
    with user_errors():
        space = open_supernet(supernet, checkpoint, net_id, resolutions).net.search_space()
        loaded = LatencyTable.load(table, require_calibration=False)
        loaded.model(space)  # the table must cover this space before a minute of timing
        c = calibrate_latency_table(loaded, space, calibration_subnets, seed, progress=True)
    say(
        f"recalibrated {table}: scale {c.scale:.3f}, weights {c.ms_per_mparam:.3f} ms per M parameters, "
        f"overhead {c.overhead_ms:.3f} ms",
        as_json,
    )
    if as_json:
        emit({"path": str(table), **_fitted(c)})


@latency_app.command("validate")
def latency_validate(
    supernet: SupernetOpt,
    table: Annotated[Path, typer.Option(help="the latency table")],
    checkpoint: CheckpointOpt = None,
    net_id: NetIdOpt = None,
    resolutions: ResolutionsOpt = "",
    n: Annotated[int, typer.Option(min=1, max=100_000, help="random subnets to measure end to end")] = 100,
    seed: int = 1,
    plot: Annotated[Path | None, typer.Option(help="measured-vs-predicted PNG")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure N random extracted subnets here and compare with the table's prediction (weights do not matter)."""
    with user_errors():
        net = open_supernet(supernet, checkpoint, net_id, resolutions).net.eval()
        loaded = LatencyTable.load(table)
        m = loaded.meta
        loaded.check(current_settings(m["backend"], m["device"], m["threads"], m["batch_size"]))
        if plot is not None:  # before minutes of timing, not after
            refuse_foreign_file(plot, "PNG image", is_png)

        def extract(arch: Arch):
            return extract_subnet(net, arch)

        report = validate_latency_table(
            loaded, net.search_space(), n, seed, extract, plot=plot, progress=True
        )
    say(
        f"{report.n} subnets: {100 * report.within_10:.1f} % within ±10 %, MAPE {report.mape:.2f} %, "
        f"Spearman {report.spearman:.3f}, max error {report.max_error:.1f} %; the machine's own spread "
        f"{report.spread:.1f} % (the same subnets measured again), drift since calibration "
        f"{report.drift:+.1f} %" + (f"; plot {report.plot}" if report.plot else ""),
        as_json,
    )
    if abs(report.drift) > 5:
        say(
            f"warning: the table's calibration subnets run {abs(report.drift):.1f} % "
            f"{'slower' if report.drift > 0 else 'faster'} now than when it was calibrated: the machine "
            f"changed speed; with the predictions scaled by that, {100 * report.within_10_levelled:.1f} % "
            f"within ±10 %, MAPE {report.mape_levelled:.2f} %; recalibrate with "
            f"`ofa latency calibrate --table {table}` (same --supernet)",
            as_json,
        )
    if report.spread > 5:
        say(
            f"warning: this machine disagrees with itself by {report.spread:.1f} % between measurements of the "
            "same subnet: errors of that size are noise, not the table's; measure on a quiet machine",
            as_json,
        )
    if as_json:
        emit(report.to_dict())
