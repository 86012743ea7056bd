"""`ofa specialize`'s pipeline: search per budget, extract, recalibrate, score, measure, export, report."""

import json
from pathlib import Path

from test_train import needs_data, save_tiny_supernet

from onceforall.specialize.latency import build_latency_table
from onceforall.specialize.pipeline import specialize
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train.evaluation_cli import dataset_evaluator, resolve_supernet


@needs_data
def test_specialize_one_budget_end_to_end(tmp_path: Path):
    save_tiny_supernet(tmp_path / "supernet.pt")
    net, saved = resolve_supernet(str(tmp_path / "supernet.pt"))
    evaluator, _, images = dataset_evaluator(net, saved, "test", None, None, "cpu")
    space = net.search_space()
    table = build_latency_table(
        space, tmp_path / "lat.jsonl", warmup=1, repeats=3, rounds=1, calibration_subnets=2
    )
    predictor = AccuracyPredictor.for_space(space)
    budget = float(table.model(space)(space.encode(space.max_arch()))[0])  # feasible for sure

    (result,) = specialize(evaluator, predictor, table, [budget], tmp_path / "out", rounds=2)

    assert result.predicted_ms <= budget and result.measured_ms > 0
    assert 0 <= result.top1 <= 100 and images == 10000
    folder = tmp_path / "out" / f"budget_{budget:g}ms"
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "model.pt2", "arch.json"}
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["arch"] == result.arch
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| {budget:g} | {result.predicted_ms:.2f} |" in report
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
