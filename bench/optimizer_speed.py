"""One SGD step over the OFA-MobileNetV3 w1.0 supernet's parameters: PyTorch's default loop, foreach,
and the fused kernel our trainer uses (`train.trainer.sgd`), side by side in one run.

    .venv/bin/python bench/optimizer_speed.py [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from onceforall import OFAMobileNetV3
from onceforall.train.trainer import sgd


def step_ms(optimizer: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(3):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = OFAMobileNetV3(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    params = list(net.parameters())
    for param in params:
        param.grad = torch.randn_like(param)
    settings = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=3e-5)
    optimizers = {
        "loop (default)": torch.optim.SGD(params, **settings),
        "foreach": torch.optim.SGD(params, **settings, foreach=True),
        "fused (ours)": sgd([{"params": params, "weight_decay": 3e-5}], lr=0.01),
    }
    print(f"{sum(p.numel() for p in params):,} parameters, {args.threads} thread(s)")
    times = {name: step_ms(opt, args.steps) for name, opt in optimizers.items()}
    for name, ms in times.items():
        print(f"{name:>15}: {ms:6.2f} ms  ({times['loop (default)'] / ms:.2f}x)")


if __name__ == "__main__":
    main()
