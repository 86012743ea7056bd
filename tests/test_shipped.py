"""The supernet and accuracy predictor shipped in the package (`ofa_mbv3_fashion_mnist`)."""

import pytest
from test_train import needs_data

from onceforall import zoo
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train.evaluation_cli import evaluate_subnet

NET_ID = "ofa_mbv3_fashion_mnist"
# What the shipped file scores (test set, BN recalibrated) and the targets of issue #4: the shipped
# supernet (configs/fashion_mnist.yaml, about 3.2 hours on 2 cores) meets the min target, not the max one.
MEASURED = {"max": 92.76, "min": 91.53}
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
@pytest.mark.parametrize(
    "arch",
    ["min", pytest.param("max", marks=pytest.mark.xfail(strict=True, reason="0.8 points short (#4)"))],
)
def test_shipped_supernet_meets_the_targets(scores, arch):
    assert scores[arch] >= TARGETS[arch]


def test_shipped_predictor_fits_the_supernet_and_ranks_subnets():
    space = zoo.ofa_net(NET_ID).search_space()
    predictor = AccuracyPredictor.load(zoo.pretrained_predictor_path(NET_ID), space)
    # Fitted on 1,000 subnets of the shipped supernet (2,000 held-out images each); on the 200 held-out
    # subnets Kendall tau 0.50, RMSE 0.41 points.
    assert predictor.metrics["kendall_tau"] > 0.45 and 100 * predictor.metrics["rmse"] < 0.5
    predict = predictor.bind(space)
    largest, smallest = space.encode([space.max_arch(28), space.min_arch(20)])
    assert predict(largest[None])[0] > predict(smallest[None])[0]
