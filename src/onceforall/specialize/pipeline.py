"""`ofa specialize`: from a trained supernet to exported subnets for latency budgets, with a report.

For each budget: constrained evolution on the predictor and the latency table, extraction, BN
recalibration, test accuracy and an optional fine-tune; then the candidates' end-to-end latency,
measured on the backend in rounds interleaved over all of them (as the table's calibration and
validation do). A budget whose candidates all measure over it is searched again under a constraint
tightened by what the measurement taught (a few rounds at most), so every reported subnet measures
within its budget, or the report says by how much the best one misses. Each budget's choice is then
exported (checked against PyTorch); one report.md with a table and a Pareto plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.cost import LayerTable, count_macs, count_params
from onceforall.export import export_subnet
from onceforall.io import write_json_atomic, write_text_atomic
from onceforall.progress import progress_bar
from onceforall.specialize.latency_build import subnet_timing, table_measurer
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.plots import plot_pareto
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.search import check_budget, evolution_search, smallest
from onceforall.specialize.timing import MeasureFn, measure_rounds, summarize
from onceforall.train.evaluate import SubnetEvaluator, accuracy


@dataclass
class Specialized:
    """One budget's subnet: predicted vs measured latency and accuracy, size, exported files."""

    budget_ms: float
    arch: dict
    predicted_ms: float
    measured_ms: float
    predicted_top1: float
    top1: float
    macs: int
    params: int
    files: list[str]
    finetuned_top1: float | None = None
    within_budget: bool = False
    rounds: int = 1  # searches run for this budget (the choice may be an earlier search's)
    search_budget_ms: float = 0.0  # the table constraint of the search that found this subnet
    noise_ms: float = 0.0  # spread of its measurement rounds (max - min of the per-round values, all rounds)


def check_budgets(space: SearchSpace, latency: LayerTable, budgets_ms: Sequence[float]) -> None:
    """Raise SearchError (naming the smallest achievable latency) if any budget is infeasible."""
    for budget in budgets_ms:
        check_budget(space, latency, torch.tensor([budget], dtype=torch.float64), "ms")


@dataclass
class _Candidate:
    """A searched, extracted and scored subnet for one budget, before it is chosen and exported."""

    result: Specialized
    module: nn.Module
    shape: tuple[int, ...]
    per_round_ms: list[float] = field(default_factory=list)  # every measurement round's value

    def undecided(self, others: list[_Candidate]) -> bool:
        """Whether timing it again could change its budget's choice: not yet within budget, and no
        more accurate candidate of the same budget is."""
        better = [
            c
            for c in others
            if c.result.within_budget and c.result.predicted_top1 >= self.result.predicted_top1
        ]
        return not self.result.within_budget and not better


# Aim a re-search this far under the budget: the table's error for the kind of subnet is corrected by
# the measurement, but the next subnet is another kind, and the machine's noise does not go away.
MARGIN = 0.03


def specialize(
    evaluator: SubnetEvaluator,
    predictor: AccuracyPredictor,
    table: LatencyTable,
    budgets_ms: Sequence[float],
    out: str | Path,
    seed: int = 0,
    finetune: Callable[[nn.Module, Arch], object] | None = None,
    formats: tuple[str, ...] = ("onnx", "pt2"),
    progress: bool = True,
    max_rounds: int = 3,
    generations: int = 500,
    name: str | None = None,
) -> list[Specialized]:
    """Search, extract, recalibrate and score one subnet per budget, time them, re-search the ones over
    budget, then export each budget's choice into `out` with results.json, report.md and pareto.png.

    `finetune(subnet, arch)`, if given, trains each extracted subnet in place before it is scored
    again. All candidates are timed together, with the table's whole-subnet rounds and repeats,
    interleaved over all of them (timed back to back, a burst of load could hit every round of one
    subnet), with the table's statistic; every timing round re-times every candidate that could
    still change its budget's choice (`_Candidate.undecided`), which keeps its fastest measurement
    (noise only ever adds time). A budget's choice is its candidate with
    the best predicted accuracy among those measured within it, else the fastest one. Nothing is
    exported before the choice, so a budget's folder always holds the subnet its report row names.
    `name` (e.g. the registry id a user typed) titles report.md and pareto.png beside the space's name.
    """
    out = Path(out)
    net = evaluator.net
    space = net.search_space()
    latency, predict = table.model(space), predictor.bind(space)
    measure = table_measurer(table)
    rounds = subnet_timing(table)[0]
    check_budgets(space, latency, budgets_ms)  # fail before any work, not at the first infeasible budget
    floor = float(smallest(space, latency)[0].min())  # the fastest subnet the table knows

    def candidate(budget: float, constraint: float) -> _Candidate:
        found = evolution_search(
            space, predict, latency, constraint, generations=generations, seed=seed, unit="ms"
        )
        arch = found.best_arch
        subnet = evaluator.subnet(arch)
        top1, _ = accuracy(subnet, evaluator.eval_loader(arch.image_size))
        finetuned_top1 = None
        if finetune is not None:
            finetune(subnet, arch)
            finetuned_top1, _ = accuracy(subnet, evaluator.eval_loader(arch.image_size))
        result = Specialized(
            budget_ms=budget,
            arch=arch.to_dict(),
            predicted_ms=float(latency(space.encode(arch))[0]),
            measured_ms=float("nan"),  # measured with the others
            predicted_top1=100 * float(predict(space.encode(arch))[0]),
            top1=top1,
            macs=int(count_macs(space, arch)[0]),
            params=int(count_params(space, arch)[0]),
            files=[],
            finetuned_top1=finetuned_top1,
            search_budget_ms=constraint,
        )
        shape = (table.meta["batch_size"], net.in_channels, arch.image_size, arch.image_size)
        return _Candidate(result, subnet.cpu(), shape)

    tried: list[list[_Candidate]] = []  # per budget, in search order
    with progress_bar(progress) as bar:
        task = bar.add_task("specializing", total=len(budgets_ms) + 2)
        for budget in budgets_ms:
            bar.update(task, description=f"budget {budget:g} ms: search, extract, score")
            tried.append([candidate(budget, budget)])
            bar.advance(task)
        for attempt in range(1, max_rounds + 1):
            bar.update(task, description=f"timing the candidates, round {attempt}")
            _time(
                [c for cands in tried for c in cands if c.undecided(cands)], measure, rounds, table.statistic
            )
            over = [i for i, cands in enumerate(tried) if not any(c.result.within_budget for c in cands)]
            if not over or attempt == max_rounds:
                break
            for i in over:
                last = tried[i][-1].result
                # The table is off by measured/predicted for this kind of subnet: ask for that much less.
                target = last.predicted_ms * last.budget_ms / last.measured_ms * (1 - MARGIN)
                target = min(target, 0.98 * last.search_budget_ms)
                if target < floor:
                    continue  # nothing faster to find: measured again next round, in case it was noise
                bar.update(
                    task,
                    description=f"budget {last.budget_ms:g} ms: measured {last.measured_ms:.2f}, re-search",
                )
                tried[i].append(candidate(last.budget_ms, target))
        bar.advance(task)
        bar.update(task, description="exporting the chosen subnets")
        results = [_export(_choose(cands), out, formats) for cands in tried]
        bar.advance(task)
    write_json_atomic([asdict(r) for r in results], out / "results.json")
    title = supernet_title(space.name, name)
    pareto = plot_pareto(results, space, predict, latency, out / "pareto.png", seed, title=title)
    write_text_atomic(report(results, table, space.name, name, clamped=pareto.clamped), out / "report.md")
    return results


def _time(cands: list[_Candidate], measure: MeasureFn, rounds: int, statistic: str) -> None:
    """One timing round over `cands`; each keeps its fastest measurement so far."""
    timed = [((lambda m=c.module: m), c.shape) for c in cands]
    for c, timings in zip(cands, measure_rounds(timed, measure, rounds)):
        r, value = c.result, summarize(timings, statistic)
        c.per_round_ms += [summarize([t], statistic) for t in timings]
        r.noise_ms = max(c.per_round_ms) - min(c.per_round_ms)
        r.measured_ms = value if math.isnan(r.measured_ms) else min(r.measured_ms, value)
        r.within_budget = r.measured_ms <= r.budget_ms


def _choose(cands: list[_Candidate]) -> _Candidate:
    """The most accurate (predicted) candidate measured within budget, else the fastest measured;
    reports how many searches the budget took."""
    within = [c for c in cands if c.result.within_budget]
    chosen = (
        max(within, key=lambda c: c.result.predicted_top1)
        if within
        else min(cands, key=lambda c: c.result.measured_ms)
    )
    chosen.result.rounds = len(cands)
    return chosen


def _export(chosen: _Candidate, out: Path, formats: tuple[str, ...]) -> Specialized:
    """Write the chosen subnet's model files and arch.json into its budget's folder."""
    r = chosen.result
    folder = out / f"budget_{r.budget_ms:g}ms"
    subnet = chosen.module.cpu().to(memory_format=torch.contiguous_format)
    reports = export_subnet(subnet, chosen.shape, folder, formats)
    Arch.from_dict(r.arch).to_json(folder / "arch.json")
    r.files = [str(rep.path) for rep in reports]
    return r


EXTRAPOLATED = "†"  # marks a predicted top-1 above 100 % (or below 0 %) in report.md


def supernet_title(space: str, name: str | None, quote: str = "") -> str:
    """The supernet as the user named it beside its space's name (once when they are the same);
    `quote` marks each name (a backtick for markdown, where `_` and `*` in a path would be emphasis)."""
    if name in (None, space):
        return f"{quote}{space}{quote}"
    return f"{quote}{name}{quote} ({quote}{space}{quote})"


def report(
    results: list[Specialized], table: LatencyTable, space: str, name: str | None = None, *, clamped: int = 0
) -> str:
    """report.md: the per-budget table, the Pareto plot, and footnotes for impossible predictions.

    A predicted top-1 outside 0–100 % is the predictor extrapolating beyond its training data: its
    cell is marked and explained rather than presented as an accuracy. `clamped` is how many such
    predictions pareto.png drew at the bound (`plot_pareto(...).clamped`).
    """
    m = table.meta
    tuned = any(r.finetuned_top1 is not None for r in results)
    extrapolated = any(not 0 <= r.predicted_top1 <= 100 for r in results)
    columns = ["budget (ms)", "predicted (ms)", "measured (ms)", "within budget", "rounds"]
    columns += ["predicted held-out top-1", "test top-1"]
    columns += ["fine-tuned top-1"] * tuned + ["MACs (M)", "params (M)", "R"]
    lines = [
        f"# Specialized subnets of {supernet_title(space, name, '`')}",
        "",
        f"Backend {m['backend']} on {m['device_name']}, {m['threads']} thread(s), batch {m['batch_size']}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in results:
        mark = EXTRAPOLATED * (not 0 <= r.predicted_top1 <= 100)
        cells = [f"{r.budget_ms:g}", f"{r.predicted_ms:.2f}", f"{r.measured_ms:.2f}"]
        cells += [
            "yes" if r.within_budget else f"**no: +{r.measured_ms - r.budget_ms:.2f} ms**",
            str(r.rounds),
        ]
        cells += [f"{r.predicted_top1:.2f}{mark}", f"{r.top1:.2f}"]
        cells += [f"{r.finetuned_top1:.2f}" if r.finetuned_top1 is not None else "-"] * tuned
        cells += [f"{r.macs / 1e6:.1f}", f"{r.params / 1e6:.2f}", str(r.arch["image_size"])]
        lines.append("| " + " | ".join(cells) + " |")
    missed = [r for r in results if not r.within_budget]
    if missed:
        lines += [""] + [
            f"No subnet found for {r.budget_ms:g} ms after {r.rounds} search(es): the best measures "
            f"{r.measured_ms:.2f} ms, {r.measured_ms - r.budget_ms:.2f} ms over (rounds spread "
            f"{r.noise_ms:.2f} ms); the table predicts {r.predicted_ms:.2f} ms for it."
            for r in missed
        ]
    if extrapolated:
        lines += [
            "",
            f"{EXTRAPOLATED} predicted > 100 % or < 0 %: extrapolation of the predictor, not an accuracy.",
        ]
    lines += [
        "",
        "![random subnets' predicted top-1 and the chosen subnets' predicted and measured top-1 "
        "against latency](pareto.png)",
        "",
    ]
    if clamped:
        lines += [
            f"In pareto.png, {clamped} predicted top-1 outside 0–100 % (predicted > 100 %: extrapolation) "
            "are drawn at the bound, as triangles.",
            "",
        ]
    return "\n".join(lines)
