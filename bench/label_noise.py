"""Issue #23 item 4: how much of a subnet's held-out top-1 is counting noise, and how much of its loss?

Scores `--subnets` random subnets of the shipped supernet on all 5,000 held-out images, keeping each
image's correctness and loss, then splits the images at random into two halves again and again: the
correlation across subnets between the two halves' scores (split-half reliability) says how much of
a score is the subnet and how much the images it happened to see; the Spearman-Brown formula carries
it to the whole set.

    .venv/bin/python bench/label_noise.py --collect 40      # about 10 minutes on one core
    .venv/bin/python bench/label_noise.py                    # the analysis of runs/label_noise.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import kendalltau, pearsonr, spearmanr

from onceforall.registry import load_supernet
from onceforall.workflow.data import dataset_evaluator, supernet_data

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "runs" / "label_noise.pt"


def collect(n: int, seed: int) -> None:
    loaded = load_supernet("ofa_mbv3_fashion_mnist")
    space = loaded.net.search_space()
    evaluator, _ = dataset_evaluator(loaded, supernet_data(loaded), "holdout", None)
    correct, losses = [], []
    for i, arch in enumerate(space.decode(space.sample(n, torch.Generator().manual_seed(seed)))):
        subnet = evaluator.subnet(arch)
        hits, loss = [], []
        with torch.no_grad():
            for images, labels in evaluator.eval_loader(arch.image_size):
                logits = subnet(images).float()
                hits.append(logits.argmax(1) == labels)
                loss.append(F.cross_entropy(logits, labels, reduction="none"))
        correct.append(torch.cat(hits))
        losses.append(torch.cat(loss))
        print(f"{i + 1}/{n}", flush=True)
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"correct": torch.stack(correct), "loss": torch.stack(losses)}, ROWS)


def split_half(scores: torch.Tensor, half: int, repeats: int, generator: torch.Generator) -> dict[str, float]:
    """Mean over random image splits of the across-subnet correlation of two disjoint halves."""
    r, tau, gap = [], [], []
    for _ in range(repeats):
        order = torch.randperm(scores.shape[1], generator=generator)
        a, b = scores[:, order[:half]].mean(1), scores[:, order[half : 2 * half]].mean(1)
        r.append(pearsonr(a, b).statistic)
        tau.append(kendalltau(a, b).statistic)
        gap.append(float((a - b).std()))
    mean_r = sum(r) / repeats
    return {
        "images": half,
        "split_half_r": mean_r,
        "split_half_tau": sum(tau) / repeats,
        # The per-subnet noise of one half's score: the two halves' difference has twice its variance.
        "noise_sd": sum(gap) / repeats / 2**0.5,
        "reliability_at_twice": 2 * mean_r / (1 + mean_r),
    }


def analyze(repeats: int) -> dict:
    rows = torch.load(ROWS, weights_only=True)
    correct, loss = rows["correct"].double() * 100, rows["loss"].double()
    generator = torch.Generator().manual_seed(0)
    n_images = correct.shape[1]
    top1 = correct.mean(1)
    return {
        "subnets": correct.shape[0],
        "images": n_images,
        "top1_range": [float(top1.min()), float(top1.max())],
        "top1_sd": float(top1.std()),
        "top1": [split_half(correct, h, repeats, generator) for h in (1000, 2000, 2500)],
        "loss": [split_half(loss, h, repeats, generator) for h in (1000, 2000, 2500)],
        "spearman_top1_vs_loss": float(spearmanr(top1, -loss.mean(1)).statistic),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", type=int, help="score this many random subnets first")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50, help="random image splits")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/label_noise.json")
    args = parser.parse_args()
    if args.collect:
        collect(args.collect, args.seed)
    results = analyze(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for kind in ("top1", "loss"):
        for row in results[kind]:
            print(
                f"{kind} on {row['images']} images: split-half r {row['split_half_r']:.3f}, noise sd "
                f"{row['noise_sd']:.3f}, reliability at {2 * row['images']} {row['reliability_at_twice']:.3f}"
            )
    print(f"Spearman(top-1, -loss) on all {results['images']} images: {results['spearman_top1_vs_loss']:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
