"""Accuracy of a subnet: extract it, recalibrate its BN statistics, score it on held-out images."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from onceforall.arch import Arch
from onceforall.train.bn import set_running_statistics
from onceforall.train.distributed import World, all_reduce_sum

Loader = Callable[[int], object]  # resolution -> an iterable of (images, labels)
SINGLE = World()


@torch.no_grad()
def accuracy(model: nn.Module, batches, world: World = SINGLE) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy over `batches`, summed across ranks."""
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    for images, labels in batches:
        if len(labels) == 0:
            continue
        logits = model(images).float()
        totals[0] += (logits.argmax(1) == labels).sum()
        totals[1] += F.cross_entropy(logits, labels, reduction="sum")
        totals[2] += len(labels)
    totals = all_reduce_sum(totals, world).cpu()
    if totals[2] == 0:
        raise ValueError("no images to evaluate on")
    return (100 * totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


class SubnetEvaluator:
    """Scores archs of a supernet: BN recalibrated on cached training batches, accuracy on `eval_loader`.

    `calibration_loader(r)` gives image batches and `eval_loader(r)` (images, labels) batches at
    resolution r; the calibration batches are kept per resolution and reused (as the original does).
    """

    def __init__(
        self, net: nn.Module, calibration_loader: Loader, eval_loader: Loader, world: World = SINGLE
    ):
        self.net = net
        self.calibration_loader = calibration_loader
        self.eval_loader = eval_loader
        self.world = world
        self._calibration: dict[int, list[torch.Tensor]] = {}

    def calibration_batches(self, resolution: int) -> list[torch.Tensor]:
        if resolution not in self._calibration:
            self._calibration[resolution] = list(self.calibration_loader(resolution))
        return self._calibration[resolution]

    def subnet(self, arch: Arch) -> nn.Module:
        """The extracted subnet of `arch` with recalibrated BN statistics, in eval mode."""
        self.net.set_arch(arch)
        subnet = self.net.get_active_subnet().to(memory_format=torch.channels_last)
        return self.recalibrate(subnet, arch.image_size)

    def recalibrate(self, model: nn.Module, resolution: int) -> nn.Module:
        """Set `model`'s BN statistics from the calibration batches at `resolution`; eval mode."""
        set_running_statistics(model, self.calibration_batches(resolution))
        return model.eval()

    def __call__(self, arch: Arch) -> tuple[float, float]:
        """(top-1 %, loss) of `arch` at its resolution."""
        return accuracy(self.subnet(arch), self.eval_loader(arch.image_size), self.world)
