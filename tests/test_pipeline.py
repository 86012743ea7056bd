"""`ofa specialize`'s pipeline: search per budget, extract, recalibrate, score, measure, export, report."""

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch
from test_train import needs_data, save_tiny_supernet

from onceforall.arch import Arch
from onceforall.cost import count_params
from onceforall.registry import load_supernet
from onceforall.specialize import pipeline
from onceforall.specialize.finetune import distilling_finetuner
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.pipeline import specialize
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.timing import Timing
from onceforall.workflow.data import dataset_evaluator, supernet_data, training_loader


def by_params(module, shape):  # an additive fake latency: 1 ms per 100k parameters
    ms = sum(p.numel() for p in module.parameters()) / 1e5
    return lambda: Timing(ms, ms, ms, 1)


class BiggerIsBetter:  # a predictor that always wants the largest subnet the budget allows
    def bind(self, space):
        return lambda population: count_params(space, population).double() / 1e8


def tiny_evaluator(tmp_path: Path) -> tuple:
    """The tiny supernet's evaluator (200 test images) and its search space."""
    save_tiny_supernet(tmp_path / "supernet.pt")
    loaded = load_supernet(tmp_path / "supernet.pt")
    evaluator, _ = dataset_evaluator(loaded, supernet_data(loaded), "test", "cpu", limit=200)
    return evaluator, loaded.net.search_space()


@needs_data
def test_specialize_one_budget_end_to_end(tmp_path: Path):
    save_tiny_supernet(tmp_path / "supernet.pt")
    loaded = load_supernet(tmp_path / "supernet.pt")
    net = loaded.net
    evaluator, images = dataset_evaluator(loaded, supernet_data(loaded), "test", "cpu")
    space = net.search_space()
    table = build_latency_table(
        space,
        tmp_path / "lat.jsonl",
        warmup=1,
        repeats=3,
        rounds=1,
        subnet_rounds=2,
        subnet_repeats=3,
        calibration_subnets=2,
    )
    predictor = AccuracyPredictor.for_space(space)
    budget = float(table.model(space)(space.encode(space.max_arch()))[0])  # feasible for sure

    (result,) = specialize(
        evaluator,
        predictor,
        table,
        [budget],
        tmp_path / "out",
        max_rounds=1,
        generations=50,
        formats=("onnx",),  # .pt2 export is tested by the fine-tuning test below
        name="my_supernet",
    )

    assert result.predicted_ms <= budget and result.measured_ms > 0
    assert images == 10000
    assert result.top1 == pytest.approx(evaluator(Arch.from_dict(result.arch))[0], abs=1e-9)
    folder = tmp_path / "out" / f"budget_{budget:g}ms"
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "arch.json"}
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["arch"] == result.arch
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith(f"# Specialized subnets of `my_supernet` (`{space.name}`)\n")
    assert f"| {budget:g} | {result.predicted_ms:.2f} |" in report
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000


@needs_data
def test_subnets_are_timed_in_interleaved_rounds_with_the_tables_statistic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    save_tiny_supernet(tmp_path / "supernet.pt")
    loaded = load_supernet(tmp_path / "supernet.pt")
    net = loaded.net
    evaluator, _ = dataset_evaluator(loaded, supernet_data(loaded), "test", "cpu", limit=500)
    space = net.search_space()

    table = build_latency_table(
        space, tmp_path / "lat.jsonl", rounds=1, subnet_rounds=3, statistic="median", measure=by_params
    )
    largest = float(table.model(space)(space.encode(space.max_arch()))[0])
    timings = itertools.count(1)

    def bursty(module, shape):  # a burst of load over the first two timings
        def timer() -> Timing:
            ms = 10.0 if next(timings) <= 2 else 1.0
            return Timing(ms, ms / 2, ms, 1)  # after the burst: median 1 ms, p10 0.5 ms

        return timer

    monkeypatch.setattr(pipeline, "table_measurer", lambda table: bursty)
    results = specialize(
        evaluator,
        AccuracyPredictor.for_space(space),
        table,
        [0.9 * largest, largest],
        tmp_path / "out",
        formats=("onnx",),
        max_rounds=1,
        generations=50,
    )

    assert [r.measured_ms for r in results] == [1.0, 1.0]  # back to back: 10 ms for the first


@needs_data
def test_finetuned_subnets_are_scored_again_and_exported(tmp_path: Path):
    save_tiny_supernet(tmp_path / "supernet.pt")
    loaded = load_supernet(tmp_path / "supernet.pt")
    net = loaded.net
    source = supernet_data(loaded)
    evaluator, _ = dataset_evaluator(loaded, source, "test", "cpu")
    space = net.search_space()
    table = build_latency_table(
        space,
        tmp_path / "lat.jsonl",
        warmup=1,
        repeats=3,
        rounds=1,
        subnet_rounds=1,
        subnet_repeats=3,
        calibration_subnets=2,
    )
    budget = float(table.model(space)(space.encode(space.max_arch()))[0])
    loader = training_loader(source, "cpu")
    finetuner = distilling_finetuner(evaluator, loader, epochs=2, lr=0.05, progress=False)
    seen = {}

    def tune(subnet, arch):
        seen["before"] = copy.deepcopy(subnet)
        seen["losses"] = finetuner(subnet, arch)
        seen["after"], seen["steps"] = subnet, len(loader(arch.image_size))

    (result,) = specialize(
        evaluator,
        AccuracyPredictor.for_space(space),
        table,
        [budget],
        tmp_path / "out",
        finetune=tune,
        formats=("pt2",),
        max_rounds=1,
        generations=50,
    )

    assert len(seen["losses"]) == 2 and seen["steps"] == 8  # TINY: 256 training images, batch 32
    assert result.finetuned_top1 is not None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "fine-tuned top-1" in report and f"| {result.finetuned_top1:.2f} |" in report
    exported = torch.export.load(tmp_path / "out" / f"budget_{budget:g}ms" / "model.pt2").module()
    x = torch.randn(4, 1, result.arch["image_size"], result.arch["image_size"])
    with torch.no_grad():
        out, tuned, untuned = exported(x), seen["after"].cpu().eval()(x), seen["before"].cpu().eval()(x)
    assert torch.allclose(out, tuned, atol=1e-4) and not torch.allclose(out, untuned, atol=1e-2)


@needs_data
def test_a_subnet_over_its_budget_is_searched_again_until_it_measures_within(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    evaluator, space = tiny_evaluator(tmp_path)

    def slower(module, shape):  # the device: 30 % slower than the table says
        ms = 1.3 * sum(p.numel() for p in module.parameters()) / 1e5
        return lambda: Timing(ms, ms, ms, 1)

    table = build_latency_table(
        space, tmp_path / "lat.jsonl", rounds=1, subnet_rounds=1, statistic="median", measure=by_params
    )
    model = table.model(space)
    largest = float(model(space.encode(space.max_arch()))[0])
    fastest = float(model(space.encode(space.min_arch(min(space.resolutions))))[0])
    monkeypatch.setattr(pipeline, "table_measurer", lambda table: slower)
    roomy, tight = 0.8 * largest, 1.1 * fastest

    results = specialize(
        evaluator,
        BiggerIsBetter(),
        table,
        [tight, roomy],
        tmp_path / "out",
        formats=("onnx",),
        generations=50,
    )

    met, missed = results[1], results[0]
    assert met.rounds >= 2 and met.within_budget and met.measured_ms <= roomy
    assert met.search_budget_ms < roomy and met.predicted_ms <= met.search_budget_ms
    assert not missed.within_budget and missed.measured_ms > tight
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"No subnet found for {tight:g} ms after {missed.rounds} search(es)" in report
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["within_budget"] for r in saved] == [False, True]
    exported = json.loads((tmp_path / "out" / f"budget_{roomy:g}ms" / "arch.json").read_text())
    assert exported == met.arch  # the folder holds the re-searched subnet, not the first choice


@needs_data
def test_a_burst_of_load_does_not_cost_the_first_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    evaluator, space = tiny_evaluator(tmp_path)

    table = build_latency_table(
        space, tmp_path / "lat.jsonl", rounds=1, subnet_rounds=2, statistic="median", measure=by_params
    )
    largest = float(table.model(space)(space.encode(space.max_arch()))[0])
    calls = itertools.count()

    def burst(module, shape):  # the first timing round (one candidate, 2 rounds) runs 30 % slower
        ms = sum(p.numel() for p in module.parameters()) / 1e5

        def timer() -> Timing:
            t = 1.3 * ms if next(calls) < 2 else ms
            return Timing(t, t, t, 1)

        return timer

    monkeypatch.setattr(pipeline, "table_measurer", lambda table: burst)

    budget = 0.8 * largest
    (result,) = specialize(
        evaluator, BiggerIsBetter(), table, [budget], tmp_path / "out", formats=("onnx",), generations=50
    )

    # Round 1 measured the first choice over budget and searched again under a tighter constraint;
    # round 2 re-timed both: the first choice, more accurate, measured within and is the one kept.
    assert result.rounds == 2 and result.within_budget and result.search_budget_ms == budget
    assert result.measured_ms <= budget
    exported = json.loads((tmp_path / "out" / f"budget_{budget:g}ms" / "arch.json").read_text())
    assert exported == result.arch
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["rounds"] == 2


@needs_data
def test_a_budget_no_candidate_meets_reports_its_fastest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    evaluator, space = tiny_evaluator(tmp_path)

    table = build_latency_table(
        space, tmp_path / "lat.jsonl", rounds=1, subnet_rounds=1, statistic="median", measure=by_params
    )
    model = table.model(space)
    budget = 0.8 * float(model(space.encode(space.max_arch()))[0])
    timed: list[float] = []

    def over(module, shape):  # the device: 10 % over any budget, and slower the more parameters
        ms = 1.1 * budget + sum(p.numel() for p in module.parameters()) / 1e6
        timed.append(ms)
        return lambda: Timing(ms, ms, ms, 1)

    searched: list[tuple[float, float]] = []  # (constraint, predicted ms of the subnet found)
    real_search = pipeline.evolution_search

    def recording(space, predict, latency, constraint, **kwargs):
        found = real_search(space, predict, latency, constraint, **kwargs)
        searched.append((constraint, float(latency(space.encode(found.best_arch))[0])))
        return found

    monkeypatch.setattr(pipeline, "table_measurer", lambda table: over)
    monkeypatch.setattr(pipeline, "evolution_search", recording)

    (result,) = specialize(
        evaluator, BiggerIsBetter(), table, [budget], tmp_path / "out", formats=("onnx",), generations=50
    )

    # timed in order: round 1 the first candidate, round 2 both, round 3 all three
    assert len(searched) == 3 and len(timed) == 6 and result.rounds == 3 and not result.within_budget
    first, second = timed[0], timed[2]
    assert searched[0][0] == budget
    assert searched[1][0] == pytest.approx(min(searched[0][1] * budget / first * 0.97, 0.98 * budget))
    assert searched[2][0] == pytest.approx(
        min(searched[1][1] * budget / second * 0.97, 0.98 * searched[1][0])
    )
    assert result.measured_ms == min(timed)  # the fastest candidate is the one reported and exported
    exported = json.loads((tmp_path / "out" / f"budget_{budget:g}ms" / "arch.json").read_text())
    assert exported == result.arch
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"No subnet found for {budget:g} ms after 3 search(es)" in report
