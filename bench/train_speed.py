"""Progressive-shrinking step speed: our trainer's step vs the same step on the official model, side by side.

Kernel phase as in the paper: a teacher forward (the max subnet, train-mode BN, no grad) then 2 subnets
per step (elastic kernel, max depth and expand), KD + label-smoothed CE, one SGD step. Both run the same
sampled arch sequence, batch and resolution on CPU; ours in channels_last, the official as it ships.
Steps are interleaved so machine noise hits both alike; both run under the malloc settings of `ofa train`
(onceforall.allocator) unless --default-malloc.

    .venv/bin/python bench/train_speed.py [--steps 6] [--batch 64] [--size 64] [--default-malloc]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from onceforall import OFAMobileNetV3
from onceforall.allocator import reuse_freed_memory
from onceforall.train.step import accumulate_gradients
from onceforall.train.trainer import parameter_groups, sgd

from ofa_reference import available, import_ofa

LISTS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


def kernel_phase_subnets(n_blocks: int, steps: int, per_step: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [
        [{"ks": [rng.choice([3, 5, 7]) for _ in range(n_blocks)], "e": 6, "d": 4} for _ in range(per_step)]
        for _ in range(steps)
    ]


def make_teacher(net: torch.nn.Module) -> torch.nn.Module:
    net.set_max_net()
    teacher = net.get_active_subnet()
    return teacher.requires_grad_(False).train()


def time_step(net, teacher, optimizer, x, y, subnets) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    accumulate_gradients(net, teacher, x, y, subnets)
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc settings")
    args = parser.parse_args()
    malloc = (
        "glibc default malloc" if args.default_malloc or not reuse_freed_memory() else "ofa's malloc settings"
    )
    if not available():
        sys.exit("the official package is not installed: run `make reference` first")
    torch.manual_seed(0)
    ours = OFAMobileNetV3(n_classes=1000, **LISTS).to(memory_format=torch.channels_last)
    official = import_ofa().OFAMobileNetV3(n_classes=1000, dropout_rate=0.1, **LISTS)
    official.load_state_dict(ours.state_dict())
    runs = {
        "onceforall": (ours, make_teacher(ours).to(memory_format=torch.channels_last), torch.channels_last),
        "official": (official, make_teacher(official), torch.contiguous_format),
    }
    optimizers = {  # each trainer's own: ours uses the fused kernel, the original the default loop
        "onceforall": sgd(parameter_groups(ours, 3e-5), lr=1e-3),
        "official": torch.optim.SGD(parameter_groups(official, 3e-5), lr=1e-3, momentum=0.9, nesterov=True),
    }
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    schedule = kernel_phase_subnets(20, args.steps + 1, 2)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i, subnets in enumerate(schedule):
        for name, (net, teacher, memory_format) in runs.items():
            t = time_step(
                net, teacher, optimizers[name], x.contiguous(memory_format=memory_format), y, subnets
            )
            if i:  # the first step warms up
                times[name].append(t)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size} px, "
        f"kernel phase: teacher + 2 subnets per step, {args.steps} steps, {malloc}"
    )
    speed = {name: args.batch / statistics.median(t) for name, t in times.items()}
    for name, ips in speed.items():
        print(f"{name:>11}: {ips:7.1f} images/s (median step {1e3 * args.batch / ips:.0f} ms)")
    print(f"speed-up: {speed['onceforall'] / speed['official']:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
