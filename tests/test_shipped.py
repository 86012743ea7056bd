"""The supernet and accuracy predictor shipped in the package (`ofa_mbv3_fashion_mnist`)."""

import pytest
from test_train import needs_data

from onceforall import zoo
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.train.evaluation_cli import evaluate_subnet

NET_ID = "ofa_mbv3_fashion_mnist"


def test_shipped_files_are_small_enough():
    assert zoo.pretrained_path(NET_ID).stat().st_size <= 20 * 2**20
    assert zoo.pretrained_predictor_path(NET_ID).stat().st_size <= 5 * 2**20


@needs_data
@pytest.mark.parametrize(("arch", "target"), [("max", 93.0), ("min", 90.0)])
def test_shipped_supernet_meets_its_test_accuracy_targets(arch, target):
    result = evaluate_subnet(NET_ID, arch, None, None, None, "cpu")
    assert result["images"] == 10000 and result["image_size"] == 28
    assert result["top1"] >= target


def test_shipped_predictor_fits_the_supernet_and_ranks_subnets():
    space = zoo.ofa_net(NET_ID).search_space()
    predictor = AccuracyPredictor.load(zoo.pretrained_predictor_path(NET_ID), space)
    metrics = predictor.metrics
    assert metrics["n_train"] + metrics["n_test"] >= 1000
    assert metrics["kendall_tau"] > 0.5 and 100 * metrics["rmse"] < 1.0
    predict = predictor.bind(space)
    largest, smallest = space.encode([space.max_arch(28), space.min_arch(20)])
    assert predict(largest[None])[0] > predict(smallest[None])[0]
