"""`ofa specialize`: from a trained supernet to exported subnets for latency budgets, with a report.

For each budget: constrained evolution on the predictor and the latency table, extraction, BN
recalibration, test accuracy, an optional fine-tune and export (checked against PyTorch); then the
chosen subnets' end-to-end latency, measured on the backend in rounds interleaved over all of them
(as the table's calibration and validation do). A subnet that measures over its budget is searched
again under a constraint tightened by what the measurement taught (a few rounds at most), so every
reported subnet measures within its budget, or the report says by how much the best one misses.
One report.md with a table and a Pareto plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
from onceforall.specialize.timing import measure_rounds, summarize
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
    rounds: int = 1  # searches run for this budget (1: the first choice measured within it)
    search_budget_ms: float = 0.0  # the table constraint of the last search
    noise_ms: float = 0.0  # spread of the measurement rounds (max - min of the per-round values)


def check_budgets(space: SearchSpace, latency: LayerTable, budgets_ms: Sequence[float]) -> None:
    """Raise SearchError (naming the smallest achievable latency) if any budget is infeasible."""
    for budget in budgets_ms:
        check_budget(space, latency, torch.tensor([budget], dtype=torch.float64), "ms")


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
) -> list[Specialized]:
    """Search, extract, recalibrate, score and export one subnet per budget into `out`, then time them.

    `finetune(subnet, arch)`, if given, trains each extracted subnet in place before it is scored
    again and exported. The subnets are timed together at the end, with the table's whole-subnet
    rounds and repeats, interleaved over all of them (timed back to back right after its scoring, a
    burst of load could hit every round of one subnet), with the table's statistic.
    """
    out = Path(out)
    net = evaluator.net
    space = net.search_space()
    latency, predict = table.model(space), predictor.bind(space)
    measure = table_measurer(table)
    rounds = subnet_timing(table)[0]
    check_budgets(space, latency, budgets_ms)  # fail before any work, not at the first infeasible budget
    floor = float(smallest(space, latency)[0].min())  # the fastest subnet the table knows

    def choose(budget: float, constraint: float) -> tuple[Specialized, nn.Module, tuple[int, ...]]:
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
        shape = (table.meta["batch_size"], net.in_channels, arch.image_size, arch.image_size)
        subnet = subnet.cpu().to(memory_format=torch.contiguous_format)
        folder = out / f"budget_{budget:g}ms"
        reports = export_subnet(subnet, shape, folder, formats)
        arch.to_json(folder / "arch.json")
        chosen = Specialized(
            budget_ms=budget,
            arch=arch.to_dict(),
            predicted_ms=float(latency(space.encode(arch))[0]),
            measured_ms=float("nan"),  # measured below, with the others
            predicted_top1=100 * float(predict(space.encode(arch))[0]),
            top1=top1,
            macs=int(count_macs(space, arch)[0]),
            params=int(count_params(space, arch)[0]),
            files=[str(r.path) for r in reports],
            finetuned_top1=finetuned_top1,
            search_budget_ms=constraint,
        )
        return chosen, subnet, shape

    results: list[Specialized] = []
    subnets: list[tuple[nn.Module, tuple[int, ...]]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("specializing", total=len(budgets_ms) + 1)
        for budget in budgets_ms:
            bar.update(task, description=f"budget {budget:g} ms: search, extract, score, export")
            chosen, subnet, shape = choose(budget, budget)
            results.append(chosen)
            subnets.append((subnet, shape))
            bar.advance(task)
        fresh = set(range(len(results)))  # subnets not measured yet (first choices, re-searched ones)
        for attempt in range(1, max_rounds + 1):
            # Every chosen subnet is timed again each round, interleaved with the others: a burst of load
            # then hits all of them, and a subnet measured before keeps its fastest measurement (noise
            # only ever adds time).
            bar.update(task, description=f"timing the chosen subnets, round {attempt}")
            timed = [((lambda m=module: m), shape) for module, shape in subnets]
            for i, timings in enumerate(measure_rounds(timed, measure, rounds)):
                r, value = results[i], summarize(timings, table.statistic)
                per_round = [summarize([t], table.statistic) for t in timings]
                r.noise_ms = max(per_round) - min(per_round)
                r.measured_ms = value if i in fresh else min(r.measured_ms, value)
                r.within_budget = r.measured_ms <= r.budget_ms
            fresh = set()
            over = [i for i, r in enumerate(results) if not r.within_budget]
            if not over or attempt == max_rounds:
                break
            for i in over:
                r = results[i]
                # The table is off by measured/predicted for this kind of subnet: ask for that much less.
                tighter = min(r.search_budget_ms * r.budget_ms / r.measured_ms, 0.98 * r.search_budget_ms)
                if tighter < floor:
                    continue  # nothing faster to find: measured again next round, in case it was noise
                bar.update(
                    task, description=f"budget {r.budget_ms:g} ms: measured {r.measured_ms:.2f}, re-search"
                )
                searches = r.rounds
                results[i], subnet, shape = choose(r.budget_ms, tighter)
                results[i].rounds = searches + 1
                subnets[i] = (subnet, shape)
                fresh.add(i)
        bar.advance(task)
    write_json_atomic([asdict(r) for r in results], out / "results.json")
    pareto = plot_pareto(results, space, predict, latency, out / "pareto.png", seed, title=space.name)
    write_text_atomic(report(results, table, space.name, clamped=pareto.clamped), out / "report.md")
    return results


EXTRAPOLATED = "†"  # marks a predicted top-1 above 100 % (or below 0 %) in report.md


def report(results: list[Specialized], table: LatencyTable, space: str, *, clamped: int = 0) -> str:
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
        f"# Specialized subnets of `{space}`",
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
