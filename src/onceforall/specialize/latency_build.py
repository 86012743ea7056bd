"""Building latency tables: measure a space's layers (resumable, shardable), merge shard files,
and calibrate a table on whole subnets measured end to end."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from onceforall.arch import SearchSpace
from onceforall.cost import count_params, distinct_specs
from onceforall.errors import LatencyTableError
from onceforall.nn.spec import LayerSpec
from onceforall.progress import progress_bar
from onceforall.specialize.latency_table import (
    Calibration,
    LatencyTable,
    SpecChain,
    _append,
    _header,
    _open_table,
    _read,
    refuse_foreign,
    spec_key,
    subnet_specs,
)
from onceforall.specialize.timing import (
    STATISTICS,
    MeasureFn,
    Measurer,
    Timing,
    current_settings,
    empty_call_ms,
    measure_rounds,
    summarize,
)


def build_latency_table(
    space: SearchSpace,
    path: str | Path,
    backend: str = "torch",
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 20,
    rounds: int = 5,
    statistic: str = "p10",
    shard: tuple[int, int] = (0, 1),
    subnet_rounds: int = 10,
    subnet_repeats: int = 50,
    calibration_subnets: int = 10,
    seed: int = 0,
    progress: bool = False,
    measure: MeasureFn | None = None,
) -> LatencyTable:
    """Measure every distinct layer of `space` (this shard's share), appending each round to `path`.

    Each layer is timed `rounds` times (`warmup` untimed and `repeats` timed runs each), round by
    round over all the layers (`measure_rounds`). A file left by a killed build is resumed: rounds already in
    it are not measured again. With `shard=(rank, world)` only the specs with index % world == rank
    are measured; combine the shard files with `merge_latency_tables`. An unsharded build also
    calibrates: `calibration_subnets` random subnets (from `seed`), the smallest and the largest,
    each timed once after each of `subnet_rounds` equal parts of the layers. Whole subnets (calibration here; `validate_latency_table` and the
    budget check of `specialize` later) are timed `subnet_rounds` x `subnet_repeats` times, more than a
    layer: on a shared VM one subnet's time varies by 5-10 % between runs of 5 x 20, which is the
    whole tolerance of a budget, while a layer's noise averages out over the twenty-odd layers summed.
    `measure(module, input_shape) -> timer` replaces the backend (tests).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise LatencyTableError(f"shard {rank}/{world} is invalid: need 0 <= rank < world")
    if statistic not in STATISTICS:
        raise LatencyTableError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    if min(rounds, repeats, subnet_rounds, subnet_repeats) < 1 or warmup < 0:
        raise LatencyTableError(
            "need rounds, repeats, subnet_rounds and subnet_repeats >= 1 and warmup >= 0; got "
            f"{rounds}, {repeats}, {subnet_rounds}, {subnet_repeats} and {warmup}"
        )
    meta = {
        **current_settings(backend, device, threads, batch_size),
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "statistic": statistic,
        "subnet_rounds": subnet_rounds,
        "subnet_repeats": subnet_repeats,
        "calibration_subnets": calibration_subnets,
        "calibration_seed": seed,
        "space": space.name,
        "resolutions": list(space.resolutions),
        "shard": [rank, world],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(path)
    table = _open_table(path, meta)
    specs = [s for i, s in enumerate(distinct_specs(space)) if i % world == rank]
    keys = [spec_key(s) for s in specs]
    calibrating = world == 1 and table.calibration is None
    population = calibration_population(space, calibration_subnets, seed)
    chains = subnet_specs(space, population) if calibrating else []
    # The calibration subnets are timed at `subnet_rounds` even intervals of the layers' schedule, so
    # layers and subnets sample the machine over the same span: a calibration timed in one short
    # window took that window's speed, and a slow spell there biased every prediction by 6-14 %.
    layer_measure = measure or layer_measurer(table)
    subnet_measure = measure or table_measurer(table)
    todo = sum(rounds - len(table.rounds.get(k, {})) for k in keys)
    subnet_todo = sum(
        r not in table.subnet_rounds.get(i, {}) for i in range(len(chains)) for r in range(subnet_rounds)
    )
    timers: list[Callable[[], Timing]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"measuring {len(specs)} layers ({backend}, {device})", total=todo)
        subnet_task = bar.add_task("calibrating on whole subnets", total=subnet_todo, visible=calibrating)

        def done(i: int, r: int, timing: Timing) -> None:
            record = {"type": "layer", "key": keys[i], "round": r, "spec": asdict(specs[i]), **asdict(timing)}
            _append(path, [record])
            table.rounds.setdefault(keys[i], {})[r] = timing
            table.specs[keys[i]] = record["spec"]
            bar.advance(task)

        def calibration_round(r: int) -> None:
            for i in range(len(chains)):
                if r in table.subnet_rounds.get(i, {}):
                    continue
                if not timers:  # prepared once, kept for the whole build
                    timers.extend(subnet_measure(SpecChain(c), _subnet_shape(c, batch_size)) for c in chains)
                timing = timers[i]()
                _append(path, [{"type": "subnet", "index": i, "round": r, **asdict(timing)}])
                table.subnet_rounds.setdefault(i, {})[r] = timing
                bar.advance(subnet_task)

        measure_rounds(
            [(spec.build, spec.input_shape(batch_size)) for spec in specs],
            layer_measure,
            rounds,
            chunk=256,  # every layer of most spaces: each prepared once (an onnxruntime export is ~0.1 s)
            done=done,
            skip=lambda i, r: r in table.rounds.get(keys[i], {}),
            breaks=[lambda r=r: calibration_round(r) for r in range(subnet_rounds)] if calibrating else (),
        )
    timers.clear()
    if calibrating:
        measured = [summarize(list(table.subnet_rounds[i].values()), statistic) for i in range(len(chains))]
        _fit_calibration(table, space, population, measured, measure is None)
    return table


def _subnet_shape(
    specs: Sequence[LayerSpec], batch_size: int, in_channels: int | None = None
) -> tuple[int, ...]:
    first = specs[0]
    return (batch_size, in_channels or first.in_channels, first.in_size, first.in_size)


def calibration_population(space: SearchSpace, n_subnets: int, seed: int) -> torch.Tensor:
    """The subnets a table is calibrated on: `n_subnets` random ones, the smallest and the largest."""
    return torch.cat(
        [
            space.sample(n_subnets, torch.Generator().manual_seed(seed)),
            space.encode([space.min_arch(space.resolutions[0]), space.max_arch(space.resolutions[-1])]),
        ]
    )


def merge_latency_tables(
    paths: Sequence[str | Path],
    out: str | Path,
    space: SearchSpace,
    calibration_subnets: int = 10,
    seed: int = 0,
    progress: bool = False,
    measure: MeasureFn | None = None,
) -> LatencyTable:
    """Combine shard files into one table at `out`, then calibrate it here (same settings required)."""
    tables = []
    for p in paths:
        if not Path(p).is_file():
            raise LatencyTableError(f"shard file {p} does not exist")
        table, bad = _read(Path(p))
        if table is None:
            raise LatencyTableError(f"{p} is not a latency table (no header line)")
        if bad:
            raise LatencyTableError(f"{p}: malformed lines {bad[:5]}; resume that shard's build first")
        tables.append(table)
    first = tables[0]
    for table in tables[1:]:
        table.check({k: v for k, v in first.meta.items() if k not in ("shard", "created")})
    if first.meta.get("space") != space.name:
        raise LatencyTableError(f"the shards are for space {first.meta.get('space')!r}, not {space.name!r}")
    merged = LatencyTable(meta={**first.meta, "shard": [0, 1]}, path=Path(out))
    for table in tables:
        merged.rounds.update(table.rounds)
        merged.specs.update(table.specs)
    missing = merged.missing(space)
    if missing:
        raise LatencyTableError(
            f"the shards lack {len(missing)} layers (e.g. {spec_key(missing[0])}); finish every shard's build"
        )
    records = [_header(merged.meta)]
    for key, rounds in merged.rounds.items():
        for r, timing in sorted(rounds.items()):
            records.append(
                {"type": "layer", "key": key, "round": r, "spec": merged.specs[key], **asdict(timing)}
            )
    out = Path(out)
    refuse_foreign(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(b"")
    _append(tmp, records)
    os.replace(tmp, out)
    calibrate_latency_table(merged, space, calibration_subnets, seed, progress, measure)
    return merged


def table_measurer(table: LatencyTable) -> Measurer:
    """A Measurer of whole subnets with the table's settings and subnet repeats; refuses if this
    machine is not the one it was measured on."""
    m = table.meta
    settings = (m["backend"], m["device"], m["threads"], m["batch_size"])
    table.check(current_settings(*settings))
    return Measurer(*settings, m["warmup"], subnet_timing(table)[1])


def layer_measurer(table: LatencyTable) -> Measurer:
    """A Measurer of layers with the table's settings and layer repeats, on this machine."""
    m = table.meta
    settings = (m["backend"], m["device"], m["threads"], m["batch_size"])
    table.check(current_settings(*settings))
    return Measurer(*settings, m["warmup"], m["repeats"])


def subnet_timing(table: LatencyTable) -> tuple[int, int]:
    """(rounds, repeats) a whole subnet is timed with; a table from before they were recorded: its layers'."""
    m = table.meta
    return m.get("subnet_rounds", m.get("rounds", 1)), m.get("subnet_repeats", m["repeats"])


def calibrate_latency_table(
    table: LatencyTable,
    space: SearchSpace,
    n_subnets: int = 10,
    seed: int = 0,
    progress: bool = False,
    measure: MeasureFn | None = None,
) -> Calibration:
    """Fit the table's calibration again on whole subnets measured here, now (`ofa latency calibrate`).

    A build calibrates as it measures the layers; this one times its subnets in rounds interleaved
    over all of them, back to back: when `validate` reports that the machine drifted, or after a
    merge of shard files measured elsewhere. Appended to the table file.
    """
    population = calibration_population(space, n_subnets, seed)
    items = [(lambda c=c: SpecChain(c), c) for c in subnet_specs(space, population)]
    measured = _measure_subnets(table, items, measure or table_measurer(table), progress, "calibrating")
    return _fit_calibration(table, space, population, measured, measure is None)


def _fit_calibration(
    table: LatencyTable,
    space: SearchSpace,
    population: torch.Tensor,
    measured: Sequence[float],
    time_empty_call: bool,
) -> Calibration:
    """Scale, weight cost and overhead of the table from whole subnets' latency; appended to its file.

    The per-call overhead is measured on an empty model with the table's layer settings (none with
    `time_empty_call` False: a fake backend in tests); `_fit_calibration_terms` fits the rest.
    """
    call = empty_call_ms(layer_measurer(table), table.statistic) if time_empty_call else 0.0
    chains = subnet_specs(space, population)
    sums = [table.layer_sum(c, call) for c in chains]
    mparams = (count_params(space, population).double() / 1e6).tolist()
    scale, per_mparam, overhead = _fit_calibration_terms(sums, mparams, measured)
    subnets = [
        {"arch": a.to_dict(), "layer_sum_ms": s, "mparams": p, "measured_ms": m}
        for a, s, p, m in zip(space.decode(population), sums, mparams, measured)
    ]
    table.calibration = Calibration(call, scale, overhead, subnets, ms_per_mparam=per_mparam)
    if table.path is not None:
        _append(table.path, [{"type": "calibration", **asdict(table.calibration)}])
    return table.calibration


def _measure_subnets(
    table: LatencyTable,
    subnets: Sequence[tuple[Callable[[], nn.Module], list[LayerSpec]]],
    measure: MeasureFn,
    progress: bool,
    description: str,
    in_channels: int | None = None,
    chunk: int = 128,
) -> list[float]:
    """Median latency (ms) of whole subnets, measured in interleaved rounds like the layers."""
    batch, rounds = table.meta["batch_size"], subnet_timing(table)[0]
    items = [(factory, _subnet_shape(specs, batch, in_channels)) for factory, specs in subnets]
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(items) * rounds)
        timings = measure_rounds(items, measure, rounds, chunk=chunk, done=lambda i, r, t: bar.advance(task))
    return [summarize(t, table.statistic) for t in timings]


def _fit_calibration_terms(
    sums: Sequence[float], mparams: Sequence[float], measured: Sequence[float]
) -> tuple[float, float, float]:
    """measured ~ scale * sums + per_mparam * mparams + overhead: (scale, per_mparam, overhead).

    On relative residuals, since a table is judged by its relative error, with a soft-L1 loss (2 %
    scale) so that one subnet timed in a slow spell does not tilt the fit; scale within 0.5-2 and
    per_mparam >= 0 (weights cannot make a network faster). With fewer than 4 subnets or no
    spread in their layer sums the scale stays 1 and the overhead is the median residual.
    """
    from scipy.optimize import least_squares

    x, p, y = (np.asarray(v, dtype=np.float64) for v in (sums, mparams, measured))
    if len(y) < 4 or x.max() <= x.min() or y.min() <= 0:
        return 1.0, 0.0, float(np.median(y - x))
    design = np.stack([x, p, np.ones_like(x)], 1)
    low, high = np.array([0.5, 0.0, -np.inf]), np.array([2.0, np.inf, np.inf])
    start = np.clip(np.linalg.lstsq(design / y[:, None], np.ones_like(y), rcond=None)[0], low, high)
    fit = least_squares(
        lambda w: (design @ w - y) / y,
        x0=start,
        bounds=(low, high),
        loss="soft_l1",
        f_scale=0.02,
        xtol=1e-12,
        ftol=1e-12,
    )
    scale, per_mparam, overhead = (float(v) for v in fit.x)
    return scale, per_mparam, overhead
