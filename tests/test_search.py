"""Searches over populations: constraint, determinism, infeasible budgets, random baseline, NSGA-II."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onceforall import OFAMobileNetV3
from onceforall.errors import ArchError, SearchError
from onceforall.specialize import LayerTable, count_macs
from onceforall.specialize.search import _parents, evolution_search, nsga2_search, random_search
from onceforall.specialize.timing import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine the thread pool only adds waiting."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def space():
    net = OFAMobileNetV3(
        n_classes=10,
        width_mult=0.5,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 2, 1, 1),
        resolutions=(20, 24, 28),
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )
    return net.search_space()


@pytest.fixture(scope="module")
def macs(space):
    return LayerTable(space, lambda spec: spec.macs / 1e6)


@pytest.fixture(scope="module")
def params(space):
    return LayerTable(space, lambda spec: spec.params / 1e6)


@pytest.fixture(scope="module")
def accuracy(space, macs):
    """A synthetic predictor: saturating in MACs plus fixed per-choice effects."""
    effects = 0.003 * torch.randn(space.onehot_dim, generator=torch.Generator().manual_seed(0))
    top = macs(space.encode(space.max_arch())).item()
    return lambda population: (
        0.6 + 0.3 * (macs(population) / top).sqrt().float() + space.onehot(population) @ effects
    )


@pytest.fixture(scope="module")
def budget(space, macs):
    return macs(space.sample(2000, torch.Generator().manual_seed(1))).quantile(0.3).item()


def test_layer_table_is_the_sum_over_the_layers_that_run(space):
    """Against the definition, one arch and one layer at a time (integer MACs: float64 sums are exact)."""
    table = LayerTable(space, lambda spec: spec.macs, overhead=7.0)
    population = space.sample(300, torch.Generator().manual_seed(2))
    active = space.active(population)
    expected = []
    for row, arch in enumerate(population.tolist()):
        total = 7.0
        for site in space.sites:
            if site.slot is None or active[row, site.slot]:
                total += site.spec(*(space.genes[g].choices[arch[g]] for g in site.genes)).macs
        expected.append(total)
    assert torch.equal(table(population), torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(table(space.decode(population[:5])), table(population[:5]))
    assert torch.equal(table(space.canonical(population)), table(population))
    with pytest.raises(ArchError, match=f"has 3 genes; space .* has {space.n_genes}"):
        table(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ArchError, match="outside their gene's range"):
        table(torch.full((1, space.n_genes), 9))


def test_evolution_respects_the_budget_and_is_deterministic(space, accuracy, macs, budget):
    result = evolution_search(space, accuracy, macs, budget, generations=60, seed=0)
    # 25 parents + up to 50 mutants + 50 crossovers: slots whose draws were all infeasible or
    # already seen stay empty
    assert 25 < len(result.population) <= 125
    assert (result.efficiency <= budget).all()
    assert torch.equal(space.canonical(result.population), result.population)
    assert len(torch.unique(result.population, dim=0)) == len(result.population)
    assert torch.allclose(count_macs(space, result.population) / 1e6, result.efficiency)
    assert torch.allclose(accuracy(result.population), result.accuracy)
    assert (result.accuracy[:-1] >= result.accuracy[1:]).all()  # best first
    assert len(result.history) == 61 and (result.history[1:] >= result.history[:-1]).all()
    assert result.best_accuracy == pytest.approx(result.history[-1].item())
    assert result.best_arch == space.decode(result.population[:1])[0]
    again = evolution_search(space, accuracy, macs, budget, generations=60, seed=0)
    assert torch.equal(again.population, result.population) and torch.equal(again.history, result.history)
    other = evolution_search(space, accuracy, macs, budget, generations=60, seed=1)
    assert not torch.equal(other.population, result.population)
    assert result.to_dict()["best"]["efficiency"] <= budget


def test_evolution_predicts_each_subnet_once(space, accuracy, macs, budget):
    predicted = []

    def recording(population):
        predicted.append(population)
        return accuracy(population)

    evolution_search(space, recording, macs, budget, generations=40, seed=0)
    rows = torch.cat(predicted)
    assert torch.equal(space.canonical(rows), rows)
    assert len(torch.unique(rows, dim=0)) == len(rows) > 100 + 40 * 25


def test_parents_are_spread_over_niches():
    acc = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95, 0.3])
    niche = torch.tensor([0, 0, 0, 0, 1, 1, 0, 2])
    # at most 2 per niche, best first: 6 and 0 from niche 0, then 4, 5 (niche 1) and 7 (niche 2)
    assert _parents(acc, niche, n=10, per_niche=2).tolist() == [6, 0, 4, 5, 7]
    assert _parents(acc, niche, n=3, per_niche=2).tolist() == [6, 0, 4]
    assert _parents(acc, niche, n=3, per_niche=8).tolist() == [6, 0, 1]  # one niche: the plain top 3


def test_evolution_beats_random_search(space, accuracy, macs, budget):
    evolution = evolution_search(space, accuracy, macs, budget, generations=100, seed=0)
    baseline = random_search(space, accuracy, macs, budget, n=10_100, seed=0)
    assert (baseline.efficiency <= budget).all() and baseline.evaluated == 10_100
    assert evolution.best_accuracy > baseline.best_accuracy + 0.002


def test_infeasible_budget_names_the_minimum(space, accuracy, macs, params):
    smallest = macs(space.encode(space.min_arch(20))).item()
    with pytest.raises(SearchError, match=rf"smallest achievable is {smallest:.4g} MMACs .*resolution 20"):
        evolution_search(space, accuracy, macs, 0.9 * smallest, unit="MMACs")
    with pytest.raises(SearchError, match=f"{smallest:.4g}"):
        random_search(space, accuracy, macs, 0.9 * smallest)


def test_tight_budget_terminates_with_feasible_archs(space, accuracy, macs):
    budget = 1.0001 * macs(space.encode(space.min_arch(20))).item()  # hardly any arch fits
    result = evolution_search(space, accuracy, macs, budget, generations=5, seed=0, max_tries=3)
    assert 1 <= len(result.population) <= 125 and (result.efficiency <= budget).all()


def test_bad_evolution_settings_name_the_rule(space, accuracy, macs, budget):
    with pytest.raises(SearchError, match=r"draws=0: need population_size >= 2, .* draws >= 1"):
        evolution_search(space, accuracy, macs, budget, draws=0)


def test_several_constraints(space, accuracy, macs, params, budget):
    both = lambda population: torch.stack([macs(population), params(population)], -1)  # noqa: E731
    limit_params = params(space.sample(500, torch.Generator().manual_seed(4))).median().item()
    result = evolution_search(space, accuracy, both, [budget, limit_params], generations=20, seed=0)
    assert result.efficiency.shape[1] == 2 and 25 < len(result.efficiency) <= 125
    assert (result.efficiency[:, 0] <= budget).all() and (result.efficiency[:, 1] <= limit_params).all()


def test_nsga2_front_is_non_dominated(space, accuracy, macs, params):
    from pymoo.indicators.hv import HV

    result = nsga2_search(
        space, accuracy, {"macs": macs, "params": params}, population_size=40, generations=15
    )
    acc, m, p = result.accuracy, result.objectives["macs"], result.objectives["params"]
    assert torch.allclose(acc.float(), accuracy(result.population), atol=1e-6)
    assert torch.allclose(m, macs(result.population)) and torch.allclose(p, params(result.population))
    assert (m[1:] >= m[:-1]).all()  # sorted by the first objective
    for i in range(len(acc)):
        dominated = (acc >= acc[i]) & (m <= m[i]) & (p <= p[i]) & ((acc > acc[i]) | (m < m[i]) | (p < p[i]))
        assert not dominated.any()
    f = np.stack([-acc.numpy(), m.numpy(), p.numpy()], 1)
    assert (
        result.hypervolume == pytest.approx(HV(ref_point=np.array(result.ref_point))(f))
        and result.hypervolume > 0
    )
    assert len(result.history) == 15 and result.history[-1] > result.history[0]  # (crowding may drop points)
    again = nsga2_search(
        space, accuracy, {"macs": macs, "params": params}, population_size=40, generations=15
    )
    assert torch.equal(again.population, result.population)
    assert result.to_dict()["objectives"] == ["accuracy", "macs", "params"]
