"""Accuracy predictor (fit, save/load, space checks) and the resumable accuracy dataset."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from scipy.stats import kendalltau

from onceforall import OFAMobileNetV3
from onceforall.errors import PredictorError
from onceforall.specialize.accuracy_dataset import AccuracyDataset, collect_accuracy_dataset, unique_samples
from onceforall.specialize.predictor import AccuracyPredictor, fit_predictor, loss_calibrated, split
from onceforall.specialize.timing import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine the thread pool only adds waiting."""
    with torch_threads(1):
        yield


def make_space(resolutions=(24, 28), ks_list=(3, 5, 7)):
    net = OFAMobileNetV3(
        n_classes=10,
        width_mult=0.5,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 2, 1, 1),
        resolutions=resolutions,
        ks_list=list(ks_list),
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )
    return net.search_space()


@pytest.fixture(scope="module")
def space():
    return make_space()


def synthetic(space, population):
    """A known accuracy function: additive per-choice effects plus one interaction, as fractions."""
    weights = 0.01 * torch.randn(space.onehot_dim, generator=torch.Generator().manual_seed(7))
    x = space.onehot(population)
    return 0.8 + x @ weights + 0.01 * x[:, 0] * x[:, 5]


def test_mlp_shape_and_base_acc(space):
    predictor = AccuracyPredictor.for_space(space)
    names = [n for n, _ in predictor.state_dict().items()]
    assert names == [  # the official AccuracyPredictor's layout
        "base_acc",
        "layers.0.0.weight",
        "layers.0.0.bias",
        "layers.1.0.weight",
        "layers.1.0.bias",
        "layers.2.0.weight",
        "layers.2.0.bias",
        "layers.3.weight",
    ]
    assert predictor.layers[0][0].in_features == space.onehot_dim and predictor.layers[3].bias is None
    assert [predictor.layers[i][0].out_features for i in range(3)] == [400, 400, 400]
    assert not predictor.base_acc.requires_grad


@pytest.fixture(scope="module")
def fitted(space):
    population = space.canonical(unique_samples(space, 2000, seed=1))
    accuracy = synthetic(space, population)
    return population, accuracy, *fit_predictor(space, population, accuracy, epochs=30, seed=0)


def test_fit_recovers_a_synthetic_function(space, fitted):
    population, accuracy, predictor, metrics = fitted
    assert (metrics.n_train, metrics.n_test) == (1600, 400)
    spread = accuracy.std().item()  # the RMSE of predicting the mean: 4.5 points
    assert metrics.rmse < 0.25 * spread and metrics.mae < metrics.rmse  # measured 0.16 x spread
    assert metrics.kendall_tau > 0.85 and metrics.spearman > 0.97  # measured 0.905 and 0.988
    assert predictor.base_acc.item() == pytest.approx(accuracy.mean().item(), abs=0.003)
    # one call predicts a whole population
    assert predictor.predict(space, population[:7]).shape == (7,)


def test_fit_is_deterministic(space, fitted):
    population, accuracy = fitted[:2]
    again, metrics_again = fit_predictor(space, population[:200], accuracy[:200], epochs=3, seed=5)
    twice, metrics_twice = fit_predictor(space, population[:200], accuracy[:200], epochs=3, seed=5)
    assert metrics_again.rmse == metrics_twice.rmse
    for a, b in zip(again.parameters(), twice.parameters()):
        assert torch.equal(a, b)


def test_bad_targets_are_refused(space):
    population = space.sample(10)
    with pytest.raises(PredictorError, match="divide percentages by 100"):
        fit_predictor(space, population, torch.full((10,), 76.5))
    with pytest.raises(PredictorError, match="10 archs but 9 accuracies"):
        fit_predictor(space, population, torch.rand(9))


def test_save_load_and_space_checks(space, fitted, tmp_path):
    population, _, predictor, metrics = fitted
    path = predictor.save(tmp_path / "p.pt", metrics.to_dict())
    loaded = AccuracyPredictor.load(path, space)
    assert torch.equal(loaded.predict(space, population[:50]), predictor.predict(space, population[:50]))
    assert loaded.metrics["rmse"] == metrics.rmse
    with pytest.raises(PredictorError, match="encoding dim differs"):  # other resolutions
        AccuracyPredictor.load(path, make_space(resolutions=(20, 24, 28)))
    with pytest.raises(PredictorError, match="encoding genes differ"):  # same width, other choices
        AccuracyPredictor.load(path, make_space(resolutions=(24, 32)))
    with pytest.raises(PredictorError, match="trained on space"):
        AccuracyPredictor.load(path, make_space(ks_list=(3, 5))).predict(space, population)
    with pytest.raises(PredictorError, match="does not exist"):
        AccuracyPredictor.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PredictorError, match="not a readable predictor"):
        AccuracyPredictor.load(tmp_path / "junk.pt")


# --------------------------------------------------------------------------- the dataset
def test_dataset_keeps_good_rows_and_reports_bad_lines(space, tmp_path):
    dataset = AccuracyDataset(tmp_path / "acc.jsonl")
    archs = space.decode(space.sample(4, torch.Generator().manual_seed(0)))
    for i, arch in enumerate(archs[:3]):
        dataset.append(arch, 0.5 + i / 10, {"i": i})
    with open(dataset.path, "a") as handle:
        handle.write("this is not json\n")  # line 4
    dataset.append(archs[3], 0.9)  # line 5
    with open(dataset.path, "a") as handle:
        handle.write('{"arch": {"space": "x", "image_')  # line 6, cut by a kill
    with pytest.warns(UserWarning) as caught:
        rows = dataset.read()
    assert [r.accuracy for r in rows] == [0.5, 0.6, 0.7, 0.9]
    assert [r.arch for r in rows] == archs and rows[1].meta == {"i": 1}
    assert [n for n, _ in dataset.problems] == [4, 6]
    assert "truncated" in dataset.problems[1][1]
    assert {":4:" in str(w.message) or ":6:" in str(w.message) for w in caught} == {True}
    population, accuracy = dataset.population(space, warn=False)
    assert torch.equal(population, space.encode(archs)) and accuracy.tolist() == pytest.approx(
        [0.5, 0.6, 0.7, 0.9]
    )
    with pytest.raises(PredictorError, match="not 'other'"):
        dataset.population(type(space)("other", space.genes, space.stages, space.n_slots), warn=False)


def test_collect_resumes_after_a_kill_and_shards(space, tmp_path):
    path = tmp_path / "acc.jsonl"
    calls, kill_at = [], [11]

    def evaluate(arch):
        calls.append(arch)
        if len(calls) == kill_at[0]:
            raise KeyboardInterrupt("killed")
        return float(synthetic(space, space.encode(arch))[0])

    with pytest.raises(KeyboardInterrupt):
        collect_accuracy_dataset(evaluate, space, 30, path, seed=3, progress=False)
    assert len(AccuracyDataset(path)) == 10
    kill_at[0] = None
    with open(path, "a") as handle:
        handle.write('{"arch": {"spa')  # the kill also cut a line
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = collect_accuracy_dataset(evaluate, space, 30, path, seed=3, progress=False)
    assert (summary.planned, summary.skipped, summary.evaluated) == (30, 10, 20) and len(calls) == 20
    assert (tmp_path / "acc.jsonl.corrupt").read_text() == '{"arch": {"spa\n'
    rows = AccuracyDataset(path).read()
    keys = {tuple(space.canonical(space.encode(r.arch))[0].tolist()) for r in rows}
    assert len(rows) == len(keys) == 30
    assert keys == {tuple(r) for r in unique_samples(space, 30, seed=3).tolist()}
    for r in rows:
        assert r.accuracy == pytest.approx(float(synthetic(space, space.encode(r.arch))[0]))
    # two shards evaluate disjoint halves of the same list; a finished run evaluates nothing
    shard_rows = []
    for rank in range(2):
        part = tmp_path / f"rank{rank}.jsonl"
        collect_accuracy_dataset(evaluate, space, 30, part, seed=3, shard=(rank, 2), progress=False)
        shard_rows.append({tuple(space.encode(r.arch)[0].tolist()) for r in AccuracyDataset(part).read()})
    assert not shard_rows[0] & shard_rows[1] and shard_rows[0] | shard_rows[1] == keys
    calls.clear()
    collect_accuracy_dataset(evaluate, space, 30, path, seed=3, progress=False)
    assert calls == []


def test_rows_keep_their_loss_and_old_rows_have_none(space, tmp_path):
    dataset = AccuracyDataset(tmp_path / "acc.jsonl")
    archs = space.decode(space.sample(3, torch.Generator().manual_seed(1)))
    dataset.append(archs[0], 0.9, loss=0.25)
    dataset.append(archs[1], 0.8)  # a row written before losses were recorded
    with open(dataset.path, "a") as handle:  # a loss that is no loss: the row is malformed
        handle.write(json.dumps({"arch": archs[2].to_dict(), "accuracy": 0.7, "loss": -1}) + "\n")
    rows = dataset.read(warn=False)
    assert [(r.accuracy, r.loss) for r in rows] == [(0.9, 0.25), (0.8, None)]
    assert dataset.problems[0][0] == 3 and "loss -1" in dataset.problems[0][1]
    with pytest.raises(PredictorError, match=r"1 of 2 rows .* have no loss .*--label accuracy"):
        dataset.losses()


def test_collect_records_the_loss_the_evaluator_returns(space, tmp_path):
    path = tmp_path / "acc.jsonl"
    collect_accuracy_dataset(
        lambda arch: (arch.image_size / 100, arch.image_size / 10), space, 4, path, progress=False
    )
    rows = AccuracyDataset(path).read()
    assert [r.loss for r in rows] == pytest.approx([10 * r.accuracy for r in rows]) and len(rows) == 4


def test_loss_calibrated_labels_are_the_least_squares_line():
    loss = torch.tensor([0.2, 0.3, 0.4, 0.5, 0.6])
    accuracy = torch.tensor([0.95, 0.92, 0.93, 0.88, 0.87])  # noisy around 1.0 - 0.2 * loss
    rows = torch.tensor([0, 1, 2, 3])  # the line is fitted on these rows only
    x, y = loss[rows].double(), accuracy[rows].double()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    expected = y.mean() + slope * (loss.double() - x.mean())
    assert slope == pytest.approx(-0.2)
    assert torch.allclose(loss_calibrated(accuracy, loss, rows).double(), expected, atol=1e-7)


def test_fit_to_loss_calibrated_labels_reports_both(space):
    population = unique_samples(space, 400, seed=3)
    true = synthetic(space, population)
    # Measured top-1 = truth + counting noise; the loss is an exact (decreasing) function of the truth.
    noisy = true + 0.06 * torch.randn(len(true), generator=torch.Generator().manual_seed(4))
    loss = 2.0 - 2.0 * true
    plain_model, plain = fit_predictor(space, population, noisy, epochs=100)
    model, calibrated = fit_predictor(space, population, noisy, epochs=100, loss=loss)
    assert (plain.label, plain.measured) == ("accuracy", None)
    assert calibrated.label == "loss-calibrated"
    assert set(calibrated.measured) == {"rmse", "mae", "kendall_tau", "spearman"}
    _, test = split(len(population), 0.2, 0)  # the rows both fits held out

    def tau_to_truth(predictor: AccuracyPredictor) -> float:
        return float(kendalltau(predictor.predict(space, population[test]), true[test]).statistic)

    # Labels without the counting noise rank held-out subnets closer to the truth.
    assert tau_to_truth(model) > tau_to_truth(plain_model) + 0.15, (
        tau_to_truth(model),
        tau_to_truth(plain_model),
    )
    with pytest.raises(PredictorError, match="one finite, non-negative loss per row"):
        fit_predictor(space, population, noisy, epochs=1, loss=loss[:-1])
