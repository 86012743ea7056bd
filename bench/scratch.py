"""Issue #23 item 3: subnets trained alone against the same subnets taken from the PS supernet.

A from-scratch run is a supernet file whose choice lists hold one value each (configs/ablation/
scratch_*.yaml): that one subnet, trained alone with arm (a)'s data, augmentation and total epochs.
For each, the same architecture (uniform kernel K, expand E, depth D) is taken from arm (a)'s supernet.
All are scored as bench/ablation.py scores: 28 px, BN recalibrated on --calibration-images training
images, the first --images test images. The supernet's copy is also scored after the distilled
fine-tune of `ofa specialize --finetune-epochs` (teacher: the supernet's largest subnet).

    .venv/bin/python bench/scratch.py --supernet runs/ablation/ps/supernet.pt \
        --scratch runs/ablation/scratch_min/supernet.pt --scratch runs/ablation/scratch_mid/supernet.pt ...
    .venv/bin/python bench/scratch.py --markdown
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from onceforall.arch import Arch
from onceforall.cost import count_macs
from onceforall.registry import LoadedSupernet, load_supernet
from onceforall.specialize.finetune import distilling_finetuner
from onceforall.train.evaluate import accuracy
from onceforall.workflow.data import dataset_evaluator, supernet_data, training_loader

ROOT = Path(__file__).resolve().parents[1]


def scorer(loaded: LoadedSupernet, args: argparse.Namespace):
    """(evaluator, source) of a supernet: scores on the first `--images` test images, as bench/ablation.py."""
    source = supernet_data(loaded)
    source.calibration.update(images=args.calibration_images, batch=min(250, args.calibration_images))
    evaluator, n = dataset_evaluator(loaded, source, "test", args.device, limit=args.images)
    return evaluator, source, n


def uniform(loaded: LoadedSupernet, k: int, e: float, d: int, size: int) -> Arch:
    """Kernel k, expand e in every block and depth d in every stage of `loaded`'s space."""
    space = loaded.net.search_space()
    base = space.max_arch(size)
    arch = Arch(
        space=space.name, image_size=size, d=(d,) * len(base.d), e=(e,) * len(base.e), ks=(k,) * len(base.ks)
    )
    return space.validate(arch)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    supernet = load_supernet(args.supernet)
    evaluator, source, n_images = scorer(supernet, args)
    tune = distilling_finetuner(
        evaluator,
        training_loader(source, args.device, args.seed),
        args.finetune_epochs,
        args.finetune_lr,
        args.seed,
        progress=False,
    )
    rows = []
    for path in args.scratch:
        alone = load_supernet(path)
        net = alone.net
        k, e, d = net.ks_list, net.expand_ratio_list, net.depth_list
        if len(k) != 1 or len(e) != 1 or len(d) != 1:
            raise SystemExit(
                f"{path}: not one subnet (ks {k}, expand {e}, depth {d}); train a scratch_*.yaml recipe"
            )
        started = time.perf_counter()
        alone_eval, _, _ = scorer(alone, args)
        alone_arch = alone.net.search_space().max_arch(args.resolution)
        scratch_top1, _ = alone_eval(alone_arch)
        arch = uniform(supernet, k[0], e[0], d[0], args.resolution)
        ofa_top1, _ = evaluator(arch)
        subnet = evaluator.subnet(arch)
        losses = tune(subnet, arch)
        tuned_top1, _ = accuracy(subnet, evaluator.eval_loader(arch.image_size))
        macs = int(count_macs(supernet.net.search_space(), arch))
        assert macs == int(count_macs(alone.net.search_space(), alone_arch)), "not the same architecture"
        rows.append(
            {
                "ks": k[0],
                "e": e[0],
                "d": d[0],
                "macs": macs,
                "scratch": str(path),
                "scratch_top1": scratch_top1,
                "ofa_top1": ofa_top1,
                "ofa_finetuned_top1": tuned_top1,
                "finetune_losses": losses,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(
            f"K{k[0]} E{e[0]:g} D{d[0]} ({macs / 1e6:.1f} M MACs): scratch {scratch_top1:.2f}, "
            f"from the supernet {ofa_top1:.2f}, fine-tuned {tuned_top1:.2f}",
            flush=True,
        )
    settings = {
        key: getattr(args, key)
        for key in ("images", "calibration_images", "resolution", "finetune_epochs", "finetune_lr", "seed")
    }
    return {"supernet": str(args.supernet), "images": n_images, "settings": settings, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"| subnet | MACs | trained alone | from the PS supernet | + fine-tune ({s['finetune_epochs']} epochs) "
        "| supernet - alone | fine-tuned - alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| K{r['ks']} E{r['e']:g} D{r['d']} | {r['macs'] / 1e6:.1f} M | {r['scratch_top1']:.2f} | "
            f"{r['ofa_top1']:.2f} | {r['ofa_finetuned_top1']:.2f} | {r['ofa_top1'] - r['scratch_top1']:+.2f} | "
            f"{r['ofa_finetuned_top1'] - r['scratch_top1']:+.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", type=Path, help="arm (a)'s supernet file")
    parser.add_argument(
        "--scratch", type=Path, action="append", default=[], help="a from-scratch run's supernet.pt"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/scratch.json")
    parser.add_argument("--markdown", action="store_true", help="print the table of --out as Markdown")
    parser.add_argument("--images", type=int, default=5000, help="test images scored (the first N)")
    parser.add_argument("--calibration-images", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.scratch:
        if args.supernet is None:
            parser.error("--scratch needs --supernet (arm (a)'s supernet file)")
        results = compare(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
