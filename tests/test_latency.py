"""Latency tables: spec building, resume after a crash, shards, settings checks, gather-and-sum, validation."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import astuple

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from onceforall import OFAMobileNetV3
from onceforall.cost import distinct_specs
from onceforall.errors import LatencyTableError
from onceforall.nn.spec import LayerSpec
from onceforall.specialize.latency_build import (
    _fit_calibration_terms,
    build_latency_table,
    calibrate_latency_table,
    layer_measurer,
    merge_latency_tables,
    table_measurer,
)
from onceforall.specialize.latency_table import LatencyTable, SpecChain, spec_key, subnet_specs
from onceforall.specialize.latency_validate import validate_latency_table
from onceforall.specialize.timing import (
    Measurer,
    Timing,
    current_settings,
    measure_rounds,
    torch_threads,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine the thread pool only adds waiting."""
    with torch_threads(1):
        yield


OVERHEAD = 0.25  # ms the fake backend adds to every whole subnet


def small_net(resolutions=(12, 16), **kw) -> OFAMobileNetV3:
    lists = dict(ks_list=[3, 5], expand_ratio_list=[3, 6], depth_list=[1, 2])
    lists.update(kw)
    return OFAMobileNetV3(
        n_classes=10,
        width_mult=0.25,
        in_channels=1,
        first_stride=1,
        stage_strides=(2, 2, 1, 1, 1),
        resolutions=resolutions,
        dropout_rate=0,
        **lists,
    )


@pytest.fixture(scope="module")
def space():
    return small_net().search_space()


def spec_cost(spec: LayerSpec) -> float:
    """The fake backend's latency of one layer: a deterministic function of its shapes."""
    return 0.01 + 1e-5 * spec.params + 1e-6 * math.prod(spec.input_shape(1))


class FakeBackend:
    """`measure(module, shape) -> timer`: counts timer calls per layer, optionally dies after `crash_after`."""

    def __init__(self, crash_after: int | None = None, scale: float = 1.0, per_mparam: float = 0.0):
        self.calls: Counter = Counter()
        self.crash_after, self.scale, self.per_mparam = crash_after, scale, per_mparam

    def __call__(self, module, shape):
        if isinstance(module, SpecChain):  # a whole network: its layers, then its weights from memory
            weights = self.per_mparam * sum(s.params for s in module.specs) / 1e6
            key, value = None, self.scale * sum(spec_cost(s) for s in module.specs) + weights + OVERHEAD
        else:
            spec = module.spec
            key, value = spec_key(spec), spec_cost(spec)

        def timer() -> Timing:
            if self.crash_after is not None and sum(self.calls.values()) >= self.crash_after:
                raise KeyboardInterrupt("simulated kill")
            self.calls[key] += 1
            return Timing(value, value, value, 1)

        return timer


@pytest.fixture(autouse=True)
def _spec_on_modules(monkeypatch):
    """Let the fake backend see which spec a built layer came from."""
    build = LayerSpec.build

    def tagged(self):
        module = build(self)
        module.spec = self
        return module

    monkeypatch.setattr(LayerSpec, "build", tagged)


# --------------------------------------------------------------------------- specs
def test_built_layers_match_spec_macs_and_params():
    net = small_net(resolutions=(16,), ks_list=[3, 7], expand_ratio_list=[3, 6], depth_list=[1])
    specs = distinct_specs(net.search_space())
    specs += [  # the other ops of LayerSpec
        LayerSpec("conv", 9, 8, 8, 3, 1, act="relu", shortcut=True),
        LayerSpec("bottleneck", 9, 16, 32, 3, 2, 8, act="relu"),
        LayerSpec("bottleneck", 9, 32, 32, 3, 1, 8, act="relu", shortcut=True),
        LayerSpec("maxpool", 9, 8, 8, 3, 2),
        LayerSpec("mbconv", 9, 8, 8, 3, 1, 0, act="relu", shortcut=True),
    ]
    assert len(specs) == 31
    counter = FlopCounterMode(display=False)  # one counter (entering one is slow): count differences
    with counter, torch.no_grad():
        for spec in specs:
            layer = spec.build().eval()
            before = counter.get_total_flops()
            y = layer(torch.randn(spec.input_shape(2)))
            assert counter.get_total_flops() - before == 2 * 2 * spec.macs, spec
            assert sum(p.numel() for p in layer.parameters()) == spec.params, spec
            if spec.op != "linear":
                size = 1 if spec.op == "pool" else spec.out_size
                assert y.shape[1:] == (spec.out_channels, size, size), spec


def test_spec_chain_is_the_extracted_subnet(space):
    net = small_net()
    population = space.sample(3, torch.Generator().manual_seed(0))
    for arch, specs in zip(space.decode(population), subnet_specs(space, population)):
        net.set_arch(arch)
        subnet = net.get_active_subnet()
        chain = SpecChain(specs)
        assert sum(p.numel() for p in chain.parameters()) == sum(p.numel() for p in subnet.parameters())
        x = torch.randn(1, 1, arch.image_size, arch.image_size)
        assert chain(x).shape == subnet(x).shape == (1, 10)


# --------------------------------------------------------------------------- building and resuming
def test_build_measures_every_spec_rounds_times_and_calibrates(space, tmp_path):
    fake = FakeBackend()
    table = build_latency_table(space, tmp_path / "t.jsonl", rounds=3, measure=fake)
    keys = {spec_key(s) for s in distinct_specs(space)}
    assert set(table.layers) == keys
    assert {k: n for k, n in fake.calls.items() if k is not None} == {k: 3 for k in keys}
    cal = table.calibration
    assert cal.scale == pytest.approx(1.0, abs=1e-9) and cal.overhead_ms == pytest.approx(OVERHEAD, abs=1e-9)
    # reloading gives the same table; the file records settings
    loaded = LatencyTable.load(tmp_path / "t.jsonl", expect=current_settings("torch", "cpu", 1, 1))
    assert loaded.layers == table.layers
    assert loaded.meta["space"] == space.name and loaded.meta["resolutions"] == [12, 16]
    for key in ("device_name", "torch", "threads", "batch_size", "backend", "rounds", "statistic"):
        assert key in loaded.meta


def test_killed_build_resumes_without_remeasuring(space, tmp_path):
    path = tmp_path / "t.jsonl"
    n_specs = len(distinct_specs(space))
    first = FakeBackend(crash_after=n_specs + 7)  # dies in the middle of the build
    with pytest.raises(KeyboardInterrupt):
        build_latency_table(space, path, rounds=2, subnet_rounds=4, calibration_subnets=3, measure=first)
    assert 0 < first.calls[None] < 4 * 5  # some of the calibration subnets' rounds were measured
    with open(path, "a") as handle:  # and was killed in the middle of writing a line
        handle.write('{"type": "layer", "key": "conv|in_si')
    second = FakeBackend()
    table = build_latency_table(space, path, rounds=2, subnet_rounds=4, calibration_subnets=3, measure=second)
    keys = {spec_key(s) for s in distinct_specs(space)}
    assert sum(second.calls[k] for k in keys) < 2 * len(keys)  # resumed, not started again
    for key in keys:  # nothing measured twice over both runs
        assert first.calls[key] + second.calls[key] == 2
    assert first.calls[None] + second.calls[None] == 4 * (3 + 2)
    assert set(table.layers) == keys
    assert table.calibration.scale == pytest.approx(1.0, abs=1e-9)
    assert LatencyTable.load(path).layers == table.layers  # the cut line is gone, the file is clean
    # a finished table is not measured again
    third = FakeBackend()
    build_latency_table(space, path, rounds=2, subnet_rounds=4, calibration_subnets=3, measure=third)
    assert sum(third.calls.values()) == 0
    # resuming with another calibration set is refused: its rounds would mix two sets of subnets
    with pytest.raises(LatencyTableError, match="calibration_subnets: table 3, expected 5"):
        build_latency_table(space, path, rounds=2, subnet_rounds=4, calibration_subnets=5, measure=third)


def test_rounds_go_over_all_items_and_items_are_prepared_per_chunk():
    prepared, timed = Counter(), []

    def measure(module, shape):
        prepared[shape] += 1
        return lambda: timed.append(shape) or Timing(1.0, 1.0, 1.0, 1)

    items = [(torch.nn.Identity, (k,)) for k in range(5)]
    out = measure_rounds(items, measure, rounds=3)
    assert timed == [(k,) for _ in range(3) for k in range(5)]  # round by round over all items
    assert prepared == {(k,): 1 for k in range(5)} and [len(t) for t in out] == [3] * 5
    prepared.clear(), timed.clear()
    breaks = []
    measure_rounds(
        items,
        measure,
        rounds=2,
        chunk=2,
        skip=lambda i, r: (i, r) == (4, 0),
        breaks=[lambda k=k: breaks.append((k, len(timed))) for k in range(3)],
    )
    assert prepared == {(0,): 2, (1,): 2, (2,): 2, (3,): 2, (4,): 1}  # chunks of 2, again each round
    assert breaks == [(0, 3), (1, 6), (2, 9)]  # 9 timings to do, a break after every third
    breaks.clear()
    measure_rounds(items, measure, 1, skip=lambda i, r: True, breaks=[lambda: breaks.append("ran")] * 2)
    assert breaks == ["ran", "ran"]  # nothing left to time: the breaks still run


def test_calibration_subnets_are_timed_across_the_whole_build(space, tmp_path):
    order = []

    class Recording(FakeBackend):
        def __call__(self, module, shape):
            timer = super().__call__(module, shape)
            kind = "subnet" if isinstance(module, SpecChain) else "layer"

            def recorded() -> Timing:
                order.append(kind)
                return timer()

            return recorded

    build_latency_table(
        space, tmp_path / "t.jsonl", rounds=2, subnet_rounds=3, calibration_subnets=4, measure=Recording()
    )
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(order)]
    n_specs = len(distinct_specs(space))
    # layers, one round of the 6 subnets, layers, a round, layers, a round: three equal parts
    assert [kind for kind, _ in runs] == ["layer", "subnet"] * 3
    assert [n for kind, n in runs if kind == "subnet"] == [6, 6, 6]
    layer_runs = [n for kind, n in runs if kind == "layer"]
    assert sum(layer_runs) == 2 * n_specs and max(layer_runs) - min(layer_runs) <= 2


class SlowSpells(FakeBackend):
    """Whole subnets run `factors[r]` times slower in calibration round r; subnet 0 also 3x in round 0."""

    def __init__(self, factors: list[float]):
        super().__init__()
        self.factors, self.subnets = factors, 0

    def __call__(self, module, shape):
        timer = super().__call__(module, shape)
        if not isinstance(module, SpecChain):
            return timer
        index, calls = self.subnets, []
        self.subnets += 1

        def slowed() -> Timing:
            t = timer()
            factor = self.factors[len(calls)] * (3 if index == 0 and not calls else 1)
            calls.append(1)
            return Timing(*(factor * v for v in (t.median_ms, t.p10_ms, t.p90_ms)), t.repeats)

        return slowed


def test_build_slowdown_is_the_machines_speed_at_each_calibration_round(space, tmp_path):
    path = tmp_path / "t.jsonl"
    table = build_latency_table(
        space, path, subnet_rounds=3, calibration_subnets=4, measure=SlowSpells([1, 1.5, 1.1])
    )
    # the median over the 6 subnets: one subnet's own slow round does not move it
    assert table.build_slowdown() == pytest.approx([0.0, 50.0, 10.0], abs=1e-9)
    assert LatencyTable.load(path).build_slowdown() == pytest.approx([0.0, 50.0, 10.0], abs=1e-9)
    # an unfinished build: only the rounds every subnet has, each subnet against its fastest of those
    table.subnet_rounds[0][3] = Timing(0.1, 0.1, 0.1, 1)
    del table.subnet_rounds[1][2]
    assert table.build_slowdown() == pytest.approx([0.0, 50.0], abs=1e-9)
    table.subnet_rounds[2] = {r: Timing(0.0, 0.0, 0.0, 1) for r in range(2)}  # 0 ms: left out
    assert table.build_slowdown() == pytest.approx([0.0, 50.0], abs=1e-9)


def test_latency_build_warns_when_the_machine_changed_speed(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import onceforall.cli.latency as cli
    from onceforall.cli import app

    def built(factors):
        def build(*args, **kwargs):
            return build_latency_table(*args, **{**kwargs, "measure": SlowSpells(factors)})

        return build

    args = ["latency", "build", "--supernet", "ofa_mbv3_small", "--resolutions", "24", "--subnet-rounds", "3"]
    monkeypatch.setattr(cli, "build_latency_table", built([1, 1.2, 1.06]))
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "slow.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    warning = " ".join(result.stderr.split())
    assert (
        "calibration subnets ran a median 6.0 % (at worst 20.0 %) slower than their fastest round" in warning
    )
    assert "`ofa latency validate --supernet ofa_mbv3_small --resolutions 24 --table " in warning
    assert json.loads(result.stdout.strip().splitlines()[-1])["slowdown_pct"] == [0, 20, 6]
    monkeypatch.setattr(cli, "build_latency_table", built([1, 1.2, 1.04]))  # a median of 4 %: no warning
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "quiet.jsonl")])
    assert result.exit_code == 0 and "warning" not in result.output


def test_specialize_warns_when_the_table_it_built_was_measured_through_a_slow_spell(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import onceforall.workflow.specialize as workflow
    from onceforall.cli import app

    def build(*args, **kwargs):
        return build_latency_table(
            *args, **{**kwargs, "subnet_rounds": 3, "measure": SlowSpells([1, 1.2, 1.06])}
        )

    monkeypatch.setattr(workflow, "build_latency_table", build)
    table = tmp_path / "t.jsonl"
    args = ["specialize", "--supernet", "ofa_mbv3_fashion_mnist", "--table", str(table), "--budgets", "1us"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    # the warning comes once the table is built, before the (here impossible) budget stops the run
    assert result.exit_code == 2 and table.is_file() and not (tmp_path / "out").exists()
    output = " ".join(result.output.split())
    assert "warning: the machine changed speed while the latency table was measured" in output
    assert "a median 6.0 % (at worst 20.0 %) slower than their fastest round" in output
    check = f"`ofa latency validate --supernet ofa_mbv3_fashion_mnist --resolutions 20,24,28 --table {table}`"
    assert check in output
    assert "error:" in output


def test_shards_measure_disjoint_parts_and_merge(space, tmp_path):
    fakes = [FakeBackend(), FakeBackend()]
    paths = [tmp_path / f"s{r}.jsonl" for r in range(2)]
    for rank, (fake, path) in enumerate(zip(fakes, paths)):
        table = build_latency_table(space, path, rounds=1, shard=(rank, 2), measure=fake)
        assert table.calibration is None
    parts = [{k for k in f.calls if k is not None} for f in fakes]
    assert not parts[0] & parts[1]
    assert parts[0] | parts[1] == {spec_key(s) for s in distinct_specs(space)}
    with pytest.raises(LatencyTableError, match="no calibration"):
        LatencyTable.load(paths[0])
    with pytest.raises(LatencyTableError, match="lack"):
        merge_latency_tables(paths[:1], tmp_path / "m.jsonl", space, measure=FakeBackend())
    merged = merge_latency_tables(paths, tmp_path / "m.jsonl", space, measure=FakeBackend())
    whole = build_latency_table(space, tmp_path / "w.jsonl", rounds=1, measure=FakeBackend())
    assert LatencyTable.load(tmp_path / "m.jsonl").layers == merged.layers == whole.layers


def test_settings_mismatch_is_refused(space, tmp_path):
    path = tmp_path / "t.jsonl"
    build_latency_table(space, path, rounds=1, measure=FakeBackend())
    with pytest.raises(LatencyTableError, match="threads: table 1, expected 2"):
        LatencyTable.load(path, expect={"threads": 2})
    with pytest.raises(LatencyTableError, match="backend: table 'torch', expected 'onnxruntime'"):
        LatencyTable.load(path, expect=current_settings("onnxruntime", "cpu", 1, 1))
    with pytest.raises(LatencyTableError, match="device_name"):
        LatencyTable.load(path, expect={"device_name": "Some Phone"})
    with pytest.raises(LatencyTableError, match="batch_size"):  # resuming with other settings
        build_latency_table(space, path, rounds=1, batch_size=4, measure=FakeBackend())
    table = LatencyTable.load(path)
    with pytest.raises(LatencyTableError, match="is for space"):
        table.model(small_net(ks_list=[3, 7]).search_space())
    with pytest.raises(LatencyTableError, match=r"resolutions \[12, 16\].*\[12, 20\]"):
        table.model(small_net(resolutions=(12, 20)).search_space())
    assert table.model(small_net(resolutions=(16,)).search_space())  # a subset of resolutions is fine


def test_bad_settings_are_refused():
    with pytest.raises(LatencyTableError, match="unknown backend"):
        current_settings("tflite")
    with pytest.raises(LatencyTableError, match="CPU only"):
        current_settings("onnxruntime", "cuda")
    with pytest.raises(LatencyTableError, match="shard"):
        build_latency_table(small_net().search_space(), "/nonexistent/t.jsonl", shard=(2, 2))


def test_a_calibration_line_from_before_the_weight_term_reads_as_without_it(space, tmp_path):
    path = tmp_path / "t.jsonl"
    build_latency_table(space, path, rounds=1, measure=FakeBackend(per_mparam=0.4))
    lines = path.read_text().splitlines()
    old = json.loads(lines[-1])
    assert old["type"] == "calibration" and old["ms_per_mparam"] == pytest.approx(0.4)
    del old["ms_per_mparam"]
    path.write_text("\n".join([*lines, json.dumps(old)]) + "\n")
    assert LatencyTable.load(path).calibration.ms_per_mparam == 0.0
    # a negative weight cost is not a calibration: the line is named as malformed
    path.write_text("\n".join([*lines, json.dumps({**old, "ms_per_mparam": -1.0})]) + "\n")
    with pytest.raises(LatencyTableError, match=f"malformed lines \\[{len(lines) + 1}\\]"):
        LatencyTable.load(path)


def test_one_subnet_timed_in_a_slow_spell_does_not_tilt_the_calibration():
    sums = [2.0, 3.0, 4.5, 5.0, 6.0, 7.5, 8.0, 9.0, 10.0, 12.0, 1.0, 15.0]
    mparams = [1.0, 3.0, 1.5, 4.0, 2.0, 5.5, 3.0, 6.0, 4.0, 7.0, 0.5, 9.0]
    measured = [1.2 * s + 0.3 * p + 0.5 for s, p in zip(sums, mparams)]
    measured[5] *= 1.5  # a burst of load during one subnet's rounds
    fitted = _fit_calibration_terms(sums, mparams, measured)
    # plain least squares on the same points: (0.93, 0.82, 0.84); the robust fit stays within 4 %
    assert fitted == pytest.approx((1.2, 0.3, 0.5), rel=0.04)
    assert _fit_calibration_terms(
        sums, mparams, [1.2 * s + 0.3 * p + 0.5 for s, p in zip(sums, mparams)]
    ) == (pytest.approx((1.2, 0.3, 0.5), rel=1e-9))
    # the weight term is never negative: weights do not make a network faster
    faster = [1.2 * s - 0.3 * p + 4.0 for s, p in zip(sums, mparams)]
    assert _fit_calibration_terms(sums, mparams, faster)[1] == pytest.approx(0.0, abs=1e-12)
    # too few subnets to fit three terms: the layer sum as measured, plus the median residual
    assert _fit_calibration_terms([1.0, 2.0], [1.0, 1.0], [1.5, 2.5]) == (1.0, 0.0, 0.5)


# --------------------------------------------------------------------------- predicting
def test_gather_and_sum_equals_python_sum(space, tmp_path):
    fake = FakeBackend(scale=1.3, per_mparam=0.4)
    table = build_latency_table(space, tmp_path / "t.jsonl", rounds=1, measure=fake)
    cal = table.calibration
    # the fit recovers how the fake network differs from its layers summed
    assert (cal.scale, cal.ms_per_mparam, cal.overhead_ms) == pytest.approx((1.3, 0.4, OVERHEAD), rel=1e-6)
    assert LatencyTable.load(table.path).calibration == cal
    population = space.sample(50, torch.Generator().manual_seed(3))
    predicted = table.model(space)(population)
    layers = table.layers
    for value, specs in zip(predicted.tolist(), subnet_specs(space, population)):
        expected = cal.overhead_ms + sum(
            cal.scale * (layers[spec_key(s)] - cal.call_overhead_ms) + cal.ms_per_mparam * s.params / 1e6
            for s in specs
        )
        assert value == pytest.approx(expected, rel=1e-12)
        weights = 0.4 * sum(s.params for s in specs) / 1e6
        assert value == pytest.approx(1.3 * sum(spec_cost(s) for s in specs) + weights + OVERHEAD, rel=1e-6)


def test_validation_reports_and_plots(space, tmp_path):
    table = build_latency_table(space, tmp_path / "t.jsonl", rounds=1, measure=FakeBackend())
    report = validate_latency_table(table, space, n=12, plot=tmp_path / "v.png", measure=FakeBackend())
    assert report.within_10 == 1.0 and report.mape < 1e-6 and report.spearman == pytest.approx(1.0)
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a device twice as slow as the table says: nothing within 10 %, ranks still right
    report = validate_latency_table(table, space, n=12, measure=FakeBackend(scale=2.0))
    assert report.within_10 == 0.0 and report.mape > 40 and report.spearman > 0.9
    assert json.loads(json.dumps(report.to_dict()))["n"] == 12


# --------------------------------------------------------------------------- real backends
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_real_backends_time_a_layer_and_restore_threads(backend):
    spec = LayerSpec("mbconv", 8, 8, 16, 3, 2, 24, True, "h_swish")
    before = torch.get_num_threads()
    with torch_threads(2):
        timer = Measurer(backend, threads=1, warmup=1, repeats=3)(spec.build(), spec.input_shape(1))
        timing = timer()
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    assert 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms and timing.repeats == 3


def test_a_table_times_layers_with_its_layer_repeats_and_subnets_with_its_subnet_repeats(space, tmp_path):
    table = build_latency_table(
        space, tmp_path / "t.jsonl", rounds=1, repeats=7, subnet_repeats=9, measure=FakeBackend()
    )
    assert (layer_measurer(table).repeats, table_measurer(table).repeats) == (7, 9)


def test_validation_reports_the_machines_own_spread(space, tmp_path):
    table = build_latency_table(space, tmp_path / "t.jsonl", rounds=1, measure=FakeBackend())
    assert validate_latency_table(table, space, n=6, measure=FakeBackend()).spread == 0.0

    class Drifting(FakeBackend):  # each time a subnet is prepared again it runs 10 % slower
        def __init__(self):
            super().__init__()
            self.prepared: Counter = Counter()

        def __call__(self, module, shape):
            if not isinstance(module, SpecChain):
                return super().__call__(module, shape)
            factor = 1.0 + 0.1 * self.prepared[id(module.specs[0])]
            self.prepared[id(module.specs[0])] += 1
            value = factor * (sum(spec_cost(s) for s in module.specs) + OVERHEAD)
            return lambda: Timing(value, value, value, 1)

    report = validate_latency_table(
        table, space, n=6, measure=Drifting(), repeats_for_spread=3, spread_repeats=2
    )
    assert report.spread == pytest.approx(100 * 0.2 / 1.1)  # (1.2 - 1.0) / median 1.1
    assert report.to_dict()["spread"] == report.spread


def test_whole_subnets_are_timed_with_the_tables_subnet_rounds_and_repeats(space, tmp_path):
    fake = FakeBackend()
    table = build_latency_table(
        space,
        tmp_path / "t.jsonl",
        rounds=2,
        subnet_rounds=3,
        subnet_repeats=7,
        calibration_subnets=4,
        measure=fake,
    )
    assert fake.calls[None] == (4 + 2) * 3  # 4 random subnets + the smallest and the largest, 3 rounds each
    loaded = LatencyTable.load(table.path)
    assert (loaded.meta["subnet_rounds"], loaded.meta["subnet_repeats"]) == (3, 7)
    measurer = table_measurer(loaded)
    assert (measurer.repeats, measurer.warmup) == (7, loaded.meta["warmup"])


def test_validation_reports_how_far_the_machine_drifted_since_calibration(space, tmp_path):
    table = build_latency_table(space, tmp_path / "t.jsonl", rounds=1, measure=FakeBackend())
    assert validate_latency_table(table, space, n=4, measure=FakeBackend()).drift == 0.0

    def slower(module, shape):  # the machine in a slow spell: everything 25 % slower
        timer = FakeBackend()(module, shape)
        return lambda: Timing(*(1.25 * v for v in astuple(timer())[:3]), 1)

    at_rest = validate_latency_table(table, space, n=4, measure=FakeBackend())
    report = validate_latency_table(table, space, n=4, measure=slower)
    assert report.drift == pytest.approx(25.0)
    assert report.to_dict()["drift"] == report.drift
    # every prediction now 20 % low: none within 10 %; scaled by the drift, the table scores as at rest
    assert (at_rest.within_10, report.within_10) == (1.0, 0.0)
    assert report.mape == pytest.approx(20.0)
    assert report.within_10_levelled == at_rest.within_10_levelled == 1.0
    assert report.mape_levelled == pytest.approx(at_rest.mape)
    assert report.to_dict()["within_10_levelled"] == 1.0
    # recalibrating here, now, takes the drift out
    calibrate_latency_table(table, space, n_subnets=4, measure=slower)
    assert LatencyTable.load(table.path).calibration == table.calibration
    assert validate_latency_table(table, space, n=4, measure=slower).drift == pytest.approx(0.0)


def test_another_library_version_warns_instead_of_refusing(space, tmp_path):
    path = tmp_path / "t.jsonl"
    build_latency_table(space, path, rounds=1, measure=FakeBackend())
    meta = LatencyTable.load(path).meta
    assert meta["torch"] == torch.__version__ and meta["onceforall"]
    with pytest.warns(UserWarning, match=r"measured with torch 2\.13\.0.*\(here 9\.9\)"):
        LatencyTable.load(path, expect={"torch": "9.9"})
    with pytest.raises(LatencyTableError, match="threads: table 1, expected 2"):
        LatencyTable.load(path, expect={"torch": "9.9", "threads": 2})
