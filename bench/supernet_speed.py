"""Training-step speed of the supernet vs its extracted subnet vs the official supernet, side by side.

For the max, the min and random archs: images/s of forward + backward + SGD step at 64 px,
batch 64, on CPU, for (a) our supernet (channels_last), (b) our extracted static subnet
(channels_last) and (c) the official `ofa` supernet at the same arch. Variants are interleaved
round by round (ABC, CBA, ...) so machine noise hits them alike; each takes its best round.

    .venv/bin/python bench/supernet_speed.py [--archs 5] [--steps 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from onceforall import OFAMobileNetV3

LISTS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


def official_supernet() -> nn.Module | None:
    import ofa_reference

    if not ofa_reference.available():
        return None
    networks = ofa_reference.import_ofa("ofa.imagenet_classification.elastic_nn.networks")
    return networks.OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=1.0, **LISTS)


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, fused: bool) -> float:
    """Seconds per training step (after one warm-up step); our trainer's SGD is the fused one."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=fused)
    model.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", type=int, default=5, help="random archs besides max and min")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)

    ours = OFAMobileNetV3(n_classes=1000, dropout_rate=0, **LISTS).to(memory_format=torch.channels_last)
    reference = official_supernet()
    space = ours.search_space()
    archs = [("max", space.max_arch()), ("min", space.min_arch())]
    archs += [
        (f"random{i}", a)
        for i, a in enumerate(space.decode(space.sample(args.archs, torch.Generator().manual_seed(0))))
    ]

    x = torch.randn(args.batch, 3, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size} px")
    header = f"{'arch':>9} {'(a) supernet':>13} {'(b) subnet':>11} {'(c) official':>13} {'a/b time':>9} {'a vs c':>7}"
    print(header + "\n" + "-" * len(header))
    ratios_ab, ratios_ac = [], []
    for name, arch in archs:
        ours.set_arch(arch)
        subnet = ours.get_active_subnet().to(memory_format=torch.channels_last)
        if reference is not None:
            reference.set_active_subnet(**arch.subnet_kwargs())
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        variants = {"a": (ours, x_cl), "b": (subnet, x_cl)}
        if reference is not None:
            variants["c"] = (reference, x)
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]  # ABC, CBA, ...
            for key in order:
                model, inputs = variants[key]
                times[key].append(step_time(model, inputs, y, args.steps, fused=key != "c"))
        t = {k: min(v) if v else float("nan") for k, v in times.items()}
        ips = {k: args.batch / v for k, v in t.items()}
        ratios_ab.append(t["a"] / t["b"])
        ratios_ac.append(t["c"] / t["a"])
        print(
            f"{name:>9} {ips['a']:>9.1f} i/s {ips['b']:>7.1f} i/s {ips['c']:>9.1f} i/s"
            f" {t['a'] / t['b']:>9.3f} {t['c'] / t['a']:>6.2f}x"
        )
    gmean = lambda v: statistics.geometric_mean(v) if all(r == r for r in v) else float("nan")  # noqa: E731
    print(f"\ngeometric mean: supernet/subnet step time = {gmean(ratios_ab):.3f} (goal <= 1.05)")
    print(f"geometric mean: supernet speed-up over official = {gmean(ratios_ac):.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
