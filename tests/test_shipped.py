"""The supernet and accuracy predictor shipped in the package (`ofa_mbv3_fashion_mnist`)."""

from pathlib import Path

import pytest
from test_train import needs_data

from onceforall.registry import REGISTRY, load_supernet, predictor_path
from onceforall.specialize.predictor import AccuracyDataset, AccuracyPredictor, evaluate_predictor
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
    # tests/data holds the 32 subnets of the fit's 20 % held-out split that the repository kept
    # (rows of the accuracy dataset, 2,000 held-out images each): RMSE 0.35 points, tau 0.51 there.
    rows = AccuracyDataset(Path(__file__).parent / "data" / "shipped_predictor_holdout.jsonl")
    population, accuracy = rows.population(space)
    metrics = evaluate_predictor(predictor.predict(space, population), accuracy)
    assert len(accuracy) == 32 and 100 * metrics["rmse"] < 0.45 and metrics["kendall_tau"] > 0.4, metrics
    predict = predictor.bind(space)
    largest, smallest = space.encode([space.max_arch(28), space.min_arch(20)])
    assert predict(largest[None])[0] > predict(smallest[None])[0]
