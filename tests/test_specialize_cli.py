"""The specialize sub-commands: budgets with units, latency build/validate, fit, search, pareto, export."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from onceforall.cli import app
from onceforall.errors import OFAError
from onceforall.registry import load_supernet
from onceforall.specialize.accuracy_dataset import AccuracyDataset, unique_samples
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.timing import torch_threads
from onceforall.workflow.specialize import parse_quantity

SMALL = ["--supernet", "ofa_mbv3_small", "--resolutions", "24"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine the thread pool only adds waiting."""
    with torch_threads(1):
        yield


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def space():
    return load_supernet("ofa_mbv3_small", resolutions=[24]).net.search_space()


@pytest.fixture(scope="module")
def predictor_file(space, tmp_path_factory):
    torch.manual_seed(0)
    predictor = AccuracyPredictor.for_space(space)
    predictor.base_acc.fill_(0.8)
    return predictor.save(tmp_path_factory.mktemp("p") / "predictor.pt")


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("4ms", "time", 4.0),
        ("2.5 ms", "time", 2.5),
        ("4000us", "time", 4.0),
        ("0.004s", "time", 4.0),
        ("4", "time", 4.0),
        ("300M", "count", 3e8),
        ("1.2G", "count", 1.2e9),
        ("600k", "count", 6e5),
        ("5e8", "count", 5e8),
    ],
)
def test_quantities_with_units(text, kind, value):
    assert parse_quantity(text, kind) == pytest.approx(value)


@pytest.mark.parametrize(
    "text, kind",
    [
        ("4 parsecs", "time"),
        ("fast", "time"),
        ("300X", "count"),
        ("", "count"),
        ("1e999ms", "time"),
        ("0", "count"),
    ],
)
def test_bad_quantities(text, kind):
    with pytest.raises(OFAError, match=r"write e\.g\."):
        parse_quantity(text, kind)


def test_search_with_macs_budget_prints_json_last(predictor_file, space):
    result = invoke(
        "search", *SMALL, "--predictor", predictor_file, "--max-macs", "5M", "--generations", "20", "--json"
    )
    assert result.exit_code == 0, result.output
    payload = last_json(result)
    assert payload["constraints"] == ["macs"] and payload["best"]["efficiency"] <= 5e6
    assert len(payload["history"]) == 21 and payload["best"]["arch"]["space"] == space.name


def test_search_errors_are_clear(predictor_file, tmp_path):
    result = invoke("search", *SMALL, "--predictor", predictor_file, "--max-macs", "1k")
    assert result.exit_code == 2 and "smallest achievable" in result.output
    result = invoke(
        "search", "--supernet", "ofa_mbv3_small", "--predictor", predictor_file, "--max-macs", "5M"
    )
    assert result.exit_code == 2 and "encoding" in result.output  # the predictor knows resolution 24 only
    result = invoke("search", *SMALL, "--predictor", predictor_file, "--max-latency", "3ms")
    assert result.exit_code == 2 and "needs --table" in result.output


def test_latency_build_validate_and_search(predictor_file, tmp_path):
    table = tmp_path / "t.jsonl"
    fast = [
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--rounds",
        "1",
        "--subnet-rounds",
        "1",
        "--subnet-repeats",
        "2",
        "--calibration-subnets",
        "3",
    ]
    result = invoke("latency", "build", *SMALL, "--out", table, *fast, "--json")
    assert result.exit_code == 0, result.output
    built = last_json(result)
    assert built["meta"]["backend"] == "torch" and built["layers"] > 50 and "calibration" in built
    result = invoke(
        "latency", "validate", *SMALL, "--table", table, "--n", "3", "--plot", tmp_path / "v.png", "--json"
    )
    assert result.exit_code == 0, result.output
    validated = last_json(result)
    assert validated["n"] == 3 and (tmp_path / "v.png").is_file() and math.isfinite(validated["drift"])
    assert math.isfinite(validated["within_10_levelled"]) and math.isfinite(validated["mape_levelled"])
    lines = len(table.read_text().splitlines())
    result = invoke("latency", "calibrate", *SMALL, "--table", table, "--calibration-subnets", "2", "--json")
    assert result.exit_code == 0, result.output
    assert len(table.read_text().splitlines()) == lines + 1  # one calibration line appended; the last wins
    assert LatencyTable.load(table).calibration.scale == last_json(result)["scale"]
    top = 2 * max(s["measured_ms"] for s in json.loads(table.read_text().splitlines()[-1])["subnets"])
    args = ("search", *SMALL, "--predictor", predictor_file, "--table", table, "--max-latency", f"{top}ms")
    result = invoke(*args, "--max-macs", "6M", "--generations", "5", "--json")
    assert result.exit_code == 0, result.output
    latency, macs = last_json(result)["best"]["efficiency"]
    assert latency <= top and macs <= 6e6
    result = invoke(*args, "--threads", "4")
    assert result.exit_code == 2 and "threads: table 1, expected 4" in result.output


def test_predictor_fit_from_a_dataset(space, tmp_path):
    """Accuracy that grows with the subnet's depth: the fitted predictor must rank held-out subnets by it."""
    dataset = AccuracyDataset(tmp_path / "acc.jsonl")
    population = unique_samples(space, 200, seed=0)
    depth = population[:, space.field_genes("d")].float().mean(1)  # 0 (all depth 2) .. 2 (all depth 4)
    for arch, acc in zip(space.decode(population), (0.6 + 0.15 * depth).tolist()):
        dataset.append(arch, acc)
    result = invoke(
        "predictor",
        "fit",
        *SMALL,
        "--dataset",
        dataset.path,
        "--out",
        tmp_path / "p.pt",
        "--epochs",
        "60",
        "--json",
    )
    assert result.exit_code == 0, result.output
    metrics = last_json(result)
    assert (metrics["n_train"], metrics["n_test"]) == (160, 40)
    spread = float((0.15 * depth).std())
    # A constant predictor would score tau ~0 and RMSE ~spread.
    assert metrics["kendall_tau"] > 0.5 and metrics["rmse"] < 0.75 * spread, metrics
    assert AccuracyPredictor.load(tmp_path / "p.pt", space).metrics["n_test"] == 40


def test_pareto_and_export(predictor_file, tmp_path):
    args = ("pareto", *SMALL, "--predictor", predictor_file, "--objectives", "macs,params")
    result = invoke(
        *args, "--generations", "4", "--population", "16", "--out", tmp_path / "front.json", "--json"
    )
    assert result.exit_code == 0, result.output
    front = last_json(result)
    assert (
        front["objectives"] == ["accuracy", "macs", "params"] and front["front"] and front["hypervolume"] > 0
    )
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"best": {"arch": front["front"][0]["arch"]}}))
    result = invoke(
        "export", *SMALL, "--arch", arch, "--out", tmp_path / "out", "--formats", "onnx", "--json"
    )
    assert result.exit_code == 0, result.output
    (report,) = last_json(result)["exports"]
    assert report["format"] == "onnx" and report["max_abs_diff"] <= 1e-4
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "arch.json").is_file()


def test_supernet_can_be_a_trained_supernet_file(tmp_path):
    from test_train import save_tiny_supernet

    save_tiny_supernet(tmp_path / "supernet.pt")
    assert load_supernet(tmp_path / "supernet.pt").net.search_space().resolutions == (16, 20)
    assert load_supernet(tmp_path / "supernet.pt", resolutions=[20]).net.search_space().resolutions == (20,)
    with pytest.raises(OFAError, match=r"registered ids: .*ofa_mbv3_fashion_mnist"):
        load_supernet(str(tmp_path / "missing.pt"))
