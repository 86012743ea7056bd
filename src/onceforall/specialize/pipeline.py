"""`ofa specialize`: from a trained supernet to exported subnets for latency budgets, with a report.

For each budget: constrained evolution on the predictor and the latency table, extraction, BN
recalibration, test accuracy, an optional fine-tune and export (checked against PyTorch); then the
chosen subnets' end-to-end latency, measured on the backend in rounds interleaved over all of them
(as the table's calibration and validation do), and one report.md with a table and a Pareto plot.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.cost import LayerTable, count_macs, count_params
from onceforall.export import export_subnet
from onceforall.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from onceforall.specialize.latency import LatencyTable, measure_rounds, summarize, table_measurer
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.search import check_budget, evolution_search
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
    rounds: int = 5,
    finetune: Callable[[nn.Module, Arch], object] | None = None,
) -> list[Specialized]:
    """Search, extract, recalibrate, score and export one subnet per budget into `out`, then time them.

    `finetune(subnet, arch)`, if given, trains each extracted subnet in place before it is scored
    again and exported. The subnets are timed together at the end, in `rounds` rounds interleaved
    over all of them (timed back to back right after its scoring, a burst of load could hit every
    round of one subnet), with the table's statistic.
    """
    out = Path(out)
    net = evaluator.net
    space = net.search_space()
    latency, predict = table.model(space), predictor.bind(space)
    measure = table_measurer(table)
    check_budgets(space, latency, budgets_ms)  # fail before any work, not at the first infeasible budget
    results, timed = [], []
    for budget in budgets_ms:
        search = evolution_search(space, predict, latency, budget, seed=seed, unit="ms")
        arch = search.best_arch
        subnet = evaluator.subnet(arch)
        top1, _ = accuracy(subnet, evaluator.eval_loader(arch.image_size))
        finetuned_top1 = None
        if finetune is not None:
            finetune(subnet, arch)
            finetuned_top1, _ = accuracy(subnet, evaluator.eval_loader(arch.image_size))
        shape = (table.meta["batch_size"], net.in_channels, arch.image_size, arch.image_size)
        subnet = subnet.cpu().to(memory_format=torch.contiguous_format)
        folder = out / f"budget_{budget:g}ms"
        reports = export_subnet(subnet, shape, folder)
        arch.to_json(folder / "arch.json")
        timed.append((lambda subnet=subnet: subnet, shape))
        results.append(
            Specialized(
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
            )
        )
    for result, timings in zip(results, measure_rounds(timed, measure, rounds)):
        result.measured_ms = summarize(timings, table.statistic)
    write_json_atomic([asdict(r) for r in results], out / "results.json")
    plot_pareto(results, space, predict, latency, out / "pareto.png", seed)
    write_text_atomic(report(results, table, space.name), out / "report.md")
    return results


def plot_pareto(results: list[Specialized], space, predict, latency, path: Path, seed: int) -> None:
    """Predicted accuracy vs predicted latency of random subnets, with the chosen ones marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    population = space.sample(2000, torch.Generator().manual_seed(seed))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(
        latency(population), 100 * predict(population), s=3, alpha=0.3, label="random subnets (predicted)"
    )
    final_top1 = [r.top1 if r.finetuned_top1 is None else r.finetuned_top1 for r in results]
    ax.scatter([r.measured_ms for r in results], final_top1, c="red", label="chosen (measured)")
    for r in results:
        ax.axvline(r.budget_ms, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(image.getvalue(), path)


def report(results: list[Specialized], table: LatencyTable, space: str) -> str:
    m = table.meta
    tuned = any(r.finetuned_top1 is not None for r in results)
    columns = ["budget (ms)", "predicted (ms)", "measured (ms)", "predicted top-1", "top-1"]
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
        cells = [f"{r.budget_ms:g}", f"{r.predicted_ms:.2f}", f"{r.measured_ms:.2f}"]
        cells += [f"{r.predicted_top1:.2f}", f"{r.top1:.2f}"]
        cells += [f"{r.finetuned_top1:.2f}" if r.finetuned_top1 is not None else "-"] * tuned
        cells += [f"{r.macs / 1e6:.1f}", f"{r.params / 1e6:.2f}", str(r.arch["image_size"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![predicted accuracy vs latency](pareto.png)", ""]
    return "\n".join(lines)
