"""Training strategies of issue #23: in-place distillation (sandwich + the largest's soft targets), the
one distillation loss, `init` (start from a supernet file) and the ablation recipes in configs/ablation/."""

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_train import TINY, needs_data

from onceforall import ConfigError, OFAMobileNetV3
from onceforall.train import Trainer, load_recipe, recipe_from_dict, save_supernet
from onceforall.train import trainer as trainer_module
from onceforall.train.step import accumulate_gradients, distillation_loss
from onceforall.train.trainer import effective_phases

ROOT = Path(__file__).resolve().parents[1]
ELASTIC = {"ks": [3, 5, 7], "expand": [3, 4, 6], "depth": [2, 3, 4]}
INPLACE = {
    "name": "inplace",
    "epochs": 1,
    "lr": 0.01,
    **ELASTIC,
    "subnets_per_step": 3,
    "sandwich": True,
    "inplace_distill": True,
    "distill": False,
}


# ---------------------------------------------------------------------- recipe checks
@pytest.mark.parametrize(
    ("phase", "extra", "message"),
    [
        ({"sandwich": False}, {}, r"phases\[0\] \(inplace\): inplace_distill: true .* add sandwich: true"),
        ({"distill": True}, {}, r"phases\[0\] \(inplace\): inplace_distill: true .* set distill: false"),
        ({}, {"no_progressive_shrinking": True}, r"cannot be combined with no_progressive_shrinking"),
        ({}, {"init": " "}, r"init is empty"),
        ({}, {"init": 3}, r"init must be str, got 3"),
    ],
)
def test_strategy_keys_are_checked(phase, extra, message):
    recipe = {**copy.deepcopy(TINY), **extra, "phases": [{**INPLACE, **phase}]}
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(recipe)


def test_init_with_no_progressive_shrinking_merges_every_phase():
    """With `init` the recipe has no teacher phase: all its phases become the one elastic phase."""
    recipe = recipe_from_dict(
        {
            **copy.deepcopy(TINY),
            "init": "x.pt",
            "no_progressive_shrinking": True,
            "phases": TINY["phases"][1:],
        }
    )
    (merged,) = effective_phases(recipe)
    assert merged.name == "all-elastic" and merged.epochs == 2 and merged.subnets_per_step == 2
    assert merged.ks == [3, 5, 7] and merged.expand == [3, 4, 6] and merged.depth == [2, 3, 4]
    assert merged.distill and not merged.sandwich and not merged.inplace_distill


def test_ablation_recipes_share_teacher_data_and_epochs():
    """The three arms start from the same teacher file, train on the same data for the same epochs."""
    teacher = load_recipe(ROOT / "configs/ablation/teacher.yaml")
    arms = {name: load_recipe(ROOT / f"configs/ablation/{name}.yaml") for name in ("ps", "no_ps", "inplace")}
    assert teacher.init is None and [p.distill for p in teacher.phases] == [False]
    for name, arm in arms.items():
        assert arm.init == "runs/ablation/teacher/supernet.pt", name
        assert (arm.net, arm.data, arm.seed) == (teacher.net, teacher.data, teacher.seed), name
    epochs = {name: sum(p.epochs + p.warmup_epochs for p in effective_phases(a)) for name, a in arms.items()}
    assert epochs == {"ps": 5, "no_ps": 5, "inplace": 5}
    assert [p.name for p in effective_phases(arms["no_ps"])] == ["all-elastic"]
    (inplace,) = effective_phases(arms["inplace"])
    assert inplace.inplace_distill and inplace.sandwich and not inplace.distill


def test_scratch_recipes_train_one_corner_with_the_arms_data_and_total_epochs():
    """Issue #23 item 3: each trains one subnet alone, on arm (a)'s data, for the teacher's + the arm's epochs."""
    teacher = load_recipe(ROOT / "configs/ablation/teacher.yaml")
    ps = load_recipe(ROOT / "configs/ablation/ps.yaml")
    total = sum(p.epochs + p.warmup_epochs for p in (*teacher.phases, *effective_phases(ps)))
    corners = {"min": (3, 3, 2), "mid": (5, 4, 3), "max": (7, 6, 4)}
    for name, (k, e, d) in corners.items():
        scratch = load_recipe(ROOT / f"configs/ablation/scratch_{name}.yaml")
        assert (scratch.net.ks_list, scratch.net.expand_ratio_list, scratch.net.depth_list) == ([k], [e], [d])
        assert replace(scratch.net, ks_list=None, expand_ratio_list=None, depth_list=None) == replace(
            teacher.net, ks_list=None, expand_ratio_list=None, depth_list=None
        )
        assert (scratch.data, scratch.seed, scratch.init) == (teacher.data, teacher.seed, None), name
        assert sum(p.epochs + p.warmup_epochs for p in scratch.phases) == total == 11
        assert [p.distill for p in scratch.phases] == [False]


# ---------------------------------------------------------------------- the loss
def test_distillation_loss_is_label_smoothed_ce_plus_soft_ce():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    soft = F.softmax(torch.randn(5, 4), dim=1)
    smoothed = 0.9 * F.one_hot(labels, 4) + 0.1 / 4
    log_p = F.log_softmax(logits, dim=1)
    by_hand = -(smoothed * log_p).sum(1).mean() - 0.5 * (soft * log_p).sum(1).mean()
    got = distillation_loss(logits, labels, soft, label_smoothing=0.1, kd_ratio=0.5)
    torch.testing.assert_close(got, by_hand)
    labels_only = distillation_loss(logits, labels, None, label_smoothing=0.1)
    torch.testing.assert_close(labels_only, -(smoothed * log_p).sum(1).mean())
    torch.testing.assert_close(distillation_loss(logits, labels, soft, kd_ratio=0.0), labels_only)


# ---------------------------------------------------------------------- in-place distillation
class Prefix(nn.Module):
    """logits = x[:, :w] @ W[:, :w].T: subnets share a prefix of the weights, gradients are closed-form."""

    def __init__(self, n_in: int = 6, n_classes: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, n_in))
        self.width = n_in

    def set_active_subnet(self, width: int) -> None:
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.width] @ self.weight[:, : self.width].T


def hand_inplace(net: Prefix, x, y, widths, smoothing, kd_ratio) -> tuple[torch.Tensor, list[float]]:
    """Gradient and per-subnet losses of in-place distillation on one batch, written out by hand:
    d CE(z, t)/dz = (softmax(z) - t) / B for any target distribution t."""
    w, (batch, n_classes) = net.weight.detach(), (len(y), net.weight.shape[0])
    smoothed = (1 - smoothing) * F.one_hot(y, n_classes) + smoothing / n_classes
    grad, losses, soft = torch.zeros_like(w), [], None
    for width in widths:
        z = x[:, :width] @ w[:, :width].T
        p, log_p = F.softmax(z, dim=1), F.log_softmax(z, dim=1)
        dz = (p - smoothed) / batch
        loss = -(smoothed * log_p).sum(1).mean()
        if soft is not None:
            dz = dz + kd_ratio * (p - soft) / batch
            loss = loss - kd_ratio * (soft * log_p).sum(1).mean()
        else:
            soft = p  # the largest (first) subnet's softmax, a constant for the others
        grad[:, :width] += dz.T @ x[:, :width]
        losses.append(loss.item())
    return grad, losses


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_inplace_distillation_gradient_matches_a_hand_computation(micro_batches):
    torch.manual_seed(0)
    net, x, y = Prefix(), torch.randn(8, 6), torch.randint(0, 4, (8,))
    widths = [6, 2, 4]  # largest first, then the smallest and a random one, as a sandwich step orders them
    loss = accumulate_gradients(
        net,
        None,
        x,
        y,
        [{"width": w} for w in widths],
        label_smoothing=0.1,
        kd_ratio=0.7,
        micro_batches=micro_batches,
        inplace_distill=True,
    )
    # Each micro-batch (sample i -> i mod m) has its own soft targets; its loss is scaled by 1/m.
    grad, losses = torch.zeros_like(net.weight), []
    for m in range(micro_batches):
        g, ls = hand_inplace(net, x[m::micro_batches], y[m::micro_batches], widths, 0.1, 0.7)
        grad, losses = grad + g / micro_batches, losses + [v / micro_batches for v in ls]
    torch.testing.assert_close(net.weight.grad, grad)
    assert loss == pytest.approx(sum(losses) / len(widths), rel=1e-6)


def test_inplace_distillation_largest_learns_from_labels_only():
    """The largest's gradient is that of label CE alone: no soft term, and none from the students."""
    torch.manual_seed(1)
    net, x, y = Prefix(), torch.randn(8, 6), torch.randint(0, 4, (8,))
    accumulate_gradients(net, None, x, y, [{"width": 6}], label_smoothing=0.1, inplace_distill=True)
    alone = net.weight.grad.clone()
    net.weight.grad = None
    F.cross_entropy(net(x), y, label_smoothing=0.1).backward()
    torch.testing.assert_close(alone, net.weight.grad)
    # Columns only the largest uses (4, 5) get exactly that gradient in a full step too: the soft
    # targets are detached, so the students' KD terms add nothing there.
    net.weight.grad = None
    accumulate_gradients(
        net, None, x, y, [{"width": 6}, {"width": 2}, {"width": 4}], kd_ratio=1.0, inplace_distill=True
    )
    torch.testing.assert_close(net.weight.grad[:, 4:], alone[:, 4:])
    assert not torch.allclose(net.weight.grad[:, :4], alone[:, :4])


def test_inplace_distillation_refuses_a_teacher():
    net = Prefix()
    with pytest.raises(ValueError, match="teacher=None"):
        accumulate_gradients(
            net, net, torch.randn(2, 6), torch.tensor([0, 1]), [{"width": 6}], inplace_distill=True
        )


@needs_data
def test_trainer_step_distils_in_place_from_the_phases_largest(tmp_path, monkeypatch):
    recipe = recipe_from_dict({**copy.deepcopy(TINY), "phases": [INPLACE]})
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    calls = []

    def spy(net, teacher, images, labels, subnets, **kwargs):
        calls.append((teacher, subnets, kwargs))
        return accumulate_gradients(net, teacher, images, labels, subnets, **kwargs)

    monkeypatch.setattr(trainer_module, "accumulate_gradients", spy)
    trainer.teacher = trainer._make_teacher()  # present, yet an in-place phase must not use it
    images, labels = next(iter(trainer.loader))
    optimizer = trainer_module.sgd(trainer.net.parameters(), 0.01)
    before = [p.detach().clone() for p in trainer.net.parameters()]
    loss = trainer._step(0, trainer.phases[0], images, labels, optimizer)
    ((teacher, subnets, kwargs),) = calls
    n_blocks, n_stages = len(trainer.net.dynamic_blocks), len(trainer.net.block_group_info)
    assert teacher is None and kwargs["inplace_distill"] is True and len(subnets) == 3
    assert subnets[0] == {"ks": [7] * n_blocks, "e": [6] * n_blocks, "d": [4] * n_stages}
    assert subnets[1] == {"ks": [3] * n_blocks, "e": [3] * n_blocks, "d": [2] * n_stages}
    assert loss > 0 and any(not torch.equal(a, b) for a, b in zip(before, trainer.net.parameters()))


# ---------------------------------------------------------------------- init from a supernet file
def tiny_supernet(width_mult: float = 0.25, seed: int = 1) -> OFAMobileNetV3:
    """TINY's supernet layout with weights other than the seed-0 ones a Trainer builds itself."""
    torch.manual_seed(seed)
    return OFAMobileNetV3(
        n_classes=10,
        width_mult=width_mult,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 2, 1, 1),
        resolutions=(16, 20),
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
        dropout_rate=0.0,
    )


@needs_data
def test_init_starts_from_the_files_weights_and_teaches_with_its_max_subnet(tmp_path):
    source = tiny_supernet()
    save_supernet(source, tmp_path / "teacher.pt")
    recipe = {**copy.deepcopy(TINY), "init": str(tmp_path / "teacher.pt"), "phases": TINY["phases"][1:]}
    trainer = Trainer(recipe_from_dict(recipe), tmp_path / "run", progress=False)
    loaded, own = source.state_dict(), trainer.net.state_dict()
    assert loaded.keys() == own.keys()
    assert all(torch.equal(loaded[k], own[k].cpu()) for k in loaded)
    fresh = Trainer(recipe_from_dict({**recipe, "init": None}), tmp_path / "fresh", progress=False)
    assert not torch.equal(
        fresh.net.state_dict()["classifier.linear.weight"], loaded["classifier.linear.weight"]
    )
    # The first phase distils, and its teacher is the file's max subnet.
    teacher = trainer._make_teacher().eval()
    source.set_max_net()
    expected = source.get_active_subnet().eval()
    x = torch.randn(4, 1, 20, 20)
    torch.testing.assert_close(teacher(x.to(memory_format=torch.channels_last)), expected(x))


@needs_data
def test_init_errors_name_the_file_and_the_fix(tmp_path):
    recipe = {**copy.deepcopy(TINY), "init": str(tmp_path / "missing.pt"), "phases": TINY["phases"][1:]}
    with pytest.raises(ConfigError, match=r"init = '.*missing.pt' does not exist; give a supernet file"):
        Trainer(recipe_from_dict(recipe), tmp_path / "run", progress=False)
    save_supernet(tiny_supernet(width_mult=0.5), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"init = '.*wide.pt' is a different supernet .* same net settings"):
        Trainer(
            recipe_from_dict({**recipe, "init": str(tmp_path / "wide.pt")}), tmp_path / "run", progress=False
        )
