"""Fine-tune an extracted subnet for a few epochs, distilling from the supernet's largest subnet.

Subnets are accurate as extracted; the paper also reports specialized subnets fine-tuned for some
epochs, which recovers a little more. Optional in `ofa specialize` (`--finetune-epochs`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from onceforall.arch import Arch
from onceforall.data import FolderLoader, TensorLoader
from onceforall.progress import progress_bar
from onceforall.train.evaluate import SubnetEvaluator
from onceforall.train.schedule import learning_rate
from onceforall.train.step import distillation_loss
from onceforall.train.trainer import parameter_groups, sgd

Loader = TensorLoader | FolderLoader


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    loader: Loader,
    epochs: int,
    lr: float,
    *,
    weight_decay: float = 3e-5,
    momentum: float = 0.9,
    label_smoothing: float = 0.1,
    kd_ratio: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train `student` in place with SGD, cosine schedule and `CE_ls + kd_ratio * CE(student, teacher)`.

    `teacher` (frozen, eval mode) may be None for plain label training. The student is left in eval
    mode with the BN running statistics of its training batches. Returns the mean loss per epoch.
    """
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    optimizer = sgd(parameter_groups(student, weight_decay), lr, momentum)
    steps_per_epoch, losses = len(loader), []
    torch.manual_seed(seed)  # dropout
    student.train()
    with progress_bar(progress) as bar:
        task = bar.add_task("fine-tune", total=epochs * steps_per_epoch)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            total = 0.0
            for batch, (images, labels) in enumerate(loader):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(epoch * steps_per_epoch + batch, steps_per_epoch, epochs, lr)
                logits = student(images).float()
                target = None
                if teacher is not None and kd_ratio > 0:
                    with torch.no_grad():
                        target = F.softmax(teacher(images).float(), dim=1)
                loss = distillation_loss(
                    logits, labels, target, label_smoothing=label_smoothing, kd_ratio=kd_ratio
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total = total + loss.detach()  # no host sync per step
                bar.advance(task)
            losses.append(float(total) / max(1, steps_per_epoch))
    student.eval()
    return losses


def distilling_finetuner(
    evaluator: SubnetEvaluator,
    loader: Callable[[int], Loader],
    epochs: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
) -> Callable[[nn.Module, Arch], list[float]]:
    """`(subnet, arch) -> losses` for `ofa specialize`: fine-tune at the arch's resolution with the
    supernet's largest subnet as teacher, then recalibrate BN as for any extracted subnet."""
    space = evaluator.net.search_space()

    def tune(subnet: nn.Module, arch: Arch) -> list[float]:
        teacher = evaluator.subnet(space.max_arch(arch.image_size))
        losses = finetune(subnet, teacher, loader(arch.image_size), epochs, lr, seed=seed, progress=progress)
        evaluator.recalibrate(subnet, arch.image_size)
        return losses

    return tune
