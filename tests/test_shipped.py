"""The supernet and accuracy predictor shipped in the package (`ofa_mbv3_fashion_mnist`)."""

from pathlib import Path

import pytest
import torch
from test_train import needs_data

from onceforall.registry import REGISTRY, load_supernet, predictor_path
from onceforall.specialize.accuracy_dataset import AccuracyDataset
from onceforall.specialize.predictor import AccuracyPredictor, evaluate_predictor, loss_calibrated
from onceforall.workflow.evaluate import evaluate_subnet

NET_ID = "ofa_mbv3_fashion_mnist"
# What the shipped file scores (test set, BN recalibrated; configs/fashion_mnist.yaml, docs/training.md)
# and the targets of issue #4.
MEASURED = {"max": 93.14, "min": 92.08}
TARGETS = {"max": 93.0, "min": 90.0}


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    loaded = load_supernet(NET_ID)
    return {arch: evaluate_subnet(loaded, arch, device="cpu")["top1"] for arch in MEASURED}


def test_shipped_files_are_small_enough():
    assert REGISTRY[NET_ID].weights_path.stat().st_size <= 20 * 2**20
    assert predictor_path(NET_ID).stat().st_size <= 5 * 2**20


@needs_data
def test_shipped_supernet_scores_what_the_docs_say(scores):
    assert scores == pytest.approx(MEASURED, abs=0.05)


@needs_data
@pytest.mark.parametrize("arch", ["max", "min"])
def test_shipped_supernet_meets_the_targets(scores, arch):
    assert scores[arch] >= TARGETS[arch]


def test_shipped_predictor_ranks_subnets_it_was_not_fitted_on():
    space = load_supernet(NET_ID).net.search_space()
    predictor = AccuracyPredictor.load(predictor_path(NET_ID), space)
    # tests/data holds 73 subnets of the fit's 20 % held-out split (docs/faithfulness.md, section 3):
    # top-1 and loss on 2,500 held-out images, and top-1 on the 10,000 test images (meta.test_top1).
    rows = AccuracyDataset(Path(__file__).parent / "data" / "shipped_predictor_holdout.jsonl")
    population, measured = rows.population(space)
    records = rows.read()
    test_set = torch.tensor([r.meta["test_top1"] / 100 for r in records])
    everything = torch.arange(len(records))
    calibrated = loss_calibrated(measured, rows.losses(), everything)
    predicted = predictor.predict(space, population).detach()
    on_test = evaluate_predictor(predicted, test_set)
    on_calibrated = evaluate_predictor(predicted, calibrated)
    assert len(records) == 73
    # Measured when it shipped: tau 0.58 / RMSE 0.30 points on the test set, 0.76 / 0.11 against the
    # loss-calibrated labels (the previous predictor: 0.43 / 0.49 on the test set).
    assert on_test["kendall_tau"] > 0.5 and 100 * on_test["rmse"] < 0.35, on_test
    assert on_calibrated["kendall_tau"] > 0.7 and 100 * on_calibrated["rmse"] < 0.15, on_calibrated
    predict = predictor.bind(space)
    largest, smallest = space.encode([space.max_arch(28), space.min_arch(20)])
    assert predict(largest[None])[0] > predict(smallest[None])[0]
