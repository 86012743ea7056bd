"""`ofa specialize`'s pipeline: search per budget, extract, recalibrate, score, measure, export, report."""

import json
from pathlib import Path

from test_train import needs_data, save_tiny_supernet

from onceforall.specialize.finetune import finetune
from onceforall.specialize.latency import build_latency_table
from onceforall.specialize.pipeline import specialize
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train.evaluation_cli import dataset_evaluator, resolve_supernet, training_loader


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


@needs_data
def test_finetuned_subnets_are_scored_again_and_exported(tmp_path: Path):
    save_tiny_supernet(tmp_path / "supernet.pt")
    net, saved = resolve_supernet(str(tmp_path / "supernet.pt"))
    evaluator, _, _ = dataset_evaluator(net, saved, "test", None, None, "cpu")
    space = net.search_space()
    table = build_latency_table(
        space, tmp_path / "lat.jsonl", warmup=1, repeats=3, rounds=1, calibration_subnets=2
    )
    budget = float(table.model(space)(space.encode(space.max_arch()))[0])
    loader, tuned = training_loader(net, saved, None, None, "cpu"), []

    def tune(subnet, arch):
        teacher = evaluator.subnet(space.max_arch(arch.image_size))
        tuned.append(finetune(subnet, teacher, loader(arch.image_size), epochs=1, lr=0.05))

    (result,) = specialize(
        evaluator,
        AccuracyPredictor.for_space(space),
        table,
        [budget],
        tmp_path / "out",
        rounds=1,
        finetune=tune,
    )

    # TINY's data: 256 training images in batches of 32 -> one epoch of 8 steps.
    assert len(tuned) == 1 and len(tuned[0]) == 1
    assert result.finetuned_top1 is not None and result.finetuned_top1 != result.top1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "fine-tuned top-1" in report and f"| {result.finetuned_top1:.2f} |" in report
