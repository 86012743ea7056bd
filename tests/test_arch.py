"""Arch and SearchSpace: JSON, validation, counting, population operators, encoding."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onceforall import Arch, ArchError, OFAMobileNetV3

SPACE = OFAMobileNetV3(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]).search_space()


def test_counts_exact():
    assert SPACE.count() == 7371**5
    assert SPACE.count(include_resolution=True) == 7371**5 * 25
    assert SPACE.resolutions == tuple(range(128, 225, 4))


def test_json_round_trip(tmp_path):
    for arch in SPACE.decode(SPACE.sample(20, torch.Generator().manual_seed(0))):
        assert Arch.from_json(arch.to_json()) == arch
    path = tmp_path / "arch.json"
    arch = SPACE.max_arch(160)
    arch.to_json(path)
    assert Arch.from_json(path) == arch
    data = json.loads(path.read_text())
    assert data["format"] == "onceforall.arch" and data["version"] == 1 and data["space"] == SPACE.name


def test_official_dict_is_accepted():
    official = {"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "image_size": 224}
    assert SPACE.validate(Arch.from_dict(official, space=SPACE.name)) == SPACE.max_arch()


def test_encode_decode_round_trip():
    pop = SPACE.sample(100, torch.Generator().manual_seed(1))
    assert torch.equal(SPACE.encode(SPACE.decode(pop)), pop)


def test_same_seed_same_samples_and_operators():
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        pop = SPACE.sample(50, g)
        return pop, SPACE.mutate(pop, g), SPACE.crossover(pop, pop.flip(0), g)

    for a, b in zip(run(7), run(7)):
        assert torch.equal(a, b)
    assert not torch.equal(run(7)[0], run(8)[0])


def test_mutation_rates_and_pairing():
    g = torch.Generator().manual_seed(0)
    pop = torch.zeros(4000, SPACE.n_genes, dtype=torch.long)
    mutated = SPACE.mutate(pop, g, prob={"block": 0.3, "resolution": 0.0, "depth": 0.0})
    ks, e = SPACE.field_genes("ks"), SPACE.field_genes("e")
    assert torch.equal(mutated[:, SPACE.field_genes("d")], pop[:, SPACE.field_genes("d")])
    assert torch.equal(mutated[:, 0], pop[:, 0])
    changed = (mutated[:, ks] != 0) | (mutated[:, e] != 0)
    # a block is resampled with p=0.3 and then differs from (0, 0) with p=8/9
    assert changed.float().mean().item() == pytest.approx(0.3 * 8 / 9, abs=0.01)


def test_crossover_takes_each_gene_from_a_parent():
    g = torch.Generator().manual_seed(0)
    a, b = SPACE.sample(200, g), SPACE.sample(200, g)
    child = SPACE.crossover(a, b, g)
    assert torch.all((child == a) | (child == b))
    assert 0.4 < (child == a).float().mean().item() < 0.8


def test_active_and_onehot():
    pop = SPACE.encode([SPACE.min_arch(128), SPACE.max_arch(224)])
    active = SPACE.active(pop)
    assert active.sum(1).tolist() == [10, 20]
    features = SPACE.onehot(pop)
    assert features.shape == (2, 25 + 60 + 60)
    assert features.sum(1).tolist() == [1 + 10 + 10, 1 + 20 + 20]
    assert features[0, 0] == 1 and features[1, 24] == 1
    block = features[0, 25:85].view(20, 3)
    assert block[2:4].sum() == 0 and block[0, 0] == 1  # skipped slots are all-zero


def test_canonical_makes_equal_subnets_equal():
    pop = SPACE.encode([SPACE.min_arch()] * 2)
    pop[1, SPACE.field_genes("ks")[3]] = 2  # slot 3 is skipped at depth 2
    assert not torch.equal(pop[0], pop[1])
    canon = SPACE.canonical(pop)
    assert torch.equal(canon[0], canon[1])


def test_population_errors():
    with pytest.raises(ArchError, match=r"has 3 genes; space .* has 46"):
        SPACE.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ArchError, match="outside their gene's range"):
        SPACE.decode(torch.full((1, SPACE.n_genes), 5))


def valid_dict():
    return {"space": SPACE.name, "image_size": 160, "ks": [3] * 20, "e": [4] * 20, "d": [3] * 5}


MALFORMED = st.one_of(
    st.tuples(
        st.just("ks"), st.lists(st.sampled_from([3, 5, 7]), max_size=30).filter(lambda v: len(v) != 20)
    ),
    st.tuples(st.just("e"), st.lists(st.sampled_from([3, 4, 6]), max_size=30).filter(lambda v: len(v) != 20)),
    st.tuples(st.just("d"), st.lists(st.sampled_from([2, 3, 4]), max_size=8).filter(lambda v: len(v) != 5)),
    st.tuples(st.just("ks"), st.just([3] * 19 + [9])),
    st.tuples(st.just("e"), st.just([5] + [3] * 19)),
    st.tuples(st.just("d"), st.just([2, 3, 4, 1, 2])),
    st.tuples(st.just("image_size"), st.integers(-5, 400).filter(lambda r: r not in SPACE.resolutions)),
    st.tuples(st.just("ks"), st.just(["3"] * 20)),
    st.tuples(st.just("d"), st.just([True] * 5)),
    st.tuples(st.just("image_size"), st.just("224")),
    st.tuples(st.just("e"), st.just("346")),
)


@settings(max_examples=60, deadline=None)
@given(MALFORMED)
def test_malformed_archs_raise_clear_errors(change):
    key, value = change
    data = {**valid_dict(), key: value}
    with pytest.raises(ArchError) as err:
        SPACE.validate(Arch.from_dict(data))
    message = str(err.value)
    assert key in message
    assert "choices are" in message or "expects" in message or "must be" in message


def test_other_space_and_unknown_keys():
    with pytest.raises(ArchError, match="belongs to space 'other'"):
        SPACE.validate(Arch.from_dict({**valid_dict(), "space": "other"}))
    with pytest.raises(ArchError, match=r"unknown arch keys \['kernel'\]"):
        Arch.from_dict({**valid_dict(), "kernel": [3]})
    with pytest.raises(ArchError, match="malformed"):
        Arch.from_json("{not json")
    with pytest.raises(ArchError, match="version 2 is not supported"):
        Arch.from_dict({**valid_dict(), "version": 2})
