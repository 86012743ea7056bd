"""The supernet and accuracy predictor shipped in the package (`ofa_mbv3_fashion_mnist`)."""

import pytest
from test_train import needs_data

from onceforall import zoo
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train.evaluation_cli import evaluate_subnet

NET_ID = "ofa_mbv3_fashion_mnist"
# What the shipped file scores (test set, BN recalibrated; configs/fashion_mnist.yaml, docs/training.md)
# and the targets of issue #4.
MEASURED = {"max": 93.14, "min": 92.08}
TARGETS = {"max": 93.0, "min": 90.0}


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    return {arch: evaluate_subnet(NET_ID, arch, None, None, None, "cpu")["top1"] for arch in MEASURED}


def test_shipped_files_are_small_enough():
    assert zoo.pretrained_path(NET_ID).stat().st_size <= 20 * 2**20
    assert zoo.pretrained_predictor_path(NET_ID).stat().st_size <= 5 * 2**20


@needs_data
def test_shipped_supernet_scores_what_the_docs_say(scores):
    assert scores == pytest.approx(MEASURED, abs=0.05)


@needs_data
@pytest.mark.parametrize("arch", ["max", "min"])
def test_shipped_supernet_meets_the_targets(scores, arch):
    assert scores[arch] >= TARGETS[arch]


def test_shipped_predictor_fits_the_supernet_and_ranks_subnets():
    space = zoo.ofa_net(NET_ID).search_space()
    predictor = AccuracyPredictor.load(zoo.pretrained_predictor_path(NET_ID), space)
    # Fitted on 1,000 subnets of the shipped supernet (2,000 held-out images each); on the 200 held-out
    # subnets Kendall tau 0.49, RMSE 0.36 points.
    assert predictor.metrics["kendall_tau"] > 0.45 and 100 * predictor.metrics["rmse"] < 0.5
    predict = predictor.bind(space)
    largest, smallest = space.encode([space.max_arch(28), space.min_arch(20)])
    assert predict(largest[None])[0] > predict(smallest[None])[0]
