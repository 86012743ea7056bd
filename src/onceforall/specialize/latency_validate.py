"""Validating a latency table: measure random subnets end to end and compare with its prediction."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.errors import LatencyTableError
from onceforall.specialize.latency_build import _measure_subnets, table_measurer
from onceforall.specialize.latency_table import LatencyTable, SpecChain, subnet_specs
from onceforall.specialize.plots import plot_validation
from onceforall.specialize.timing import MeasureFn


@dataclass
class ValidationReport:
    """How well a table predicts whole subnets measured end to end."""

    n: int
    within_10: float
    mape: float
    spearman: float
    max_error: float
    measured_ms: list[float]
    predicted_ms: list[float]
    archs: list[dict]
    plot: str | None = None
    spread: float = float("nan")  # the machine's own spread (%): re-measurements of the same subnets
    drift: float = float("nan")  # how much slower (%) the calibration subnets run now than when calibrated
    # the same scores with every prediction scaled by (1 + drift): the table's error with the machine's
    # change of speed since calibration taken out (measured on the calibration subnets, not these)
    within_10_levelled: float = float("nan")
    mape_levelled: float = float("nan")

    def to_dict(self, with_points: bool = False) -> dict:
        keys = ("n", "within_10", "mape", "spearman", "max_error", "spread", "drift")
        keys += ("within_10_levelled", "mape_levelled", "plot")
        out = {k: getattr(self, k) for k in keys}
        if with_points:
            out.update(measured_ms=self.measured_ms, predicted_ms=self.predicted_ms, archs=self.archs)
        return out


def validate_latency_table(
    table: LatencyTable,
    space: SearchSpace,
    n: int = 100,
    seed: int = 1,
    subnet_fn: Callable[[Arch], nn.Module] | None = None,
    in_channels: int | None = None,
    plot: str | Path | None = None,
    progress: bool = False,
    measure: MeasureFn | None = None,
    chunk: int = 128,
    repeats_for_spread: int = 5,
    spread_repeats: int = 2,
) -> ValidationReport:
    """Measure `n` random subnets end to end with the table's settings and compare with its prediction.

    `subnet_fn(arch)` gives the module to time (e.g. a supernet's extracted subnet); by default the
    subnet is built from the space's layer specs. Reports the share within +-10 %, MAPE (%),
    Spearman's rank correlation, the largest relative error (%), and the machine's own spread (the
    median over `repeats_for_spread` subnets of (max - min) / median of their latency measured
    1 + `spread_repeats` times, as separate items of the same schedule, %): errors below it are
    noise, not the table's. `plot` writes a measured-vs-predicted PNG. Rounds go round by round over all the subnets; `chunk` bounds how
    many are prepared at once (memory): beyond it, each is prepared (extracted, exported) again
    for each round.

    The table's calibration subnets are timed again among them: `drift` is the median of
    (now / at calibration) - 1, in %. A shared VM can run 10-60 % slower for minutes at a time; a
    table calibrated in a fast spell then predicts low by that much however good its layers are,
    and `calibrate_latency_table` (`ofa latency calibrate`) fits it to the machine as it is now.
    `within_10_levelled` and `mape_levelled` score the predictions scaled by (1 + drift): what the
    table would score recalibrated now, so model error and the machine's change of speed read apart.
    """
    from scipy.stats import spearmanr

    if n < 1:
        raise LatencyTableError(f"validate needs n >= 1 subnets, got {n}")
    measure = measure or table_measurer(table)
    population = space.sample(n, torch.Generator().manual_seed(seed))
    predicted = table.model(space)(population).tolist()
    archs = space.decode(population)
    chains = subnet_specs(space, population)
    factories = [
        (lambda a=a: subnet_fn(a)) if subnet_fn is not None else (lambda c=c: SpecChain(c))
        for a, c in zip(archs, chains)
    ]
    subnets = list(zip(factories, chains))
    # The same few subnets again, as separate items of the same schedule: how far this machine
    # disagrees with itself over a measurement like this one (not over a shorter one, which is noisier).
    copies = [s for _ in range(spread_repeats) for s in subnets[:repeats_for_spread]]
    calibrated = table.calibration.subnets if table.calibration else []
    again_specs = subnet_specs(space, space.encode([Arch.from_dict(c["arch"]) for c in calibrated]))
    timed = subnets + copies + [((lambda c=c: SpecChain(c)), c) for c in again_specs]  # as calibrated
    everything = _measure_subnets(table, timed, measure, progress, "measuring subnets", in_channels, chunk)
    measured, again, now = everything[:n], everything[n : n + len(copies)], everything[n + len(copies) :]
    ratios = [b / c["measured_ms"] for b, c in zip(now, calibrated) if c["measured_ms"] > 0]
    errors = _errors(predicted, measured)
    level = statistics.median(ratios) if ratios else float("nan")
    levelled = _errors([level * p for p in predicted], measured)
    k = min(repeats_for_spread, n)
    spreads = [
        (max(runs) - min(runs)) / statistics.median(runs)
        for runs in zip(measured[:k], *(again[j * k : (j + 1) * k] for j in range(spread_repeats)))
    ]
    report = ValidationReport(
        n=n,
        within_10=sum(e <= 0.10 for e in errors) / n,
        mape=100 * sum(errors) / n,
        spearman=float(spearmanr(measured, predicted).statistic) if n > 2 else float("nan"),
        max_error=100 * max(errors),
        measured_ms=measured,
        predicted_ms=predicted,
        archs=[a.to_dict() for a in archs],
        spread=100 * statistics.median(spreads) if spreads else float("nan"),
        drift=100 * (level - 1),
        within_10_levelled=sum(e <= 0.10 for e in levelled) / n if ratios else float("nan"),
        mape_levelled=100 * sum(levelled) / n if ratios else float("nan"),
    )
    if plot is not None:
        report.plot = str(plot_validation(report, plot, title=_title(table)))
    return report


def _errors(predicted: list[float], measured: list[float]) -> list[float]:
    """|predicted - measured| / measured, subnet by subnet."""
    return [abs(p - m) / m for p, m in zip(predicted, measured)]


def _title(table: LatencyTable) -> str:
    """The validation plot's title: the space, then the measurement settings (wrapped to fit by the plot)."""
    m = table.meta
    nbsp = "\N{NO-BREAK SPACE}"  # a wrapped title keeps "1 thread(s)" and "batch 1" on one line
    return (
        f"{m.get('space')}\n{m.get('backend')} on {m.get('device_name')}, "
        f"{m.get('threads')}{nbsp}thread(s), batch{nbsp}{m.get('batch_size')}"
    )
