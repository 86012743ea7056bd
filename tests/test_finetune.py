"""Fine-tuning an extracted subnet with distillation."""

import copy

import torch
import torch.nn as nn

from onceforall.data import TensorLoader
from onceforall.specialize.finetune import finetune
from onceforall.train.evaluate import accuracy


def brightness_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark, grey or bright images: learnable in a few steps, not by a random init."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    base = torch.tensor([40, 128, 215])[labels].view(n, 1, 1, 1)
    noise = torch.randint(-30, 31, (n, 1, 8, 8), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def loader(train: bool) -> TensorLoader:
    images, labels = brightness_classes(256, seed=0 if train else 1)
    return TensorLoader(images, labels, 32, (0.5,), (0.25,), train=train, scale=(0.8, 1.0))


def test_finetune_learns_and_leaves_the_student_in_eval_mode():
    student = small_net()
    before, _ = accuracy(student, loader(train=False))
    losses = finetune(student, None, loader(train=True), epochs=3, lr=0.2)
    after, _ = accuracy(student, loader(train=False))
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert after > 95 and before < 70
    assert not student.training


def test_distillation_pulls_the_student_towards_the_teacher():
    teacher = small_net()
    finetune(teacher, None, loader(train=True), epochs=3, lr=0.2)
    # Labels that disagree with the teacher everywhere: with kd_ratio 0 the student follows them,
    # with a large kd_ratio it follows the teacher.
    images, labels = brightness_classes(256, seed=0)
    flipped = TensorLoader(images, (labels + 1) % 3, 32, (0.5,), (0.25,), train=True, scale=(0.8, 1.0))
    agreement = {}
    for kd_ratio in (0.0, 20.0):
        student = small_net()
        finetune(student, copy.deepcopy(teacher), flipped, epochs=3, lr=0.2, kd_ratio=kd_ratio)
        agreement[kd_ratio], _ = accuracy(student, loader(train=False))
    assert agreement[0.0] < 10 and agreement[20.0] > 60
