"""Issue #23's training-strategy ablation, scored: test top-1 of the same subnets of each arm's supernet.

For each arm (a supernet file of `ofa train`), after BN recalibration on training images as `ofa eval`
does: the paper's eight corner subnets (depth 2/4 x expand 3/6 x kernel 3/7, uniform over blocks, 28 px)
on the whole test set, and the same `--random` random subnets (uniform per gene, seeded, at 28 px) on
the first `--random-images` test images. Arms are scored one at a time and merged into `--out`, so an
arm can be scored while the next one trains; `--plot` redraws accuracy against MACs from the JSON.

    .venv/bin/python bench/ablation.py --arm ps=runs/ablation/ps/supernet.pt   # then no_ps=..., inplace=...
    .venv/bin/python bench/ablation.py --plot docs/img/ablation.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from onceforall.arch import Arch, SearchSpace
from onceforall.checkpoints import STATE_FORMAT, read_file
from onceforall.cost import count_macs
from onceforall.data import load_dataset
from onceforall.registry import LoadedSupernet, load_supernet
from onceforall.train import recipe_from_dict
from onceforall.train.trainer import build_supernet
from onceforall.workflow.data import dataset_evaluator, supernet_data

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "ps": "(a) progressive shrinking",
    "no_ps": "(b) no PS (uniform)",
    "inplace": "(c) sandwich + in-place KD",
}


def corner_archs(space: SearchSpace, size: int) -> list[Arch]:
    """Depth {2, 4} x expand {3, 6} x kernel {3, 7}, the same choice in every block."""
    base = space.max_arch(size)
    archs = []
    for d, e, k in itertools.product((2, 4), (3, 6), (3, 7)):
        arch = Arch(
            **{**base.__dict__, "d": (d,) * len(base.d), "e": (e,) * len(base.e), "ks": (k,) * len(base.ks)}
        )
        archs.append(space.validate(arch))
    return archs


def random_archs(space: SearchSpace, n: int, seed: int, size: int) -> list[Arch]:
    """`n` subnets drawn uniformly per gene with a fixed seed: the same ones for every arm."""
    drawn = space.decode(space.sample(n, torch.Generator().manual_seed(seed)))
    return [space.validate(Arch(**{**a.__dict__, "image_size": size})) for a in drawn]


def from_training_state(path: Path) -> tuple[LoadedSupernet, dict[str, Any]]:
    """The supernet inside an unfinished run's `checkpoint.pt` (a partial result), and where it stopped."""
    state = read_file(path, "training state")
    recipe = recipe_from_dict(state["recipe"])
    info = load_dataset(recipe.data.name, recipe.data.root)
    net = build_supernet(recipe, info.n_classes, info.in_channels)
    net.load_state_dict(state["model"])
    return LoadedSupernet(net, {"recipe": state["recipe"], "source": str(path)}), state["position"]


def score_arm(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    position = None
    if read_file(path, "supernet or training state").get("format") == STATE_FORMAT:
        loaded, position = from_training_state(path)
    else:
        loaded = load_supernet(path)
    space = loaded.net.search_space()
    source = supernet_data(loaded)
    # The recipes calibrate on a few images to keep per-phase validation cheap; scoring uses more.
    source.calibration.update(images=args.calibration_images, batch=min(250, args.calibration_images))
    full, n_full = dataset_evaluator(loaded, source, "test", args.device, limit=args.corner_images)
    part, n_part = dataset_evaluator(loaded, source, "test", args.device, limit=args.random_images)
    started = time.perf_counter()
    corners = []
    for arch in corner_archs(space, args.resolution):
        top1, _ = full(arch)
        # Also on the random subnets' images: the first test images are easier than the rest, so only
        # scores on the same images share a plot.
        top1_subset, _ = part(arch)
        corners.append(
            {
                "d": arch.d[0],
                "e": arch.e[0],
                "ks": arch.ks[0],
                "macs": int(count_macs(space, arch)),
                "top1": top1,
                "top1_random_images": top1_subset,
            }
        )
        print(f"  {path}: D{arch.d[0]} E{arch.e[0]:g} K{arch.ks[0]}: {top1:.2f} %", flush=True)
    if args.corners_only:
        return {"corners": corners, "corner_images": n_full}
    randoms = []
    for arch in random_archs(space, args.random, args.seed, args.resolution):
        top1, _ = part(arch)
        randoms.append({"macs": int(count_macs(space, arch)), "top1": top1})
    accs = [r["top1"] for r in randoms]
    return {
        "supernet": str(path),
        "partial": position,  # None for a finished run's supernet; else the (phase, epoch, step) reached
        "corners": corners,
        "corner_images": n_full,
        "random": randoms,
        "random_images": n_part,
        "random_summary": {"mean": statistics.fmean(accs), "min": min(accs), "max": max(accs)},
        "seconds": round(time.perf_counter() - started, 1),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (name, arm) in enumerate(results["arms"].items()):
        color = f"C{i}"
        label = LABELS.get(name, name)
        ax.scatter(
            [r["macs"] / 1e6 for r in arm["random"]],
            [r["top1"] for r in arm["random"]],
            s=9,
            alpha=0.45,
            color=color,
            label=f"{label}: {len(arm['random'])} random (first {arm['random_images']} test images)",
        )
        # Corners as markers only: sorted by MACs they zigzag (K7 at depth 2 costs less than K3 at depth 4).
        # Every arm's corners on the same (larger) image set, as in the table.
        ax.scatter(
            [r["macs"] / 1e6 for r in arm["corners"]],
            [r["top1"] for r in arm["corners"]],
            marker="D",
            s=36,
            color=color,
            edgecolors="black",
            linewidths=0.6,
            label=f"{label}: 8 corners (first {arm['corner_images']} test images)",
        )
    ax.set_xlabel("MACs (M), 28 px")
    ax.set_ylabel("test top-1 (%), BN recalibrated")
    ax.set_title("Fashion-MNIST, one shared teacher, equal epochs (issue #23)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    """The corner table and the random-subnet summary, with each arm's lead over arm (b) in points."""
    arms = results["arms"]
    names = list(arms)
    base = "no_ps" if "no_ps" in arms else None
    head = "| D | E | K | MACs | " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    first = arms[names[0]]["corners"]
    for i, c in enumerate(first):
        cells = []
        for n in names:
            top1 = arms[n]["corners"][i]["top1"]
            lead = top1 - arms[base]["corners"][i]["top1"] if base and n != base else None
            cells.append(f"{top1:.2f}" + (f" ({lead:+.2f})" if lead is not None else ""))
        lines.append(
            f"| {c['d']} | {c['e']:g} | {c['ks']} | {c['macs'] / 1e6:.1f} M | " + " | ".join(cells) + " |"
        )
    lines += ["", "| random subnets | " + " | ".join(LABELS.get(n, n) for n in names) + " |"]
    lines.append("|" + "---|" * (1 + len(names)))
    for stat in ("mean", "min", "max"):
        cells = [f"{arms[n]['random_summary'][stat]:.2f}" for n in names]
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    if base:
        cells = []
        for n in names:
            pairs = zip(arms[n]["random"], arms[base]["random"])
            wins = sum(a["top1"] > b["top1"] for a, b in pairs)
            cells.append("-" if n == base else f"{wins} / {len(arms[n]['random'])}")
        lines.append("| beats (b) on the same subnet | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=SUPERNET", help="score one arm")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/ablation.json")
    parser.add_argument("--plot", type=Path, help="draw accuracy against MACs from --out")
    parser.add_argument("--markdown", action="store_true", help="print the tables of --out as Markdown")
    parser.add_argument("--corners-only", action="store_true", help="rescore the corners, keep the rest")
    parser.add_argument("--random", type=int, default=100, help="random subnets per arm")
    parser.add_argument("--random-images", type=int, default=1000, help="test images per random subnet")
    parser.add_argument("--corner-images", type=int, default=None, help="test images per corner (all)")
    parser.add_argument("--calibration-images", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"arms": {}}
    for spec in args.arm:
        name, _, file = spec.partition("=")
        if not file:
            parser.error(f"--arm {spec!r}: expected NAME=SUPERNET, e.g. ps=runs/ablation/ps/supernet.pt")
        results["settings"] = {
            k: getattr(args, k)
            for k in ("random", "random_images", "corner_images", "calibration_images", "resolution", "seed")
        }
        scored = score_arm(Path(file), args)
        results["arms"][name] = {**results["arms"].get(name, {}), **scored}
        summary = results["arms"][name]["random_summary"]
        print(
            f"{name}: random mean {summary['mean']:.2f} (min {summary['min']:.2f}, max {summary['max']:.2f})"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    if args.markdown:
        print(markdown(results))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
