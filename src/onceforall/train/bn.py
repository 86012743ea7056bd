"""BN recalibration: exact running statistics of a subnet on a few batches (`set_running_statistics`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from onceforall.nn.dynamic import DynamicBatchNorm2d


@torch.no_grad()
def set_running_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Replace the running mean/var of every active BN channel by its average over `batches`.

    Works on supernets and extracted subnets alike: only the channels a BN actually sees are
    written (a supernet's other channels keep their values). Each batch weighs the same; the
    variance is PyTorch's unbiased estimate.
    """
    bns: dict[nn.BatchNorm2d, int] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        bn = module.bn if isinstance(module, DynamicBatchNorm2d) else module
        bns[bn] = inputs[0].shape[1]

    targets = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, DynamicBatchNorm2d))]
    plain = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = {
        bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
        for bn in plain
    }
    modes = {m: m.training for m in model.modules()}
    hooks = [m.register_forward_pre_hook(record) for m in targets]
    completed = False
    try:
        model.eval()
        for bn in plain:
            bn.train()
            bn.reset_running_stats()
            bn.momentum = None
        seen = 0
        for images in batches:
            model(images)
            seen += 1
        if seen == 0:
            raise ValueError("set_running_statistics needs at least one batch")
        completed = True
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
        for bn, (mean, var, count, momentum) in saved.items():
            active = bns.get(bn, 0) if completed else 0
            bn.running_mean[active:] = mean[active:]
            bn.running_var[active:] = var[active:]
            bn.num_batches_tracked.copy_(count)
            bn.momentum = momentum
