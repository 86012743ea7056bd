"""Arch and SearchSpace: JSON, validation, counting, population operators, encoding."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onceforall import Arch, ArchError, OFAMobileNetV3
from onceforall.arch import DEFAULT_MUTATION, Gene, GeneTable, SearchSpace, Stage

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


def odd_space() -> SearchSpace:
    """The structures the real spaces use, in one small space built without a supernet.

    A stem-like stage whose depth gene is (0, 2) over one gene-less slot (ResNet's stem), a stage
    with a base depth and three gated slots, a slot in no stage (always runs), width genes, a
    one-choice gene and a depth gene that gates nothing (as the last ProxylessNAS stage).
    """
    genes = (
        Gene("image_size", None, (24, 28, 32), "resolution", 0),
        Gene("d", 0, (0, 2), "depth", 1),
        Gene("d", 1, (0, 1, 2), "depth", 2),
        Gene("d", 2, (1,), "depth", 3),
        Gene("w", 0, (0, 1), "width", 4),
        Gene("w", 1, (0, 1, 2), "width", 5),
        Gene("ks", 0, (3, 5), "block", 6, 1),
        Gene("ks", 1, (3, 5), "block", 7, 2),
        Gene("ks", 2, (3, 5), "block", 8, 3),
        Gene("ks", 3, (3, 5, 7), "block", 9, 4),
        Gene("e", 0, (3, 4, 6), "block", 6, 1),
        Gene("e", 1, (3, 4, 6), "block", 7, 2),
        Gene("e", 2, (3, 4, 6), "block", 8, 3),
        Gene("e", 3, (3, 4, 6), "block", 9, 4),
    )
    stages = (Stage(1, 0, (0,)), Stage(2, 1, (1, 2, 3)), Stage(3, 0, ()))
    return SearchSpace("odd", genes, stages, 5)


def loop_active(space: SearchSpace, population: torch.Tensor) -> torch.Tensor:
    """The definition, one arch and one slot at a time: slot j of a stage runs iff j < base + depth."""
    active = torch.ones(len(population), space.n_slots, dtype=torch.bool)
    for row, arch in enumerate(population.tolist()):
        for stage in space.stages:
            depth = space.genes[stage.depth_gene].choices[arch[stage.depth_gene]] + stage.base
            for position, slot in enumerate(stage.slots):
                active[row, slot] = position < depth
    return active


def loop_onehot(space: SearchSpace, population: torch.Tensor) -> torch.Tensor:
    """The definition: per encoded gene its one-hot block, all-zero when the gene's slot is skipped."""
    active = loop_active(space, population)
    rows = []
    for row, arch in enumerate(population.tolist()):
        features = []
        for i in space.encoded_genes:
            gene = space.genes[i]
            block = [0.0] * len(gene.choices)
            if gene.slot is None or active[row, gene.slot]:
                block[arch[i]] = 1.0
            features += block
        rows.append(features)
    return torch.tensor(rows).reshape(len(population), -1)


@pytest.mark.parametrize("space", [SPACE, odd_space()], ids=["mbv3", "odd"])
def test_active_canonical_and_onehot_match_their_definitions(space):
    population = space.sample(400, torch.Generator().manual_seed(3))
    active = loop_active(space, population)
    assert torch.equal(space.active(population), active)
    gated = [i for i, g in enumerate(space.genes) if g.slot is not None]
    expected = population.clone()
    for i in gated:
        expected[~active[:, space.genes[i].slot], i] = 0
    assert torch.equal(space.canonical(population), expected)
    features = space.onehot(population)
    assert features.dtype == torch.float32 and features.shape == (400, space.onehot_dim)
    assert torch.equal(features, loop_onehot(space, population))
    assert torch.equal(space.onehot(space.canonical(population)), features)  # skipped genes do not matter


def test_odd_space_structure():
    space = odd_space()
    # d[1] is implied by which of its gated slots are zero; d[0] gates a gene-less slot and d[2]
    # gates nothing, so both are encoded.
    assert space.encoded_genes == [0, 1, 3, 4, 5, *range(6, 14)]
    assert space.onehot_dim == 3 + 2 + 1 + 2 + 3 + (2 + 2 + 2 + 3) + 3 * 4
    row = torch.tensor([[2, 0, 0, 0, 1, 2, 1, 1, 1, 2, 2, 2, 2, 2]])
    assert space.active(row).tolist() == [[False, True, False, False, True]]
    assert space.canonical(row).tolist() == [[2, 0, 0, 0, 1, 2, 1, 0, 0, 2, 2, 0, 0, 2]]


def reference_mutate(space, population, generator, prob):
    """Mutation as it was specified: per gene group one uniform draw against its kind's rate, then
    fresh uniform samples for the whole population, kept where the group was hit."""
    prob = {**DEFAULT_MUTATION, **prob}
    groups = torch.tensor([g.group for g in space.genes])
    rates = torch.zeros(int(groups.max()) + 1, dtype=torch.float64)
    for g in space.genes:
        rates[g.group] = prob[g.kind]
    hit = torch.rand(len(population), len(rates), generator=generator, dtype=torch.float64) < rates
    n_choices = torch.tensor([len(g.choices) for g in space.genes], dtype=torch.float64)
    u = torch.rand(len(population), space.n_genes, generator=generator, dtype=torch.float64)
    return torch.where(hit[:, groups], (u * n_choices).long(), population)


@pytest.mark.parametrize("space", [SPACE, odd_space()], ids=["mbv3", "odd"])
@pytest.mark.parametrize("prob", [{}, {"block": 0.5, "width": 0.9}, {"resolution": 0.0, "depth": 1.0}])
def test_mutation_draws_the_specified_stream(space, prob):
    """Same generator state in, same population out as the specification (searches stay reproducible)."""
    population = space.sample(300, torch.Generator().manual_seed(5))
    ours = space.mutate(population, torch.Generator().manual_seed(6), prob=prob)
    assert torch.equal(ours, reference_mutate(space, population, torch.Generator().manual_seed(6), prob))
    g = torch.Generator().manual_seed(7)
    u = torch.rand(10, space.n_genes, generator=g, dtype=torch.float64)
    limits = torch.tensor([len(gene.choices) for gene in space.genes], dtype=torch.float64)
    assert torch.equal(space.sample(10, torch.Generator().manual_seed(7)), (u * limits).long())


def test_mutation_rates_are_checked():
    assert SPACE.mutation_rates().tolist()[:2] == [DEFAULT_MUTATION["resolution"], DEFAULT_MUTATION["depth"]]
    with pytest.raises(ArchError, match=r"unknown gene kinds \['kernel'\]; kinds are \['block', 'depth'"):
        SPACE.mutate(SPACE.sample(2), prob={"kernel": 0.2})
    with pytest.raises(ArchError, match=r"\{'block': 1.5\} are not in \[0, 1\]"):
        SPACE.mutation_rates({"block": 1.5})


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


def test_gene_table_looks_genes_up_by_name():
    genes = GeneTable()
    genes.add("image_size", None, (24, 28), "resolution")
    genes.add("d", 0, (1, 2), "depth")
    for slot in range(2):
        genes.add("ks", slot, (3, 5), "block", slot=slot, mutates_with=("block", slot))
    for slot in range(2):
        genes.add("e", slot, (3, 6), "block", slot=slot, mutates_with=("block", slot))
    assert [genes["image_size"], genes["d", 0], genes["ks", 1], genes["e", 0]] == [0, 1, 3, 4]
    # a block's kernel and expand ratio share its group, numbered in the order of first use
    assert [g.group for g in genes.genes] == [0, 1, 2, 3, 2, 3]
    site = genes.site(["image_size", ("e", 1)], lambda r, e: (r, e), slot=1)
    assert site.genes == (0, 5) and site.slot == 1
    space = genes.space("toy", [genes.stage(("d", 0), [0, 1])], 2, [site])
    assert space.count() == 4 + 4 * 4  # depth 1: one block of 2x2 choices; depth 2: two blocks
    with pytest.raises(ArchError, match=r"no gene ks\[2\]"):
        genes["ks", 2]
    with pytest.raises(ArchError, match=r"gene d\[0\] is declared twice"):
        genes.add("d", 0, (1, 2), "depth")
