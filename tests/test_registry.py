"""Contract tests over the registry: every registered supernet, every stage, without a test per model.

A new registry entry is covered here by registering it: ids are parametrised from `REGISTRY`, and
the full path (train every phase kind, eval, accuracy dataset, predictor, latency table, search,
specialize, export, official round trip) runs for each family on that family's small-image entry.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from random_init import randomize_signal
from test_train import needs_data
from torch.utils.flop_counter import FlopCounterMode

from onceforall import OFAError, zoo
from onceforall.cost import count_macs, count_params, distinct_specs
from onceforall.export import extract_subnet
from onceforall.registry import FAMILIES, REGISTRY, family_of, load_supernet, registered, save_supernet
from onceforall.specialize.accuracy_dataset import AccuracyDataset, collect_accuracy_dataset
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.pipeline import specialize
from onceforall.specialize.predictor import fit_predictor
from onceforall.specialize.search import evolution_search
from onceforall.specialize.timing import Measurer, torch_threads
from onceforall.train import Trainer, load_recipe, recipe_from_dict
from onceforall.train.recipe import NetConfig
from onceforall.train.trainer import build_supernet
from onceforall.workflow.data import dataset_evaluator, supernet_data
from onceforall.workflow.evaluate import evaluate_subnet
from onceforall.workflow.export import export_arch

# Each family's small-image entry (one channel, random weights): the one the full path trains.
SMALL = {e.family: e.id for e in REGISTRY.values() if e.kwargs.get("in_channels") == 1 and e.weights is None}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny(net_id: str):
    """The id's supernet at ten classes and its smallest sensible input, with live random weights."""
    found = REGISTRY[net_id]
    torch.manual_seed(0)
    net = found.build(n_classes=10) if found.weights is None else load_supernet(net_id).net
    size = max(net.total_stride, 16 if net.in_channels == 1 else 32)
    if found.weights is None:
        net = found.build(n_classes=10, resolutions=[size])
    else:
        size = min(net.resolutions)  # a trained supernet keeps its own space
    return randomize_signal(net, size=size).eval(), size


def test_every_family_has_a_small_entry():
    assert set(SMALL) == set(FAMILIES)


@pytest.mark.parametrize("net_id", registered())
def test_extracted_subnets_match_the_supernet_and_cost_what_is_counted(net_id: str):
    net, size = tiny(net_id)
    space = net.search_space()
    assert family_of(net) == REGISTRY[net_id].family and space.count() > 1
    x = torch.randn(2, net.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    archs = [
        space.max_arch(size),
        space.min_arch(size),
        *space.decode(space.sample(2, torch.Generator().manual_seed(2))),
    ]
    for arch in archs:
        arch = space.validate(type(arch)(**{**arch.__dict__, "image_size": size}))
        net.set_arch(arch)
        with torch.no_grad():
            expected = net(x)
        subnet = extract_subnet(net, arch)
        with torch.no_grad():
            got = subnet(x)  # the same batch: oneDNN's kernels differ between batch sizes
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            subnet(x[:1])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        assert flops.get_total_flops() == 2 * int(count_macs(space, arch)[0])
        assert sum(p.numel() for p in subnet.parameters()) == int(count_params(space, arch)[0])


@pytest.mark.parametrize("net_id", registered())
def test_our_file_and_the_official_layout_load_back_as_the_same_supernet(net_id: str, tmp_path: Path):
    net, size = tiny(net_id)
    save_supernet(net, tmp_path / "ours.pt")
    zoo.save_official(net, tmp_path / "official.pth")
    shipped = REGISTRY[net_id].weights is not None
    ours = load_supernet(tmp_path / "ours.pt")
    official = load_supernet(tmp_path / "official.pth", net_id=net_id if shipped else None)
    assert official.info["net_id"] == net_id  # recognised from keys and shapes unless it has shipped weights
    x = torch.randn(2, net.in_channels, size, size)
    for loaded in (ours, official):
        assert type(loaded.net) is type(net) and loaded.net.n_classes == net.n_classes
        loaded.net.eval().set_max_net()
        net.set_max_net()
        assert all(
            torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.net.state_dict().values())
        )
        with torch.no_grad():
            torch.testing.assert_close(loaded.net(x), net(x))


def test_a_file_of_another_size_names_the_id_its_shapes_fit(tmp_path: Path):
    zoo.save_official(tiny("ofa_resnet50_small")[0], tmp_path / "small.pth")
    with pytest.raises(
        OFAError, match="Its shapes fit 'ofa_resnet50_small': pass --net-id ofa_resnet50_small"
    ):
        load_supernet(tmp_path / "small.pth", net_id="ofa_resnet50")
    torch.save({"state_dict": {"conv.weight": torch.zeros(2, 2)}}, tmp_path / "foreign.pth")
    with pytest.raises(
        OFAError, match=r"fit none of the registered supernets\); pass --net-id, one of: ofa_mbv3"
    ):
        load_supernet(tmp_path / "foreign.pth")


@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_layer_kind_times_on_both_backends(family: str):
    net, _ = tiny(SMALL[family])
    specs = {}
    for spec in distinct_specs(net.search_space()):
        specs.setdefault((spec.op, spec.shortcut, spec.use_se), spec)
    for backend in ("torch", "onnxruntime"):
        measure = Measurer(backend, warmup=0, repeats=1)
        for spec in specs.values():
            timing = measure(spec.build(), spec.input_shape())()
            assert timing.median_ms > 0, (backend, spec)


def phases_for(family: str) -> list[dict]:
    """One phase of each kind the family has: teacher, each elastic dimension, and a sandwich phase."""
    lists = NetConfig(family=family, **net_args(family)).lists()
    keys = {"ks_list": "ks", "expand_ratio_list": "expand", "depth_list": "depth", "width_mult_list": "width"}
    phases = [{"name": "teacher", "epochs": 1, "lr": 0.1, "distill": False}]
    elastic: dict[str, list] = {}
    for net_key, phase_key in keys.items():
        if net_key in lists:
            elastic[phase_key] = lists[net_key]
            sort = {"sort_channels": 0} if phase_key == "expand" else {}
            phases.append(
                {
                    "name": phase_key,
                    "epochs": 1,
                    "lr": 0.05,
                    "subnets_per_step": 2,
                    **copy.deepcopy(elastic),
                    **sort,
                }
            )
    phases.append(
        {"name": "sandwich", "epochs": 1, "lr": 0.02, "subnets_per_step": 3, "sandwich": True, **elastic}
    )
    return phases


def net_args(family: str) -> dict:
    kwargs = REGISTRY[SMALL[family]].kwargs
    fields = set(NetConfig.__dataclass_fields__) - {"family"}
    return {k: v for k, v in kwargs.items() if k in fields}


@needs_data
@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_stage_runs_for_every_family(family: str, tmp_path: Path):
    recipe = recipe_from_dict(
        {
            "net": {"family": family, **net_args(family), "dropout_rate": 0.0},
            "data": {
                "name": "fashion-mnist",
                "limit": 128,
                "holdout": 32,
                "resolutions": [16],
                "batch_size": 32,
            },
            "bn_calibration_images": 32,
            "bn_calibration_batch": 32,
            "phases": phases_for(family),
        }
    )
    final = Trainer(recipe, tmp_path / "run", device="cpu", progress=False).run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    started = [r["phase"] for r in log if r["event"] == "phase_start"]
    assert started == [p["name"] for p in recipe.to_dict()["phases"]]

    loaded = load_supernet(final)
    assert family_of(loaded.net) == family
    space = loaded.net.search_space()
    result = evaluate_subnet(loaded, "min", device="cpu")
    assert result["images"] == 10000 and result["macs"] == int(count_macs(space, space.min_arch(16))[0])

    source = supernet_data(loaded)
    evaluator, scored = dataset_evaluator(loaded, source, "holdout", "cpu", limit=32)
    summary = collect_accuracy_dataset(
        lambda arch: evaluator(arch)[0] / 100, space, 6, tmp_path / "acc.jsonl", progress=False
    )
    population, accuracy = AccuracyDataset(tmp_path / "acc.jsonl").population(space)
    assert summary.evaluated == 6 and len(accuracy) == 6 and scored == 32
    predictor, _ = fit_predictor(space, population, accuracy, holdout=0.25, epochs=2)

    table = build_latency_table(
        space,
        tmp_path / "lat.jsonl",
        warmup=0,
        repeats=1,
        rounds=1,
        subnet_rounds=1,
        subnet_repeats=1,
        calibration_subnets=2,
    )
    latency = table.model(space)
    budget = float(latency(space.encode(space.max_arch(16)))[0])
    found = evolution_search(space, predictor.bind(space), latency, budget, 16, 3, seed=0)
    assert float(latency(space.encode(found.best_arch))[0]) <= budget

    test_evaluator, _ = dataset_evaluator(loaded, source, "test", "cpu", limit=64)
    (chosen,) = specialize(
        test_evaluator,
        predictor,
        table,
        [budget],
        tmp_path / "spec",
        formats=("onnx",),
        generations=20,
    )
    folder = tmp_path / "spec" / f"budget_{budget:g}ms"
    assert {"model.onnx", "arch.json"} <= {p.name for p in folder.iterdir()}
    assert math.isfinite(chosen.measured_ms) and chosen.predicted_ms <= budget

    deploy = export_arch(loaded, found.best_arch, tmp_path / "export", source, ("pt2",), device="cpu")
    assert deploy["bn_calibration"]["images"] == 32 and deploy["preprocessing"]["input_size"] == [1, 16, 16]
    assert all(r["max_abs_diff"] <= 1e-4 for r in deploy["exports"]) and len(deploy["exports"]) == 1
    exported = torch.export.load(tmp_path / "export" / "model.pt2").module()
    reference = test_evaluator.subnet(found.best_arch).cpu().to(memory_format=torch.contiguous_format)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), reference(x), rtol=1e-4, atol=1e-4)

    zoo.save_official(loaded.net, tmp_path / "official.pth")
    back = load_supernet(tmp_path / "official.pth")
    assert back.info["net_id"] == SMALL[family]
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), back.net.state_dict().values())
    )


CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_builds_its_family(config: Path):
    recipe = load_recipe(config)
    grey = recipe.data.name == "fashion-mnist"
    net = build_supernet(recipe, 10, 1 if grey else 3)
    assert family_of(net) == recipe.net.family
    if config.name in ("fashion_mnist_resnet50.yaml", "fashion_mnist_proxyless.yaml"):
        # The small-image registry entry is this recipe's layout: files it trains load under that id.
        assert net.search_space().name == REGISTRY[SMALL[recipe.net.family]].build().search_space().name
