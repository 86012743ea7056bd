"""The `ofa` command line: specialize and demo (the sub-commands are in test_specialize_cli)."""

import json
from pathlib import Path

import pytest
from test_train import needs_data, save_tiny_supernet
from typer.testing import CliRunner

from onceforall.cli import app
from onceforall.registry import load_supernet
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.workflow.specialize import spread_budgets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny supernet file, a predictor for its space and a quickly measured latency table."""
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_supernet(folder / "supernet.pt")
    space = load_supernet(folder / "supernet.pt").net.search_space()
    AccuracyPredictor.for_space(space).save(folder / "predictor.pt")
    build_latency_table(
        space,
        folder / "lat.jsonl",
        warmup=1,
        repeats=3,
        rounds=1,
        subnet_rounds=1,
        subnet_repeats=3,
        calibration_subnets=2,
    )
    return {
        "supernet": folder / "supernet.pt",
        "predictor": folder / "predictor.pt",
        "table": folder / "lat.jsonl",
    }


def specialize(tiny: dict[str, Path], out: Path, *extra: str):
    args = ["specialize", "--supernet", tiny["supernet"], "--predictor", tiny["predictor"]]
    args += ["--table", tiny["table"], "--out", out, "--formats", "onnx", "--max-searches", "1"]
    args += ["--generations", "50", *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@needs_data
def test_specialize_spreads_three_budgets_by_default(tiny, tmp_path):
    result = specialize(tiny, tmp_path)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    budgets = [r["budget_ms"] for r in results]
    space = load_supernet(tiny["supernet"]).net.search_space()
    assert budgets == spread_budgets(LatencyTable.load(tiny["table"]).model(space), space)
    assert all(r["predicted_ms"] <= r["budget_ms"] for r in results)
    assert sorted(p.name for p in tmp_path.glob("budget_*")) == sorted(f"budget_{b:g}ms" for b in budgets)
    assert "specialized subnets" in result.output and "report.md" in result.output
    title = (tmp_path / "report.md").read_text().splitlines()[0]  # names the file the user gave
    assert title == f"# Specialized subnets of `{tiny['supernet']}` (`{space.name}`)"


@needs_data
def test_specialize_errors_are_one_clear_line(tiny, tmp_path):
    result = specialize(tiny, tmp_path, "--budgets", "0.0001ms")
    assert result.exit_code == 2 and "the smallest achievable is" in flat(result.output)
    result = specialize(tiny, tmp_path, "--budgets", "fast")
    assert result.exit_code == 2 and "write e.g." in flat(result.output)
    result = specialize(tiny, tmp_path, "--threads", "2")
    assert result.exit_code == 2 and "threads" in flat(result.output)  # the table was measured with 1


@needs_data
def test_specialize_with_finetuning(tiny, tmp_path):
    result = specialize(
        tiny, tmp_path, "--budgets", "1000ms", "--finetune-epochs", "1", "--finetune-lr", "0.05"
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "results.json").read_text())
    shown = f"{row['top1']:.2f} -> {row['finetuned_top1']:.2f}"
    assert shown in result.output, result.output


def test_demo_needs_a_shipped_predictor(tiny, tmp_path):
    result = CliRunner().invoke(app, ["demo", "--supernet", str(tiny["supernet"]), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "ships no accuracy predictor; pass --predictor" in flat(result.output)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["eval", "--bogus"], "error: No such option: --bogus (see 'ofa eval --help')"),
        (["search", "--population", "x"], "error: Invalid value for '--population'"),
        (["latency", "build", "--threads", "0"], "Input should be greater than or equal to 1"),
        (["eval", "--supernet"], "error: Option '--supernet' requires an argument"),
        (["nonsense"], "error: No such command 'nonsense'"),
        (["eval", "--supernet", "ofa_mbv3_smal"], "(did you mean 'ofa_mbv3_small'?); registered ids:"),
    ],
)
def test_usage_errors_are_one_line_on_stderr(args, says):
    result = CliRunner().invoke(app, args, prog_name="ofa")
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr  # one line, no panel
    assert result.stderr.startswith("error: ") and says in result.stderr, result.stderr


def test_no_arguments_show_the_help():
    result = CliRunner().invoke(app, ["latency"])
    assert result.exit_code == 2 and "build" in result.output and "validate" in result.output
