"""Issue #21: random hostile input through the public API and the CLI.

Every case must end in a result or an `OFAError` (through the CLI: exit code 2 and one `error:`
line, whether the library or the option parser refused, no traceback), must leave every input file
byte-identical, and must finish within a per-case time bound (SIGALRM). Examples are bounded so the module runs in about a minute.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import fake_measure, small_net
from test_train import TINY
from typer.testing import CliRunner

from onceforall.cli import app
from onceforall.cli.common import parse_resolutions
from onceforall.errors import OFAError
from onceforall.registry import load_supernet, save_supernet
from onceforall.specialize.accuracy_dataset import AccuracyDataset
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train.recipe import load_recipe, recipe_from_dict
from onceforall.workflow.evaluate import read_arch
from onceforall.workflow.specialize import parse_budgets, parse_quantity

FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)
FILES = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)


CLI = settings(
    max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)


@functools.cache
def space():
    return small_net().search_space()


@contextmanager
def time_limit(seconds: int):
    """Fail a case that runs longer than `seconds` (a hang would otherwise stall the suite)."""

    def expired(signum, frame):
        raise TimeoutError(f"case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def either(fn, *args):
    """`fn(*args)`, or None if it raised an OFAError; any other exception fails the case."""
    with time_limit(20), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except OFAError:
            return None


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One good file of every kind: supernet, predictor, latency table, accuracy dataset, arch, recipe."""
    folder = tmp_path_factory.mktemp("fuzz")
    net = small_net()
    space = net.search_space()
    save_supernet(net, folder / "supernet.pt")
    AccuracyPredictor.for_space(space).save(folder / "predictor.pt")
    build_latency_table(space, folder / "lat.jsonl", measure=fake_measure, rounds=1, calibration_subnets=2)
    rows = space.decode(space.sample(6, torch.Generator().manual_seed(0)))
    (folder / "acc.jsonl").write_text(
        "".join(
            json.dumps({"arch": a.to_dict(), "accuracy": 0.5 + i / 100}) + "\n" for i, a in enumerate(rows)
        )
    )
    space.max_arch(20).to_json(folder / "arch.json")
    (folder / "recipe.yaml").write_text(json.dumps(TINY))
    return {p.name: p for p in folder.iterdir()}


# ---------------------------------------------------------------------- values
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
RECIPE_KEYS = [
    *(k for k in TINY if k not in ("net", "data", "phases")),
    "weight_decay",
    "momentum",
    "kd_ratio",
    "label_smoothing",
    "validate_every",
    *(f"net.{k}" for k in ("width_mult", "ks_list", "expand_ratio_list", "depth_list", "dropout_rate")),
    *(f"data.{k}" for k in ("resolutions", "crop_scale", "batch_size", "workers", "holdout", "limit")),
    *(f"phases.{k}" for k in ("epochs", "lr", "ks", "depth", "sort_channels", "subnets_per_step")),
]
plausible = st.one_of(
    json_values,
    st.integers(-3, 300),
    st.floats(-2, 2),
    st.lists(st.integers(-2, 12), max_size=8),
    st.lists(st.floats(-1, 8), max_size=4),
)


@FAST
@given(st.lists(st.tuples(st.sampled_from(RECIPE_KEYS), plausible), min_size=1, max_size=3))
def test_random_recipes_load_or_raise_config_error(changes):
    data = copy.deepcopy(TINY)
    for key, value in changes:
        section, _, name = key.rpartition(".")
        target = data["phases"][-1] if section == "phases" else data[section] if section else data
        target[name] = value
    recipe = either(recipe_from_dict, data)
    if recipe is not None:  # what was accepted is feasible
        assert recipe.checkpoint_every >= 1 and recipe.log_every >= 1
        assert all(1 <= len(recipe.net.lists()[k]) <= 6 for k in ("expand_ratio_list", "depth_list"))
        assert max(recipe.net.lists()["depth_list"]) <= 8
        assert all(math.isfinite(p.lr) and p.lr > 0 for p in recipe.phases)


@FAST
@given(json_values)
def test_random_arch_json_reads_or_raises(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    path.write_text(json.dumps(value))
    arch = either(read_arch, path, space())
    if arch is not None:
        assert isinstance(arch.image_size, int) and arch.image_size in space().resolutions


@FAST
@given(st.text(alphabet="0123456789.,eE+-msuµkMG x", max_size=14))
def test_random_budgets_and_resolutions_parse_or_raise(text):
    budgets = either(parse_budgets, text)
    assert budgets is None or all(math.isfinite(b) and b > 0 for b in budgets)
    quantity = either(parse_quantity, text)
    assert quantity is None or (math.isfinite(quantity) and quantity > 0)
    sizes = either(parse_resolutions, text)
    assert sizes is None or all(isinstance(s, int) and s >= 1 for s in sizes)


# ---------------------------------------------------------------------- corrupted files
def corrupt(data: bytes, how: str, where: float, other: bytes) -> bytes:
    at = int(where * max(1, len(data) - 1))
    if how == "truncate":
        return data[:at]
    if how == "bitflip":
        return data[:at] + bytes([data[at] ^ (1 << int(where * 7))]) + data[at + 1 :] if data else data
    if how == "other":  # another kind of file under this name
        return other
    return data[:at] + b"\x00garbage\n" + data[at:]


READERS = {
    "supernet.pt": lambda p: load_supernet(p).net,
    "predictor.pt": lambda p: AccuracyPredictor.load(p, space()),
    "lat.jsonl": lambda p: LatencyTable.load(p).model(space()),
    "acc.jsonl": lambda p: AccuracyDataset(p).population(space()),
    "arch.json": lambda p: read_arch(p, space()),
    "recipe.yaml": load_recipe,
}


@FILES
@given(
    st.sampled_from(sorted(READERS)),
    st.sampled_from(["truncate", "bitflip", "other", "insert"]),
    st.floats(0, 1),
    st.sampled_from(sorted(READERS)),
)
def test_corrupted_files_load_or_raise(files, tmp_path_factory, kind, how, where, other_kind):
    path = tmp_path_factory.mktemp("bad") / kind
    path.write_bytes(corrupt(files[kind].read_bytes(), how, where, files[other_kind].read_bytes()))
    either(READERS[kind], path)


# ---------------------------------------------------------------------- the CLI
def invoke(args: list[str], inputs: list[Path]) -> None:
    """Run `ofa args`: success, or exit 2 with an error line and no traceback; inputs unchanged."""
    before = {p: p.read_bytes() for p in inputs}
    with time_limit(30), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert result.exit_code in (0, 2), (args, result.output)
    if result.exit_code == 2:  # one `error:` line, whether the library or the option parser refused
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert {p: p.read_bytes() for p in inputs} == before, f"{args} changed an input file"


option_text = st.one_of(
    st.text(alphabet="0123456789.,-eE+kKmMsGx ", max_size=8),
    st.sampled_from(["", "0", "-1", "1e999", "nan", "2a"]),
)


@CLI
@given(
    st.sampled_from(["--max-macs", "--max-params", "--max-latency", "--resolutions"]),
    option_text,
    st.integers(-2, 6),
    st.sampled_from(["evolution", "random", "nsga", ""]),
)
def test_cli_search_options(files, tmp_path_factory, option, value, population, method):
    out = tmp_path_factory.mktemp("search") / "best.json"
    args = ["search", "--supernet", files["supernet.pt"], "--predictor", files["predictor.pt"]]
    args += ["--table", files["lat.jsonl"], option, value, "--population", population, "--generations", 1]
    args += ["--method", method, "--out", out]
    if option == "--resolutions":
        args += ["--max-macs", "1G"]
    invoke(args, [files[k] for k in ("supernet.pt", "predictor.pt", "lat.jsonl")])


@CLI
@given(st.sampled_from(sorted(READERS)), st.sampled_from(["--out", "--table", "--predictor", "--dataset"]))
def test_cli_outputs_pointed_at_other_kinds_of_file(files, tmp_path_factory, kind, option):
    """Any command told to write to, or read as something else, a file of another kind leaves it intact."""
    victim = tmp_path_factory.mktemp("victim") / kind
    victim.write_bytes(files[kind].read_bytes())
    common = ["--supernet", files["supernet.pt"]]
    commands = {
        "--out": ["latency", "build", *common, "--out", victim, "--warmup", 0, "--repeats", 1, "--rounds", 1],
        "--table": ["search", *common, "--predictor", files["predictor.pt"], "--table", victim,
                    "--max-latency", "5ms", "--generations", 1, "--population", 4],
        "--predictor": ["search", *common, "--predictor", victim, "--max-macs", "1G", "--generations", 1,
                        "--population", 4],
        "--dataset": ["predictor", "fit", *common, "--dataset", victim, "--out", victim.with_suffix(".new"),
                      "--epochs", 1],
    }  # fmt: skip
    if option == "--out" and kind == "lat.jsonl":
        return  # our own latency table: resuming it is the point
    invoke(commands[option], [victim, files["supernet.pt"], files["predictor.pt"]])
