"""Issue #23 item 4: several predictors scored on the same held-out subnets of one accuracy dataset.

The held-out rows are those `ofa predictor fit` holds out (seeded split, --holdout, --seed); each
predictor is scored against the rows' measured top-1 and against their loss-calibrated top-1 (the
least-squares line of top-1 on loss over the other rows), so a predictor fitted on other data (the
previously shipped one) is compared on the same footing as the ones fitted on this dataset. With
--test, the held-out subnets are also scored on the whole test set (10,000 other images, BN
recalibrated; cached in --test-cache), the least noisy judge available: four times the images.

    .venv/bin/python bench/predictor_holdout.py --dataset runs/acc/fm_loss.jsonl \
        --predictor shipped=src/onceforall/pretrained/ofa_mbv3_fashion_mnist.predictor.pt --predictor new=runs/p.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from onceforall.arch import Arch
from onceforall.registry import load_supernet
from onceforall.specialize.accuracy_dataset import AccuracyDataset
from onceforall.specialize.predictor import AccuracyPredictor, evaluate_predictor, loss_calibrated, split


def test_top1(loaded, archs: list[Arch], cache: Path) -> torch.Tensor:
    """Test-set top-1 (%) of each arch, BN recalibrated as `ofa eval` does; resumable through `cache`."""
    from onceforall.workflow.data import dataset_evaluator, supernet_data

    scored = json.loads(cache.read_text()) if cache.is_file() else {}
    evaluator = None
    for i, arch in enumerate(archs):
        key = arch.to_json()
        if key not in scored:
            if evaluator is None:
                evaluator, _ = dataset_evaluator(loaded, supernet_data(loaded), "test", None)
            scored[key] = evaluator(arch)[0]
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(scored))
            print(f"test set {i + 1}/{len(archs)}: {scored[key]:.2f} %", flush=True)
    return torch.tensor([scored[a.to_json()] for a in archs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default="ofa_mbv3_fashion_mnist")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--predictor", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the scores as JSON")
    parser.add_argument("--test", action="store_true", help="also score the held-out subnets on the test set")
    parser.add_argument("--test-cache", type=Path, default=Path("runs/holdout_test_top1.json"))
    parser.add_argument(
        "--test-limit", type=int, help="score only the first N held-out subnets on the test set"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_supernet(args.supernet)
    space = loaded.net.search_space()
    rows = AccuracyDataset(args.dataset)
    population, measured = rows.population(space)
    train, test = split(len(population), args.holdout, args.seed)
    calibrated = loss_calibrated(measured, rows.losses(), train)
    if args.test and args.test_limit:
        test = test[: args.test_limit]  # every predictor is scored on the same subnets
    labels = {"measured": measured[test], "loss_calibrated": calibrated[test]}
    if args.test:
        labels["test_set"] = test_top1(loaded, space.decode(population[test]), args.test_cache) / 100
    results = {"dataset": str(args.dataset), "n_test": len(test), "predictors": {}}
    for spec in args.predictor:
        name, _, path = spec.partition("=")
        predicted = AccuracyPredictor.load(path, space).predict(space, population[test]).detach()
        scores = {label: evaluate_predictor(predicted, target) for label, target in labels.items()}
        results["predictors"][name] = {"file": path, **scores}
        for label, s in scores.items():
            print(
                f"{name:>10} vs {label:<15}: RMSE {100 * s['rmse']:.3f} pts, MAE {100 * s['mae']:.3f}, "
                f"Kendall tau {s['kendall_tau']:.3f}, Spearman {s['spearman']:.3f} ({len(test)} subnets)"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
