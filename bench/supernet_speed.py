"""Training-step speed of the supernet vs its extracted subnet vs the official supernet, side by side.

For the max, the min and random archs: images/s of forward + backward + SGD step at 64 px,
batch 64, on CPU, for (a) our supernet (channels_last), (b) our extracted static subnet
(channels_last) and (c) the official `ofa` supernet at the same arch. The variants take
turns (two steps each, the second timed) so machine noise hits them alike; each reports its median.
All three run under the malloc settings of `ofa` (onceforall.allocator) unless --default-malloc.

    .venv/bin/python bench/supernet_speed.py [--archs 5] [--steps 6] [--default-malloc]
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
from onceforall.allocator import reuse_freed_memory

LISTS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


def official_supernet() -> nn.Module | None:
    import ofa_reference

    if not ofa_reference.available():
        return None
    networks = ofa_reference.import_ofa("ofa.imagenet_classification.elastic_nn.networks")
    return networks.OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=1.0, **LISTS)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds for one forward + backward + SGD step."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def interleaved_step_times(variants: dict, y: torch.Tensor, steps: int) -> dict[str, float]:
    """Median step time per variant; the variants take turns, two steps each, timing the second.

    Every timed step follows a step of the same model, as in training (warm caches and allocator),
    and machine noise hits all variants alike. (a) and (b) step the fused SGD of our trainer, (c) the
    default loop of the original.
    """
    optimizers = {
        key: torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=key != "c")
        for key, (model, _) in variants.items()
    }
    times: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(steps):
        for key, (model, x) in variants.items():
            model.train()
            train_step(model, optimizers[key], x, y)
            times[key].append(train_step(model, optimizers[key], x, y))
    return {key: statistics.median(v) for key, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", type=int, default=5, help="random archs besides max and min")
    parser.add_argument(
        "--steps", type=int, default=6, help="timed steps per variant and arch (each after an untimed one)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc settings")
    args = parser.parse_args()
    malloc = (
        "glibc default malloc" if args.default_malloc or not reuse_freed_memory() else "ofa's malloc settings"
    )
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
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size} px, {malloc}"
    )
    header = f"{'arch':>9} {'(a) supernet':>13} {'(b) subnet':>11} {'(c) official':>13} {'a/b time':>9} {'a vs c':>7}"
    print(header + "\n" + "-" * len(header))
    ratios_ab, ratios_ac = [], []
    for name, arch in archs:
        ours.set_arch(arch)
        subnet = ours.get_active_subnet().to(memory_format=torch.channels_last)
        if reference is not None:
            reference.set_active_subnet(**arch.subnet_kwargs())
        variants = {"a": (ours, x_cl), "b": (subnet, x_cl)}
        if reference is not None:
            variants["c"] = (reference, x)
        t = interleaved_step_times(variants, y, args.steps)
        t.setdefault("c", float("nan"))
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
