"""Training-step speed with glibc's default malloc vs `onceforall.allocator.reuse_freed_memory()`.

Each measurement runs in a fresh process (malloc settings are per process): forward + backward + fused
SGD of the supernet on CPU, at the max and the min arch: by default the w1.0 ImageNet supernet at 64 px,
batch 64; with --recipe the supernet, batch and largest resolution of a training recipe (1-channel,
10-class input as Fashion-MNIST's). Processes alternate (default, tuned, tuned, default, ...) so machine
noise hits both alike; reported are the medians over rounds of each process's median step time, and
the page faults per step.

    .venv/bin/python bench/allocator.py [--rounds 3] [--steps 5]
    .venv/bin/python bench/allocator.py --recipe configs/fashion_mnist.yaml
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from onceforall import OFAMobileNetV3
from onceforall.allocator import reuse_freed_memory
from onceforall.train import load_recipe
from onceforall.train.trainer import build_supernet

LISTS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


def measure(arch_name: str, tuned: bool, args: argparse.Namespace) -> dict:
    """Median step time and mean minor page faults per step of one process."""
    applied = reuse_freed_memory() if tuned else None
    torch.manual_seed(0)
    if args.recipe:
        recipe = load_recipe(args.recipe)
        net, batch, size = build_supernet(recipe, 10, 1), recipe.data.batch_size, max(recipe.data.resolutions)
    else:
        net, batch, size = OFAMobileNetV3(n_classes=1000, dropout_rate=0, **LISTS), 64, 64
    net = net.to(memory_format=torch.channels_last)
    space = net.search_space()
    net.set_arch(space.max_arch() if arch_name == "max" else space.min_arch())
    x = torch.randn(batch, net.in_channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, net.n_classes, (batch,))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, fused=True)
    times, faults = [], 0
    for i in range(args.steps + 1):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {"seconds": statistics.median(times), "faults": faults / args.steps, "applied": applied}


def in_child(arch_name: str, tuned: bool, argv: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", arch_name, *argv]
    output = subprocess.run(
        command + (["--tuned"] if tuned else []), capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--recipe", help="a training recipe YAML: its supernet, batch and largest resolution")
    parser.add_argument("--child", choices=["max", "min"], help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tuned, args)))
        return

    argv = [f"--steps={args.steps}"] + ([f"--recipe={args.recipe}"] if args.recipe else [])
    workload = f"the supernet of {args.recipe}" if args.recipe else "w1.0 supernet, batch 64, 64 px"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {workload}")
    header = f"{'arch':>5} {'default ms':>11} {'tuned ms':>9} {'speed-up':>9} {'faults/step default':>20} {'tuned':>7}"
    print(header + "\n" + "-" * len(header))
    for arch_name in ("max", "min"):
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for tuned in (False, True) if round_ % 2 == 0 else (True, False):
                runs[tuned].append(in_child(arch_name, tuned, argv))
        if not all(r["applied"] for r in runs[True]):
            sys.exit("the malloc settings did not apply here (not glibc, or MALLOC_* variables are set)")
        ms = {k: 1e3 * statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        faults = {k: statistics.median(r["faults"] for r in v) for k, v in runs.items()}
        print(
            f"{arch_name:>5} {ms[False]:>11.1f} {ms[True]:>9.1f} {ms[False] / ms[True]:>8.2f}x"
            f" {faults[False]:>20,.0f} {faults[True]:>7,.0f}"
        )


if __name__ == "__main__":
    main()
