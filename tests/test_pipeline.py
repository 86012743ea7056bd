"""`ofa specialize`'s pipeline: search per budget, extract, recalibrate, score, measure, export, report."""

import copy
import json
from pathlib import Path

import torch
from test_train import TINY, needs_data

from onceforall import OFAMobileNetV3
from onceforall.specialize.latency import build_latency_table
from onceforall.specialize.pipeline import specialize
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train import recipe_from_dict, save_supernet
from onceforall.train.evaluation_cli import dataset_evaluator, resolve_supernet


@needs_data
def test_specialize_one_budget_end_to_end(tmp_path: Path):
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
    save_supernet(net, tmp_path / "supernet.pt", recipe=recipe_from_dict(copy.deepcopy(TINY)).to_dict())
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
