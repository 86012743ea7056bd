"""Issue #23 item 5: does the accuracy predictor help? Predictor-guided evolution against random search.

At each MACs budget and seed, both methods get the same number (--evaluate) of subnets scored for real
on the first --holdout-images held-out training images (BN recalibrated, as `ofa acc-dataset` scores
them), and each keeps the one that scored best there; that subnet is then scored on the test set.

- predictor-guided: constrained evolution with the predictor (population 100, 500 generations), then
  the --evaluate best distinct subnets of its final population by predicted accuracy;
- random: the first --evaluate distinct subnets drawn uniformly per gene that fit the budget.

The evolution's single top-predicted subnet is also scored on the test set (what `ofa search` returns
without any real evaluation).

    .venv/bin/python bench/predictor_search.py                       # shipped supernet and predictor
    .venv/bin/python bench/predictor_search.py --predictor runs/predictor.pt --out docs/results/predictor_search.json
    .venv/bin/python bench/predictor_search.py --markdown
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from onceforall.arch import Arch, SearchSpace
from onceforall.cost import LayerTable
from onceforall.registry import load_supernet, predictor_path
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.search import evolution_search
from onceforall.workflow.data import dataset_evaluator, supernet_data
from onceforall.workflow.specialize import parse_quantity

ROOT = Path(__file__).resolve().parents[1]


def distinct(space: SearchSpace, population: torch.Tensor, k: int) -> list[Arch]:
    """The first `k` rows that are different subnets (skipped blocks' genes do not count)."""
    seen, archs = set(), []
    for row, arch in zip(space.canonical(population).tolist(), space.decode(population)):
        if tuple(row) not in seen:
            seen.add(tuple(row))
            archs.append(arch)
        if len(archs) == k:
            break
    return archs


def random_feasible(space: SearchSpace, macs: LayerTable, budget: float, k: int, seed: int) -> list[Arch]:
    generator = torch.Generator().manual_seed(seed)
    archs: list[Arch] = []
    seen: set[tuple[int, ...]] = set()
    while len(archs) < k:
        population = space.sample(1000, generator)
        population = population[macs(population) <= budget]
        for row, arch in zip(space.canonical(population).tolist(), space.decode(population)):
            if tuple(row) not in seen and len(archs) < k:
                seen.add(tuple(row))
                archs.append(arch)
    return archs


def run(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_supernet(args.supernet)
    space = loaded.net.search_space()
    predictor = AccuracyPredictor.load(args.predictor or predictor_path(args.supernet), space)
    macs = LayerTable(space, lambda spec: spec.macs)
    source = supernet_data(loaded)
    holdout, n_holdout = dataset_evaluator(loaded, source, "holdout", args.device, limit=args.holdout_images)
    test, n_test = dataset_evaluator(loaded, source, "test", args.device)
    cache: dict[tuple[str, Arch], float] = {}

    def score(split: str, arch: Arch) -> float:
        if (split, arch) not in cache:
            cache[(split, arch)] = (holdout if split == "holdout" else test)(arch)[0]
        return cache[(split, arch)]

    rows = []
    for text in args.budgets.split(","):
        budget = parse_quantity(text)
        for seed in range(args.seeds):
            started = time.perf_counter()
            found = evolution_search(space, predictor.bind(space), macs, budget, seed=seed)
            guided = distinct(space, found.population, args.evaluate)
            randoms = random_feasible(space, macs, budget, args.evaluate, seed)
            row: dict[str, Any] = {"budget_macs": budget, "seed": seed}
            for name, archs in (("guided", guided), ("random", randoms)):
                held = [score("holdout", a) for a in archs]
                best = archs[max(range(len(archs)), key=held.__getitem__)]
                row[name] = {
                    "holdout": held,
                    "chosen": best.to_dict(),
                    "chosen_macs": float(macs(space.encode(best))[0]),
                    "chosen_holdout": max(held),
                    "chosen_test": score("test", best),
                }
            top = guided[0]
            row["guided_top_predicted"] = {
                "predicted": float(found.accuracy[0]) * 100,
                "test": score("test", top),
                "holdout": score("holdout", top),
            }
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(
                f"{text} seed {seed}: guided {row['guided']['chosen_test']:.2f}, random "
                f"{row['random']['chosen_test']:.2f}, top predicted {row['guided_top_predicted']['test']:.2f} "
                f"({row['seconds']} s)",
                flush=True,
            )
    return {
        "supernet": args.supernet,
        "predictor": str(args.predictor or predictor_path(args.supernet)),
        "holdout_images": n_holdout,
        "search": "evolution, population 100, 500 generations",
        "test_images": n_test,
        "evaluate": args.evaluate,
        "rows": rows,
    }


def markdown(results: dict[str, Any]) -> str:
    k = results["evaluate"]
    lines = [
        f"| MACs budget | predictor-guided, best of {k} on holdout | random, best of {k} on holdout "
        "| guided - random (paired) | evolution's top prediction alone |",
        "|---|---|---|---|---|",
    ]
    budgets = sorted({r["budget_macs"] for r in results["rows"]})

    def cell(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} ± {spread:.2f} ({min(values):.2f}-{max(values):.2f})"

    for budget in budgets:
        rows = [r for r in results["rows"] if r["budget_macs"] == budget]
        guided = [r["guided"]["chosen_test"] for r in rows]
        rand = [r["random"]["chosen_test"] for r in rows]
        top = [r["guided_top_predicted"]["test"] for r in rows]
        diff = [g - r for g, r in zip(guided, rand)]
        wins = sum(d > 0 for d in diff)
        lines.append(
            f"| {budget / 1e6:g} M | {cell(guided)} | {cell(rand)} | {statistics.fmean(diff):+.2f} "
            f"(guided ahead at {wins} of {len(diff)} seeds) | {cell(top)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default="ofa_mbv3_fashion_mnist")
    parser.add_argument("--predictor", type=Path, help="predictor file (default: the supernet's shipped one)")
    parser.add_argument("--budgets", default="12M,18M,25M", help="MACs budgets")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evaluate", type=int, default=5, help="subnets scored for real per method")
    parser.add_argument("--holdout-images", type=int, default=2500, help="held-out images per real score")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/predictor_search.json")
    parser.add_argument("--markdown", action="store_true", help="print the table of --out as Markdown")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if not args.markdown:
        results = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(json.loads(args.out.read_text())))


if __name__ == "__main__":
    main()
