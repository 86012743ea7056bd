"""Progressive shrinking: recipes, schedule, BN recalibration, resume after kill -9, DDP, divergence."""

import copy
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from onceforall import ConfigError, DataError, OFAMobileNetV3
from onceforall.cli import app
from onceforall.train import (
    Trainer,
    TrainingDiverged,
    learning_rate,
    load_recipe,
    load_supernet,
    recipe_from_dict,
    save_supernet,
    set_running_statistics,
)
from onceforall.train.trainer import effective_phases

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
TINY = {
    "seed": 0,
    "net": {"width_mult": 0.25, "first_stride": 1, "stage_strides": [2, 2, 2, 1, 1], "dropout_rate": 0.0},
    "data": {
        "name": "fashion-mnist",
        "limit": 320,
        "holdout": 64,
        "resolutions": [16, 20],
        "crop_scale": [0.35, 1.0],
        "batch_size": 32,
        "eval_batch_size": 64,
    },
    "bn_calibration_images": 64,
    "bn_calibration_batch": 32,
    "checkpoint_every": 2,
    "log_every": 1,
    "phases": [
        {"name": "teacher", "epochs": 1, "lr": 0.1, "distill": False},
        {"name": "kernel", "epochs": 1, "lr": 0.05, "ks": [3, 5, 7]},
        {
            "name": "expand",
            "epochs": 1,
            "lr": 0.05,
            "ks": [3, 7],
            "expand": [4, 6],
            "depth": [2, 4],
            "subnets_per_step": 2,
            "sort_channels": 0,
        },
    ],
}


def write_recipe(path: Path, **changes) -> Path:
    recipe = copy.deepcopy(TINY)
    for key, value in changes.items():
        recipe[key] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# ---------------------------------------------------------------------- recipes and schedule
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochz": 3}, r"unknown key \['epochz'\]"),
        ({"net": {"width": 1.0}}, r"unknown key \['width'\] in net"),
        ({"data": {"batch_size": "64"}}, r"data.batch_size must be int, got '64'"),
        ({"phases": [{"name": "t", "epochs": 1}]}, r"phases\[0\] is missing required key\(s\) \['lr'\]"),
        (
            {"phases": [{"name": "t", "epochs": 1, "lr": 0.1, "ks": [9]}]},
            r"phases\[0\].ks = \[9\] is not a subset",
        ),
        ({"phases": []}, "phases is empty"),
        (
            {"phases": [{"name": "s", "epochs": 1, "lr": 0.1, "sandwich": True}]},
            r"sandwich .* subnets_per_step must be at least 2",
        ),
        (
            {"phases": [{"name": "k", "epochs": 1, "lr": 0.1, "train_largest": True}]},
            r"train_largest .* subnets_per_step must be at least 2",
        ),
        ({"seed": 1.5}, "seed must be int"),
    ],
)
def test_bad_recipes_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({**copy.deepcopy(TINY), **change})


def test_recipe_files_in_configs_are_valid():
    for path in Path(__file__).resolve().parents[1].glob("configs/*.yaml"):
        recipe = load_recipe(path)
        assert recipe.phases[0].distill is False, path


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("phases: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_learning_rate_warmup_then_cosine():
    lr = [learning_rate(s, 10, epochs=2, lr=1.0, warmup_epochs=1, warmup_lr=0.1) for s in range(30)]
    assert lr[0] == pytest.approx(0.1 + 0.9 / 10)
    assert lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    assert lr[20] == pytest.approx(0.5)
    assert lr[29] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in itertools.pairwise(lr[10:]))


def test_no_progressive_shrinking_merges_the_elastic_phases():
    sandwich = {"name": "sandwich", "epochs": 1, "lr": 0.01, "subnets_per_step": 2, "sandwich": True}
    recipe = recipe_from_dict(
        {**copy.deepcopy(TINY), "no_progressive_shrinking": True, "phases": [*TINY["phases"], sandwich]}
    )
    phases = effective_phases(recipe)
    assert [p.name for p in phases] == ["teacher", "all-elastic"]
    assert phases[1].epochs == 3 and phases[1].ks == [3, 5, 7] and phases[1].depth == [2, 3, 4]
    assert not phases[1].sandwich


# ---------------------------------------------------------------------- BN recalibration
def test_set_running_statistics_is_the_average_of_batch_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) for i in range(3)]
    set_running_statistics(model, batches)
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, rtol=1e-4)
    assert model.training and model[1].momentum == 0.1


def test_set_running_statistics_on_a_supernet_writes_only_active_channels(mbv3):
    net = copy.deepcopy(mbv3)
    net.set_active_subnet(ks=3, e=3, d=2)
    bn = net.blocks[1].conv.inverted_bottleneck.bn.bn
    before = bn.running_mean.clone()
    active = net.blocks[1].conv.active_middle_channel(16)
    batches = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    set_running_statistics(net, batches)
    assert torch.equal(bn.running_mean[active:], before[active:])
    assert not torch.equal(bn.running_mean[:active], before[:active])
    subnet = net.get_active_subnet().eval()  # carries the recalibrated statistics
    fresh = copy.deepcopy(mbv3)
    fresh.set_active_subnet(ks=3, e=3, d=2)
    other = fresh.get_active_subnet()
    set_running_statistics(other, batches)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(subnet(x), other.eval()(x), atol=1e-4)


def test_calibration_images_are_a_seeded_sample_preprocessed_as_scored_images():
    from onceforall.data import DatasetInfo
    from onceforall.train.data import calibration_batches

    images = torch.randint(0, 256, (100, 1, 12, 12), dtype=torch.uint8)
    info = DatasetInfo("synthetic", 10, 1, 12, (0.5,), (0.25,))
    source = (images, torch.zeros(100, dtype=torch.long))
    plain = calibration_batches(source, info, 12, 40, 20, (0.3, 1.0), "cpu")
    assert [b.shape for b in plain] == [torch.Size([20, 1, 12, 12])] * 2
    normalised = (images.float() / 255 - 0.5) / 0.25
    picked = torch.cat(plain)
    matches = (picked[:, None] - normalised[None]).abs().amax((2, 3, 4)) < 1e-5
    assert matches.sum(1).eq(1).all() and matches.any(0).sum() == 40  # 40 distinct training images, uncropped
    assert not torch.equal(picked, normalised[:40])  # a shuffled sample, not the first images
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain, calibration_batches(source, info, 12, 40, 20, (0.3, 1.0), "cpu"))
    )
    augmented = torch.cat(calibration_batches(source, info, 12, 40, 20, (0.3, 1.0), "cpu", augment=True))
    assert (
        (augmented[:, None] - normalised[None]).abs().amax((2, 3, 4)) < 1e-5
    ).sum() < 40  # crops and flips


# ---------------------------------------------------------------------- training runs
@needs_data
def test_tiny_run_trains_every_phase_and_evaluates(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml")
    result = CliRunner().invoke(app, ["train", "--config", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert {p.name for p in run.glob("phase*.pt")} == {
        "phase0_teacher.pt",
        "phase1_kernel.pt",
        "phase2_expand.pt",
    }
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("validate") == 3 and events.count("phase_start") == 3
    net, saved = load_supernet(run / "supernet.pt")
    assert net.n_classes == 10 and net.in_channels == 1 and saved["recipe"]["seed"] == 0
    out = CliRunner().invoke(app, ["eval", "--supernet", str(run / "supernet.pt"), "--arch", "min", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert result["image_size"] == 20 and result["images"] == 10000
    assert round(result["top1"] * 100, 6).is_integer()  # a count of correct images out of 10,000
    again = CliRunner().invoke(app, ["train", "--config", str(recipe), "--out", str(run)])
    assert again.exit_code == 2 and "--resume" in again.output


def save_tiny_supernet(path: Path) -> None:
    """An untrained supernet in TINY's layout, saved with TINY's recipe (as `ofa train` would)."""
    torch.manual_seed(0)
    net = OFAMobileNetV3(
        n_classes=10,
        width_mult=0.25,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 2, 1, 1),
        resolutions=(16, 20),
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )
    save_supernet(net, path, recipe=recipe_from_dict(copy.deepcopy(TINY)).to_dict())


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "onceforall", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@needs_data
def test_kill_9_and_resume_ends_with_identical_weights(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", checkpoint_every=1)
    full = run_cli("train", "--config", str(recipe), "--out", str(tmp_path / "full"))
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()

    killed = run_cli("train", "--config", str(recipe), "--out", str(tmp_path / "killed"))
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or '"phase": "kernel"' not in log.read_text()):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "supernet.pt").exists(), "killed too late"
    resumed = run_cli("train", "--config", str(recipe), "--out", str(tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()

    expected, got = state_of(tmp_path / "full" / "supernet.pt"), state_of(tmp_path / "killed" / "supernet.pt")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    # Two steps: the all-reduce rounds differently from one process, and in so tiny a net (2x2 px at the
    # end) such differences grow a thousandfold a step, so a long run would test chaos, not arithmetic.
    phases = [
        {"name": "kernel", "epochs": 1, "lr": 0.01, "ks": [3, 5, 7], "subnets_per_step": 2, "distill": False}
    ]
    data = {**TINY["data"], "limit": 96, "holdout": 32}
    recipe = write_recipe(tmp_path / "r.yaml", phases=phases, data=data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    script = (
        "import sys; from onceforall.train import Trainer, load_recipe; "
        "Trainer(load_recipe(sys.argv[1]), sys.argv[2], progress=False, device='cpu', "
        "micro_batches=int(sys.argv[3])).run()"
    )

    def launch(out: str, micro_batches: int, **extra: str) -> subprocess.Popen:
        args = [sys.executable, "-c", script, str(recipe), str(tmp_path / out), str(micro_batches)]
        return subprocess.Popen(args, env={**env, **extra}, stderr=subprocess.PIPE)

    # One process with the same global batch forwards each half separately: rank-local BN statistics.
    runs = [launch("ddp", 1, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2") for r in range(2)]
    runs.append(launch("single", 2))
    for p in runs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    expected, got = state_of(tmp_path / "single" / "supernet.pt"), state_of(tmp_path / "ddp" / "supernet.pt")
    params = dict(
        OFAMobileNetV3(**load_supernet(tmp_path / "ddp" / "supernet.pt")[1]["build_args"]).named_parameters()
    )
    # atol 5e-5 (was 1e-5): on a 2-core Intel Xeon the first conv (1 input channel: its gradient sums
    # over every pixel of the batch, the longest reduction) differs by 2.0e-5 and every other tensor by
    # <= 6.2e-6, while the two steps moved the first conv by 1.2e-2 (median tensor 1.3e-4).
    for key in params:
        assert torch.allclose(expected[key], got[key], atol=5e-5, rtol=1e-4), key


@needs_data
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    recipe = recipe_from_dict({**copy.deepcopy(TINY), "checkpoint_every": 1})
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    original = Trainer._step

    def poisoned(self, index, phase, images, labels, optimizer):
        if self.position.step == 3:
            with torch.no_grad():
                self.net.first_conv.conv.weight.fill_(float("nan"))
        return original(self, index, phase, images, labels, optimizer)

    monkeypatch.setattr(Trainer, "_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became nan in phase 'teacher' at step 3"):
        trainer.run()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["position"]["step"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@needs_data
def test_resume_refuses_a_changed_recipe(tmp_path):
    recipe = recipe_from_dict(copy.deepcopy(TINY))
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    trainer._save_state(None)
    changed = recipe_from_dict({**copy.deepcopy(TINY), "seed": 1})
    with pytest.raises(ConfigError, match=r"recipe changed .*\['seed'\]"):
        Trainer(changed, tmp_path / "run", resume=True, progress=False)


SANDWICH = {"name": "sandwich", "epochs": 1, "lr": 0.01, "ks": [3, 7], "depth": [2, 4], "expand": [4, 6]}


@needs_data
def test_resume_accepts_appended_phases_only(tmp_path):
    trainer = Trainer(recipe_from_dict(copy.deepcopy(TINY)), tmp_path / "run", progress=False)
    trainer.position.phase = len(TINY["phases"])
    trainer._save_state(None)
    appended = {**copy.deepcopy(TINY), "phases": [*TINY["phases"], {**SANDWICH, "subnets_per_step": 2}]}
    resumed = Trainer(recipe_from_dict(appended), tmp_path / "run", resume=True, progress=False)
    assert resumed.position.phase == 3 and len(resumed.phases) == 4
    edited = copy.deepcopy(appended)
    edited["phases"][0]["lr"] = 0.2
    with pytest.raises(ConfigError, match=r"recipe changed .*\['phases'\]"):
        Trainer(recipe_from_dict(edited), tmp_path / "run", resume=True, progress=False)


@needs_data
def test_sandwich_steps_train_the_largest_and_smallest_subnet_first(tmp_path):
    recipe = {**copy.deepcopy(TINY), "phases": [{**SANDWICH, "subnets_per_step": 4, "sandwich": True}]}
    trainer = Trainer(recipe_from_dict(recipe), tmp_path / "run", progress=False)
    n_blocks, n_stages = len(trainer.net.dynamic_blocks), len(trainer.net.block_group_info)
    assert trainer._sample(0, 5, 0) == {"ks": [7] * n_blocks, "e": [6] * n_blocks, "d": [4] * n_stages}
    assert trainer._sample(0, 5, 1) == {"ks": [3] * n_blocks, "e": [4] * n_blocks, "d": [2] * n_stages}
    random_ones = [trainer._sample(0, step, k) for step in (5, 6) for k in (2, 3)]
    assert len({json.dumps(s) for s in random_ones}) == 4
    assert random_ones[0] == trainer._sample(0, 5, 2)


@needs_data
def test_train_largest_steps_train_the_largest_subnet_then_sampled_ones(tmp_path):
    recipe = {**copy.deepcopy(TINY), "phases": [{**SANDWICH, "subnets_per_step": 3, "train_largest": True}]}
    trainer = Trainer(recipe_from_dict(recipe), tmp_path / "run", progress=False)
    n_blocks, n_stages = len(trainer.net.dynamic_blocks), len(trainer.net.block_group_info)
    largest = {"ks": [7] * n_blocks, "e": [6] * n_blocks, "d": [4] * n_stages}
    assert [trainer._sample(0, step, 0) for step in (5, 6)] == [largest, largest]
    sampled = [trainer._sample(0, step, k) for step in (5, 6) for k in (1, 2)]
    assert len({json.dumps(s) for s in sampled}) == 4
    assert {"ks": [3] * n_blocks, "e": [4] * n_blocks, "d": [2] * n_stages} not in sampled


def test_missing_dataset_folder_says_how_to_install(tmp_path):
    data = {**TINY["data"], "root": str(tmp_path / "nowhere")}
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        Trainer(recipe_from_dict({**copy.deepcopy(TINY), "data": data}), tmp_path / "run", progress=False)


@needs_data
def test_acc_dataset_appends_and_resumes(tmp_path):
    save_tiny_supernet(tmp_path / "supernet.pt")
    out = tmp_path / "acc.jsonl"
    args = ["acc-dataset", "--supernet", str(tmp_path / "supernet.pt"), "--out", str(out), "--seed", "3"]
    first = CliRunner().invoke(app, [*args, "--n", "3"])
    assert first.exit_code == 0, first.output
    assert "3 subnets evaluated, 0 already" in first.output
    again = CliRunner().invoke(app, [*args, "--n", "4"])
    assert "1 subnets evaluated, 3 already" in again.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(round(r["accuracy"] * 64, 6).is_integer() for r in rows)  # k of 64
    assert rows[0]["meta"]["images"] == 64
    fewer = CliRunner().invoke(
        app, [*args[:3], "--out", str(tmp_path / "few.jsonl"), "--n", "1", "--images", "16"]
    )
    assert fewer.exit_code == 0, fewer.output
    row = json.loads((tmp_path / "few.jsonl").read_text())
    assert row["meta"]["images"] == 16 and (16 * row["accuracy"]) == pytest.approx(
        round(16 * row["accuracy"])
    )
    mixed = CliRunner().invoke(app, [*args, "--n", "5", "--images", "16"])
    assert mixed.exit_code == 2 and "images=64" in " ".join(mixed.output.split())
