"""Issue #21: hostile input is one clear error, a user's file is never destroyed, kills lose nothing."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_train import TINY

from onceforall import OFAMobileNetV3
from onceforall.checkpoints import load_official
from onceforall.errors import (
    ArchError,
    CheckpointError,
    ConfigError,
    ExportError,
    LatencyTableError,
    OFAError,
    PredictorError,
)
from onceforall.io import FolderLock, OutputLocked, remove_stale_tmp
from onceforall.specialize.accuracy_dataset import AccuracyDataset, collect_accuracy_dataset
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.timing import Timing
from onceforall.train.recipe import RecipeWarning, recipe_from_dict
from onceforall.train.trainer import Trainer
from onceforall.workflow.evaluate import read_arch
from onceforall.workflow.export import refuse_foreign_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def small_net() -> OFAMobileNetV3:
    return OFAMobileNetV3(
        n_classes=10,
        width_mult=0.25,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 2, 1, 1),
        resolutions=(16, 20),
        ks_list=[3, 5],
        expand_ratio_list=[3, 6],
        depth_list=[2, 3],
    )


@pytest.fixture(scope="module")
def space():
    return small_net().search_space()


def fake_measure(module, shape):
    """A deterministic timer: no real timing, so the tests are fast and exact."""
    ms = float(sum(p.numel() for p in module.parameters())) * 1e-6 + 0.01
    return lambda: Timing(ms, ms, ms, 1)


def recipe(**changes) -> dict:
    data = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data[section][name] = value
        else:
            data[section] = value
    return data


# ---------------------------------------------------------------------- (1) validation at the edge
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checkpoint_every": 0}, r"checkpoint_every = 0 is out of range: allowed 1 <= checkpoint_every"),
        ({"log_every": 0}, r"log_every = 0 is out of range: allowed 1 <= log_every"),
        ({"data__crop_scale": [0.1, 0.5, 1.0]}, r"data.crop_scale has 3 entries: allowed 2 to 2"),
        ({"data__crop_scale": [0.9, 0.2]}, r"crop_scale = \[0.9, 0.2\] is not a range"),
        (
            {"net__dropout_rate": 2.0},
            r"net.dropout_rate = 2.0 is out of range: allowed 0 <= dropout_rate < 1",
        ),
        (
            {"label_smoothing": 2.0},
            r"label_smoothing = 2.0 is out of range: allowed 0 <= label_smoothing < 1",
        ),
        ({"data__workers": -1}, r"data.workers = -1 is out of range: allowed 0 <= workers"),
        ({"bn_calibration_images": 0}, r"bn_calibration_images = 0 is out of range"),
        (
            {"net__depth_list": [100]},
            r"net.depth_list\[0\] = 100 is out of range: allowed 0 <= depth_list\[0\] <= 8",
        ),
        (
            {"net__ks_list": [4]},
            r"net.ks_list\[0\] = 4 is out of range: allowed 1 <= ks_list\[0\] <= 11, odd",
        ),
        ({"phases": [{"name": "t", "epochs": 1, "lr": 0.1, "ks": []}]}, r"phases\[0\].ks has 0 entries"),
        ({"phases": [{"name": "t", "epochs": 1, "lr": 0.1, "sort_channels": 99}]}, r"sort_channels = 99"),
        ({"phases": [{"name": "t", "epochs": 1, "lr": 0.1, "sort_channels": 3}]}, r"sort_channels < 3"),
        ({"phases": [{"name": "t", "epochs": 0, "lr": 0.1}]}, r"train nothing"),
        (
            {"phases": [{"name": "t", "epochs": 1, "lr": float("nan")}]},
            r"phases\[0\].lr = nan is not a finite",
        ),
        ({"weight_decay": 5.0}, r"weight_decay = 5.0 is out of range"),
    ],
)
def test_recipe_values_out_of_range_name_field_value_and_range(change, message):
    key = next(iter(change))
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(recipe(**{key: change[key]}))


def test_suspicious_recipe_values_warn_but_load():
    with pytest.warns(
        RecipeWarning, match="weight_decay = -1e-05: a negative weight decay grows the weights"
    ):
        assert recipe_from_dict(recipe(weight_decay=-1e-5)).weight_decay == -1e-5
    with pytest.warns(RecipeWarning, match=r"odd sizes \[17\]"):
        recipe_from_dict(recipe(data__resolutions=[16, 17]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe_from_dict(recipe())  # the tiny recipe itself is clean


def test_arch_json_with_float_sizes_is_one_arch_error(space, tmp_path):
    arch = space.max_arch(20).to_dict()
    for field, value in (("image_size", 20.0), ("ks", [float(k) for k in arch["ks"]]), ("d", [True] * 5)):
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps({**arch, field: value}))
        with pytest.raises(ArchError, match=rf"arch.{field}(\[0\])? = .* is not an integer"):
            read_arch(path, space)
    (tmp_path / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(ArchError, match="not an arch JSON file"):
        read_arch(tmp_path / "deep.json", space)


# ---------------------------------------------------------------------- (2) safe reading
def test_non_finite_official_weights_are_refused_naming_the_tensor():
    net = small_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["classifier.linear.weight"][0, 0] = float("nan")
    with pytest.raises(
        CheckpointError, match=r"non-finite values in tensor 'classifier.linear.weight' \(1 of"
    ):
        load_official(small_net(), state)


def test_corrupt_predictor_files_are_one_predictor_error(space, tmp_path):
    good = AccuracyPredictor.for_space(space).save(tmp_path / "p.pt")
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "rand.pt").write_bytes(os.urandom(2000))
    torch.save({"format": "onceforall.predictor", "version": 1}, tmp_path / "tampered.pt")
    torch.save({"format": "onceforall.supernet"}, tmp_path / "supernet.pt")
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["layers.0.0.weight"][0, 0] = float("inf")
    torch.save(payload, tmp_path / "inf.pt")
    for name, message in [
        ("cut.pt", "not a readable predictor file"),
        ("rand.pt", "not a readable predictor file"),
        ("tampered.pt", "damaged predictor file"),
        ("supernet.pt", "is a 'onceforall.supernet' file, not an accuracy predictor"),
        ("inf.pt", "non-finite values in tensor 'layers.0.0.weight'"),
    ]:
        with pytest.raises(PredictorError, match=message):
            AccuracyPredictor.load(tmp_path / name, space)


def test_accuracy_rows_need_a_numeric_fraction(space, tmp_path):
    arch = space.max_arch(20).to_dict()
    rows = [{"arch": arch, "accuracy": value} for value in ("0.5", True, 55.0, 0.5)]
    path = tmp_path / "acc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = AccuracyDataset(path)
    assert [r.accuracy for r in dataset.read(warn=False)] == [0.5]
    assert [n for n, _ in dataset.problems] == [1, 2, 3]


def test_negative_latencies_are_malformed_lines(space, tmp_path):
    path = tmp_path / "lat.jsonl"
    build_latency_table(space, path, measure=fake_measure, rounds=1, calibration_subnets=2)
    lines = path.read_text().splitlines()
    record = json.loads(lines[3])
    record["p10_ms"] = -1.0
    lines[3] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LatencyTableError, match=r"malformed lines \[4\]; run `ofa latency build` again"):
        LatencyTable.load(path)


def test_the_fix_named_for_a_bad_middle_line_repairs_the_table(space, tmp_path):
    path = tmp_path / "lat.jsonl"
    build_latency_table(space, path, measure=fake_measure, rounds=1, calibration_subnets=2)
    expected = LatencyTable.load(path).layers
    lines = path.read_text().splitlines()
    lines[5] = lines[5][:30]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LatencyTableError, match="drops those lines and re-measures them"):
        LatencyTable.load(path)
    with pytest.warns(UserWarning, match=r"dropped malformed lines \[6\]"):
        build_latency_table(space, path, measure=fake_measure, rounds=1, calibration_subnets=2)
    assert LatencyTable.load(path).layers == expected


# ---------------------------------------------------------------------- (3) never destroy a user's file
def test_commands_refuse_to_append_to_or_replace_other_kinds_of_file(space, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    table = tmp_path / "lat.jsonl"
    build_latency_table(space, table, measure=fake_measure, rounds=1, calibration_subnets=2)
    before = {p: p.read_bytes() for p in (notes, table)}
    with pytest.raises(LatencyTableError, match=r"is not a latency table .* left untouched"):
        build_latency_table(space, notes, measure=fake_measure, rounds=1)
    with pytest.raises(PredictorError, match=r"is not an accuracy dataset .* left untouched"):
        collect_accuracy_dataset(lambda arch: 0.5, space, 2, table, progress=False)
    with pytest.raises(PredictorError, match=r"is not a predictor file .* left untouched"):
        AccuracyPredictor.for_space(space).save(table)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("...")
    with pytest.raises(ExportError, match="not an `ofa export`"):
        refuse_foreign_folder(folder)
    assert {p: p.read_bytes() for p in before} == before
    assert (folder / "thesis.tex").read_text() == "..."


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    held = rf"in use by another process \(pid {os.getpid()}\)"
    with FolderLock(tmp_path / "run"), pytest.raises(OutputLocked, match=held):
        FolderLock(tmp_path / "run").acquire()
    FolderLock(tmp_path / "run").acquire().release()  # released: free again
    script = "import sys, time; from onceforall.io import FolderLock; lock = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "other")],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert holder.stdout.readline().strip() == b"held"
    with pytest.raises(OutputLocked, match=rf"pid {holder.pid}"):
        FolderLock(tmp_path / "other").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    FolderLock(tmp_path / "other").acquire().release()


def test_stale_tmp_files_of_an_interrupted_write_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".export.x1.tmp").mkdir()
    (tmp_path / "checkpoint.pt").write_bytes(b"good")
    (tmp_path / "notes.tmp").write_bytes(b"not ours: no leading dot")
    removed = remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pt.abc123.tmp", ".export.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "notes.tmp"]


# ---------------------------------------------------------------------- messages
def test_resume_accepts_a_lowered_lr_of_an_unfinished_phase_only(tmp_path):
    saved = recipe_from_dict(recipe())
    lowered = copy.deepcopy(TINY)
    lowered["phases"][1]["lr"] = 0.001
    me = SimpleNamespace(recipe=recipe_from_dict(lowered))
    Trainer._check_resumable(me, saved, tmp_path / "checkpoint.pt", finished=1)  # phase 1 not finished
    with pytest.raises(ConfigError, match=r"keys \['phases'\]"):
        Trainer._check_resumable(me, saved, tmp_path / "checkpoint.pt", finished=2)


def test_divergence_advice_matches_what_exists(tmp_path):
    phase = recipe_from_dict(recipe()).phases[1]
    me = SimpleNamespace(recipe=recipe_from_dict(recipe()), out=tmp_path, position=SimpleNamespace(step=1))
    message = Trainer._divergence_message(me, float("nan"), phase)
    assert "before the first checkpoint was written" in message and "nothing to resume" in message
    assert "phases[1].lr (now 0.05)" in message
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    message = Trainer._divergence_message(me, float("nan"), phase)
    assert f"last good state is {tmp_path / 'checkpoint.pt'}" in message and "--resume" in message


# ---------------------------------------------------------------------- kill -9 during appends
KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_reliability import small_net, fake_measure
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.accuracy_dataset import collect_accuracy_dataset
space = small_net().search_space()
def slow_measure(module, shape):
    timer = fake_measure(module, shape)
    def run():
        time.sleep(0.01)
        return timer()
    return run
def slow_eval(arch):
    time.sleep(0.02)
    return 0.5
if sys.argv[1] == "latency":
    build_latency_table(space, sys.argv[2], measure=slow_measure, rounds=2, calibration_subnets=2)
else:
    collect_accuracy_dataset(slow_eval, space, 60, sys.argv[2], progress=False)
"""


def run_and_kill(kind: str, path: Path, lines: int) -> None:
    """Start a build/collection in a child process and kill -9 it once `path` has `lines` lines."""
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent))
    child = subprocess.Popen(
        [sys.executable, "-c", script, kind, str(path)], env={**os.environ, "PYTHONPATH": SRC}
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if path.is_file() and path.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.005)
    assert child.poll() is None, "the child finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_kill_9_during_acc_dataset_loses_and_duplicates_no_row(space, tmp_path):
    path = tmp_path / "acc.jsonl"
    run_and_kill("acc", path, 10)
    summary = collect_accuracy_dataset(lambda arch: 0.5, space, 60, path, progress=False)
    assert summary.skipped >= 10 and summary.skipped + summary.evaluated == 60
    rows = [r.arch for r in AccuracyDataset(path).read(warn=False)]
    assert len(rows) == len(set(rows)) == 60


def test_kill_9_during_latency_build_loses_and_duplicates_no_round(space, tmp_path):
    path = tmp_path / "lat.jsonl"
    run_and_kill("latency", path, 30)
    build_latency_table(space, path, measure=fake_measure, rounds=2, calibration_subnets=2)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    rounds = [(r["key"], r["round"]) for r in records if r["type"] == "layer"]
    assert len(rounds) == len(set(rounds))
    table = LatencyTable.load(path)
    assert not table.missing(space) and all(len(r) == 2 for r in table.rounds.values())


# ---------------------------------------------------------------------- found by the bad-input sweep
def cli(*args) -> SimpleNamespace:
    from typer.testing import CliRunner

    from onceforall.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="ofa")
    return SimpleNamespace(code=result.exit_code, err=result.stderr, out=result.stdout)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> SimpleNamespace:
    from onceforall.registry import save_supernet

    folder = tmp_path_factory.mktemp("small")
    net = small_net()
    save_supernet(net, folder / "supernet.pt")
    AccuracyPredictor.for_space(net.search_space()).save(folder / "predictor.pt")
    build_latency_table(
        net.search_space(), folder / "lat.jsonl", measure=fake_measure, rounds=1, calibration_subnets=2
    )
    return SimpleNamespace(
        supernet=folder / "supernet.pt", predictor=folder / "predictor.pt", table=folder / "lat.jsonl"
    )


def test_result_and_plot_outputs_replace_only_their_own_kind(small_files, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    table_copy = tmp_path / "lat.jsonl"
    table_copy.write_bytes(small_files.table.read_bytes())
    kept = {p: p.read_bytes() for p in (notes, table_copy)}
    search = ("search", "--supernet", small_files.supernet, "--predictor", small_files.predictor)
    search += ("--max-macs", "1G", "--generations", 2, "--population", 8)
    for target in (notes, table_copy):
        refused = cli(*search, "--out", target)
        assert refused.code == 2 and "is not a search result (JSON); it is left untouched" in refused.err
    pareto = ("pareto", "--supernet", small_files.supernet, "--predictor", small_files.predictor)
    pareto += ("--objectives", "macs", "--generations", 2, "--population", 8)
    refused = cli(*pareto, "--plot", notes)
    assert refused.code == 2 and "is not a PNG image; it is left untouched" in refused.err
    refused = cli(*pareto, "--out", table_copy)
    assert refused.code == 2 and "is not a Pareto result (JSON)" in refused.err
    assert {p: p.read_bytes() for p in kept} == kept
    # Our own earlier outputs are replaced.
    result, plot = tmp_path / "best.json", tmp_path / "front.png"
    assert cli(*search, "--out", result).code == 0
    assert cli(*search, "--out", result, "--seed", 1).code == 0
    assert cli(*pareto, "--plot", plot).code == 0 and plot.read_bytes().startswith(b"\x89PNG")
    assert cli(*pareto, "--plot", plot, "--seed", 1).code == 0


def test_latency_validate_refuses_a_foreign_plot_before_timing(small_files, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    refused = cli(
        "latency",
        "validate",
        "--supernet",
        small_files.supernet,
        "--table",
        small_files.table,
        "--n",
        2,
        "--plot",
        notes,
    )
    assert refused.code == 2 and "is not a PNG image" in refused.err and notes.read_text() == "my notes\n"


def test_specialize_refuses_a_folder_with_the_users_own_report(tmp_path):
    from onceforall.workflow.specialize import claim_output

    (tmp_path / "report.md").write_text("my report\n")
    with pytest.raises(OFAError, match=r"did not write \(\['report.md'\]\)"):
        claim_output(tmp_path)
    assert (tmp_path / "report.md").read_text() == "my report\n"
    (tmp_path / "report.md").write_text("# Specialized subnets of `x` (`y`)\n")  # an earlier run's: cleared
    (tmp_path / "budget_3ms").mkdir()
    (tmp_path / "budget_3ms" / "arch.json").write_text("{}")
    (tmp_path / "budget_notes").mkdir()  # not an export of ours (no arch.json): refused
    with pytest.raises(OFAError, match=r"did not write \(\['budget_notes'\]\)"):
        claim_output(tmp_path)
    (tmp_path / "budget_notes").rmdir()
    lock = claim_output(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    del lock


def test_merge_calibration_subnets_is_range_checked(small_files, tmp_path):
    out = tmp_path / "merged.jsonl"
    refused = cli(
        "latency",
        "merge",
        small_files.table,
        "--supernet",
        small_files.supernet,
        "--out",
        out,
        "--calibration-subnets",
        -5,
    )
    assert refused.code == 2 and refused.err.startswith("error: Invalid value for '--calibration-subnets'")
    assert not out.exists()


def test_the_shipped_supernet_carries_its_checksum_and_files_without_one_warn(tmp_path):
    from onceforall.checkpoints import read_file
    from onceforall.io import save_atomic
    from onceforall.registry import REGISTRY, load_supernet, tensor_digest

    data = read_file(REGISTRY["ofa_mbv3_fashion_mnist"].weights_path, "supernet")
    assert data["sha256"] == tensor_digest(data["state_dict"])
    from onceforall.registry import save_supernet

    save_supernet(small_net(), tmp_path / "net.pt")
    old = read_file(tmp_path / "net.pt", "supernet")
    del old["sha256"]  # as files written before the checksum was recorded
    save_atomic(old, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="carries no checksum of its tensors"):
        load_supernet(tmp_path / "old.pt")


def test_cli_warnings_and_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: b: c\n")
    result = cli("train", "--config", bad, "--out", tmp_path / "run")
    assert (
        result.code == 2
        and result.err
        == f"error: {bad} is not valid YAML (line 1, column 5): mapping values are not allowed here\n"
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    result = cli("train", "--config", bad.with_name("none.yaml"), "--out", notes)
    assert result.code == 2 and result.err.count("\n") == 1
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(json.dumps(recipe(weight_decay=-0.01)))
    result = cli("train", "--config", recipe_file, "--out", notes)  # the recipe loads (and warns) first
    assert (
        result.err.splitlines()[0]
        == "warning: weight_decay = -0.01: a negative weight decay grows the weights; use >= 0"
    )
    assert result.err.splitlines()[1].startswith(f"error: --out {notes} is a file; give a folder")
