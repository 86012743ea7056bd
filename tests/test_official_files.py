"""Official accuracy-predictor files and latency lookup tables, against the official package.

Predictor files are made by the official classes with random weights and saved as the official
code saves them; latency YAML files are written in the official format with random means for
every key the official `predict_network_latency_given_config` queries. Our predictions must equal
the official code's on random archs.
"""

from __future__ import annotations

import functools
import random
import warnings

import numpy as np
import pytest
import torch
import yaml

from onceforall import OFAMobileNetV3, OFAProxylessNASNets, OFAResNets
from onceforall.errors import LatencyTableError, PredictorError
from onceforall.specialize.official import official_latency_model, read_lookup_table
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.timing import torch_threads

import ofa_reference

pytestmark = pytest.mark.skipif(
    not ofa_reference.available(), reason="the official ofa package is not installed (make reference)"
)

LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}
RESNET_LISTS = {
    "depth_list": [0, 1, 2],
    "expand_ratio_list": [0.2, 0.25, 0.35],
    "width_mult_list": [0.65, 0.8, 1.0],
}
ELASTIC = tuple(range(128, 225, 4))  # the official elastic-resolution sizes
RESNET_SIZES = (128, 144, 160, 176, 192, 224, 240, 256)
TUTORIAL_SIZES = (160, 176, 192, 208, 224)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@functools.cache
def supernet(family: str, width: float | None):
    """Our supernet (built once: only its search spaces are used)."""
    if family == "resnet":
        return OFAResNets(dropout_rate=0, **RESNET_LISTS)
    if family == "proxyless":
        return OFAProxylessNASNets(dropout_rate=0, width_mult=width, **LISTS)
    return OFAMobileNetV3(dropout_rate=0, width_mult=width, **LISTS)


def ours(family: str, resolutions, width: float | None = None):
    return supernet(family, width).search_space(tuple(resolutions))


def sample(space, n: int, seed: int):
    population = space.sample(n, torch.Generator().manual_seed(seed))
    return population, space.decode(population)


def arch_dict(arch) -> dict:
    return {**arch.subnet_kwargs(), "image_size": arch.image_size}


# --------------------------------------------------------------------------- official predictors
def official_encoder(family: str, resolutions):
    encoders = ofa_reference.import_ofa("ofa.nas.accuracy_predictor.arch_encoder")
    if family == "resnet":
        lists = {"depth_list": RESNET_LISTS["depth_list"], "expand_list": RESNET_LISTS["expand_ratio_list"]}
        return encoders.ResNetArchEncoder(
            image_size_list=list(resolutions), width_mult_list=RESNET_LISTS["width_mult_list"], **lists
        )
    lists = {
        "ks_list": LISTS["ks_list"],
        "expand_list": LISTS["expand_ratio_list"],
        "depth_list": LISTS["depth_list"],
    }
    if family == "proxyless":  # the official "mbv2" layout: 6 stages, 21 block slots
        encoder_class = type("ProxylessEncoder", (encoders.MobileNetArchEncoder,), {"SPACE_TYPE": "mbv2"})
        return encoder_class(image_size_list=list(resolutions), **lists)
    return encoders.MobileNetArchEncoder(image_size_list=list(resolutions), **lists)


def official_predictor(encoder, seed: int):
    """The official nas/ AccuracyPredictor with random weights and base_acc (on the CPU)."""
    module = ofa_reference.import_ofa("ofa.nas.accuracy_predictor.acc_predictor")
    torch.manual_seed(seed)
    predictor = module.AccuracyPredictor(encoder, device="cpu")
    with torch.no_grad():
        predictor.base_acc.fill_(0.7)
    return predictor.eval()


def official_predictions(predictor, archs) -> torch.Tensor:
    with torch.no_grad():
        return predictor.predict_acc([arch_dict(a) for a in archs]).float()


FAMILIES = [("mbv3", 1.0, ELASTIC), ("proxyless", 1.3, ELASTIC), ("resnet", None, RESNET_SIZES)]


@pytest.mark.parametrize(("family", "width", "sizes"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_onehot_is_the_official_encoders_layout(family, width, sizes):
    space = ours(family, sizes, width)
    encoder = official_encoder(family, sizes)
    population, archs = sample(space, 300, seed=0)
    expected = torch.tensor(
        np.stack([encoder.arch2feature(arch_dict(a)) for a in archs]), dtype=torch.float32
    )
    assert expected.shape[1] == encoder.n_dim
    assert torch.equal(space.onehot(population), expected)


@pytest.mark.parametrize(("family", "width", "sizes"), FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "state_dict"])
def test_nas_predictor_file_predicts_as_the_official(tmp_path, family, width, sizes, wrapped):
    reference = official_predictor(official_encoder(family, sizes), seed=1)
    state = reference.state_dict()
    torch.save({"state_dict": state} if wrapped else state, tmp_path / "predictor.pth")
    space = ours(family, sizes, width)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same width as the space: no guessing, no warning
        loaded = AccuracyPredictor.load(tmp_path / "predictor.pth", space)
    population, archs = sample(space, 200, seed=2)
    expected = official_predictions(reference, archs)
    assert expected.std() > 1e-3  # the archs are told apart
    assert (loaded.predict(space, population) - expected).abs().max() < 1e-6
    assert loaded.space == space.name and loaded.n_features == space.onehot_dim


@pytest.mark.parametrize(
    ("family", "width", "trained", "subset"),
    [
        ("mbv3", 1.0, ELASTIC, (160, 192)),
        ("proxyless", 1.3, (128, 160, 192, 224), (224,)),
        ("resnet", None, RESNET_SIZES, (160, 192, 256)),
    ],
    ids=["mbv3", "proxyless", "resnet"],
)
def test_nas_predictor_restricted_to_fewer_resolutions(tmp_path, family, width, trained, subset):
    reference = official_predictor(official_encoder(family, trained), seed=3)
    torch.save(reference.state_dict(), tmp_path / "predictor.pth")
    space = ours(family, subset, width)
    population, archs = sample(space, 200, seed=4)
    expected = official_predictions(reference, archs)
    # The file does not record its sizes: named explicitly, or read as the official list (warned).
    named = AccuracyPredictor.load(tmp_path / "predictor.pth", space, trained_resolutions=trained)
    with pytest.warns(UserWarning, match="official sizes"):
        guessed = AccuracyPredictor.load(tmp_path / "predictor.pth", space)
    for loaded in (named, guessed):
        assert loaded.n_features == space.onehot_dim
        assert (loaded.predict(space, population) - expected).abs().max() < 1e-6


def test_nas_predictor_of_unknown_sizes_needs_them_named(tmp_path):
    trained = (128, 176, 224)
    reference = official_predictor(official_encoder("mbv3", trained), seed=5)
    torch.save(reference.state_dict(), tmp_path / "predictor.pth")
    space = ours("mbv3", (176,), 1.0)
    with pytest.raises(PredictorError, match=r"123 inputs = 120 .* \+ 3 resolutions.*trained_resolutions"):
        AccuracyPredictor.load(tmp_path / "predictor.pth", space)
    with pytest.raises(PredictorError, match="trained_resolutions lists 2"):
        AccuracyPredictor.load(tmp_path / "predictor.pth", space, trained_resolutions=(128, 176))
    with pytest.raises(PredictorError, match=r"image_size in \[128, 160, 224\], the space also allows 176"):
        AccuracyPredictor.load(tmp_path / "predictor.pth", space, trained_resolutions=(128, 160, 224))
    loaded = AccuracyPredictor.load(tmp_path / "predictor.pth", space, trained_resolutions=trained)
    population, archs = sample(space, 100, seed=6)
    assert (loaded.predict(space, population) - official_predictions(reference, archs)).abs().max() < 1e-6


def test_nas_predictor_of_another_network_is_refused(tmp_path):
    reference = official_predictor(official_encoder("resnet", RESNET_SIZES), seed=7)
    torch.save(reference.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(PredictorError, match=r"82 inputs.*needs 120 besides.*OFA-ResNet50"):
        AccuracyPredictor.load(tmp_path / "resnet.pth", ours("mbv3", ELASTIC, 1.0))
    mbv3 = official_predictor(official_encoder("mbv3", ELASTIC), seed=7)
    torch.save(mbv3.state_dict(), tmp_path / "mbv3.pth")
    with pytest.raises(
        PredictorError, match=r"145 inputs = 74 .*fits OFA-MobileNetV3 .* with 25 resolutions"
    ):
        AccuracyPredictor.load(tmp_path / "mbv3.pth", ours("resnet", RESNET_SIZES))
    with pytest.raises(PredictorError, match="records no search space"):
        AccuracyPredictor.load(tmp_path / "resnet.pth")
    torch.save({"weight": torch.zeros(3), "bias": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(PredictorError, match="fit no known layout"):
        AccuracyPredictor.load(tmp_path / "other.pth", ours("resnet", RESNET_SIZES))
    state = reference.state_dict()
    del state["layers.1.0.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(PredictorError, match=r"missing keys \['layers.1.0.bias'\]"):
        AccuracyPredictor.load(tmp_path / "broken.pth", ours("resnet", RESNET_SIZES))


# --------------------------------------------------------------------------- the tutorial predictor
def tutorial_predictor(seed: int):
    module = ofa_reference.import_ofa("ofa.tutorial.accuracy_predictor")
    torch.manual_seed(seed)
    predictor = module.AccuracyPredictor(pretrained=False, device="cpu")
    with torch.no_grad():
        predictor.model[-1].bias.fill_(0.75)  # an accuracy-like offset, as a trained one has
    return predictor


def tutorial_predictions(predictor, archs) -> torch.Tensor:
    specs = [{**a.subnet_kwargs(), "r": [a.image_size]} for a in archs]
    return predictor.predict_accuracy(specs).flatten().float()


@pytest.mark.parametrize("sizes", [TUTORIAL_SIZES, (128, 224), (112,)], ids=["tutorial", "subset", "112"])
def test_tutorial_predictor_predicts_as_the_official(tmp_path, sizes):
    reference = tutorial_predictor(seed=8)
    torch.save(reference.model.state_dict(), tmp_path / "acc_predictor.pth")
    space = ours("mbv3", sizes, 1.2)
    loaded = AccuracyPredictor.load(tmp_path / "acc_predictor.pth", space)
    population, archs = sample(space, 200, seed=9)
    expected = tutorial_predictions(reference, archs)
    assert expected.std() > 1e-3
    assert (loaded.predict(space, population) - expected).abs().max() < 1e-6
    assert loaded.n_features == space.onehot_dim


def test_tutorial_predictor_refuses_what_it_cannot_encode(tmp_path):
    torch.save(tutorial_predictor(seed=10).model.state_dict(), tmp_path / "acc_predictor.pth")
    with pytest.raises(PredictorError, match=r"tutorial predictor \(128 inputs\).*the space has \[132, 136"):
        AccuracyPredictor.load(tmp_path / "acc_predictor.pth", ours("mbv3", ELASTIC, 1.2))
    with pytest.raises(PredictorError, match="OFA-MobileNetV3 of 20 block slots"):
        AccuracyPredictor.load(tmp_path / "acc_predictor.pth", ours("proxyless", TUTORIAL_SIZES, 1.3))
    state = tutorial_predictor(seed=10).model.state_dict()
    state["0.weight"] = state["0.weight"][:, :100]
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(PredictorError, match="MLP with 100 inputs; the official tutorial predictor has 128"):
        AccuracyPredictor.load(tmp_path / "narrow.pth", ours("mbv3", TUTORIAL_SIZES, 1.2))


# --------------------------------------------------------------------------- our own files, restricted
def test_our_predictor_serves_a_space_of_fewer_resolutions(tmp_path):
    small = dict(width_mult=0.5, in_channels=1, first_stride=1, stage_strides=(2, 2, 2, 1, 1), **LISTS)
    net = OFAMobileNetV3(n_classes=10, resolutions=(24, 28, 32), **small)
    full, part = net.search_space(), net.search_space((24, 32))
    torch.manual_seed(0)
    predictor = AccuracyPredictor.for_space(full).eval()
    predictor.base_acc.fill_(0.8)
    path = predictor.save(tmp_path / "p.pt", {"rmse": 0.01})
    with pytest.raises(PredictorError, match="encoding dim differs"):  # as saved: for the full space
        predictor.check(part)
    loaded = AccuracyPredictor.load(path, part)
    archs = part.decode(part.sample(200, torch.Generator().manual_seed(1)))
    got = loaded.predict(part, archs)
    expected = predictor.predict(full, [type(a)(**{**a.__dict__, "space": full.name}) for a in archs])
    assert expected.std() > 1e-4
    assert (got - expected).abs().max() < 1e-6
    assert loaded.metrics == {"rmse": 0.01} and loaded.n_features == part.onehot_dim
    with pytest.raises(PredictorError, match="the space also allows 20"):
        AccuracyPredictor.load(path, net.search_space((20, 24)))


# --------------------------------------------------------------------------- latency lookup tables
class Recorder(dict):
    """A lookup table that makes up an entry (a random mean) for every key the official code asks for."""

    def __init__(self, seed: int):
        super().__init__()
        self.rng = random.Random(seed)

    def __missing__(self, key: str) -> dict:
        self[key] = {"mean": round(self.rng.uniform(0.05, 5.0), 6), "std": 0.01, "count": 20}
        return self[key]


def official_table(kind: str, lut: dict):
    """An official table object over `lut` (its constructor downloads and uses yaml.load without a Loader)."""
    if kind == "tutorial":
        cls = ofa_reference.import_ofa("ofa.tutorial.latency_table").LatencyEstimator
    else:
        module = ofa_reference.import_ofa("ofa.nas.efficiency_predictor.latency_lookup_table")
        cls = module.ProxylessNASLatencyTable if kind == "proxyless" else module.MBv3LatencyTable
    table = cls.__new__(cls)
    table.lut = lut
    return table


def reference_net(family: str, width: float):
    networks = ofa_reference.import_ofa()
    if family == "proxyless":
        return networks.OFAProxylessNASNets(dropout_rate=0, width_mult=width, **LISTS)
    return networks.OFAMobileNetV3(dropout_rate=0, width_mult=width, **LISTS)


def official_latency(table, net, arch) -> float:
    net.set_active_subnet(**arch.subnet_kwargs())
    return table.predict_network_latency_given_config(net.get_active_net_config(), arch.image_size)


def write_tables(folder, family: str, width: float, space, net) -> None:
    """`<R>_lookup_table.yaml` for each resolution, holding every key of every subnet at R.

    Blocks at full depth with one (kernel, expand) everywhere, for each pair, query every
    block key there is (a block's key does not depend on the other blocks' choices).
    """
    folder.mkdir(exist_ok=True)
    for r in space.resolutions:
        recorder = Recorder(seed=r)
        table = official_table(family, recorder)
        n_blocks = len(space.field_genes("ks"))
        for k in LISTS["ks_list"]:
            for e in LISTS["expand_ratio_list"]:
                arch = space.max_arch(r)
                arch = type(arch)(**{**arch.__dict__, "ks": (k,) * n_blocks, "e": (e,) * n_blocks})
                official_latency(table, net, arch)
        (folder / f"{r}_lookup_table.yaml").write_text(yaml.safe_dump(dict(recorder)))


LATENCY = [
    ("mbv3", 1.0, (160, 176, 192, 208, 224)),
    ("mbv3", 1.2, (160, 224)),
    ("proxyless", 1.3, (192, 224)),
]


@pytest.mark.parametrize(("family", "width", "sizes"), LATENCY, ids=["mbv3_w1.0", "mbv3_w1.2", "proxyless"])
def test_latency_tables_predict_as_the_official(tmp_path, family, width, sizes):
    space, net = ours(family, sizes, width), reference_net(family, width)
    write_tables(tmp_path / "device", family, width, space, net)
    model = official_latency_model(space, tmp_path / "device")
    population, archs = sample(space, 150, seed=11)
    tables = {
        r: official_table(
            family, yaml.safe_load((tmp_path / "device" / f"{r}_lookup_table.yaml").read_text())
        )
        for r in sizes
    }
    expected = torch.tensor(
        [official_latency(tables[a.image_size], net, a) for a in archs], dtype=torch.float64
    )
    assert expected.std() > 0.1
    assert (model(population) - expected).abs().max() < 1e-9
    assert (model(archs) - expected).abs().max() < 1e-9  # Archs work too
    assert model.space is space and "not measured here" in repr(model)


def test_tutorial_latency_estimator_agrees(tmp_path):
    space, net = ours("mbv3", TUTORIAL_SIZES, 1.2), reference_net("mbv3", 1.2)
    write_tables(tmp_path / "note10", "mbv3", 1.2, space, net)
    model = official_latency_model(space, tmp_path / "note10")
    population, archs = sample(space, 150, seed=12)
    tables = {
        r: official_table("tutorial", read_raw(tmp_path / "note10" / f"{r}_lookup_table.yaml"))
        for r in TUTORIAL_SIZES
    }
    expected = [
        tables[a.image_size].predict_network_latency_given_spec({**a.subnet_kwargs(), "r": [a.image_size]})
        for a in archs
    ]
    assert (model(population) - torch.tensor(expected, dtype=torch.float64)).abs().max() < 1e-9


def read_raw(path) -> dict:
    return yaml.safe_load(path.read_text())


def test_latency_table_forms_and_errors(tmp_path):
    sizes = (192, 224)
    space, net = ours("proxyless", sizes, 1.3), reference_net("proxyless", 1.3)
    write_tables(tmp_path / "gpu", "proxyless", 1.3, space, net)
    files = {r: tmp_path / "gpu" / f"{r}_lookup_table.yaml" for r in sizes}
    population, _ = sample(space, 50, seed=13)
    expected = official_latency_model(space, tmp_path / "gpu")(population)
    assert torch.equal(official_latency_model(space, files)(population), expected)
    loaded = {r: read_raw(p) for r, p in files.items()}
    assert torch.equal(official_latency_model(space, loaded)(population), expected)
    # one file for every resolution (keys carry the input size), as ProxylessNAS' mobile_trim.yaml
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump({**loaded[192], **loaded[224]}))
    at_224 = ours("proxyless", (224,), 1.3)
    one = official_latency_model(at_224, merged)
    population_224, _ = sample(at_224, 50, seed=14)
    assert torch.equal(
        one(population_224), official_latency_model(at_224, {224: loaded[224]})(population_224)
    )

    with pytest.raises(LatencyTableError, match=r"no lookup table for resolutions \[160\]"):
        official_latency_model(ours("proxyless", (160, 192), 1.3), tmp_path / "gpu")
    broken = dict(loaded[224])
    gone = sorted(k for k in broken if k.startswith("expanded_conv"))[0]
    del broken[gone]
    with pytest.raises(LatencyTableError, match=rf"lack 1 op keys.*{gone}.*at R=\[224\]"):
        official_latency_model(space, {192: loaded[192], 224: broken})
    with pytest.raises(LatencyTableError, match=r"lack .* op keys.*class count"):
        official_latency_model(
            OFAProxylessNASNets(n_classes=10, width_mult=1.3, **LISTS).search_space(sizes), files
        )
    with pytest.raises(LatencyTableError, match="OFA-MobileNetV3 and OFA-ProxylessNAS only"):
        official_latency_model(ours("resnet", (224,)), files)
    (tmp_path / "bad.yaml").write_text("Conv-input:224x224x3-output:112x112x40: {std: 0.1}\n")
    with pytest.raises(LatencyTableError, match="has no numeric 'mean'"):
        read_lookup_table(tmp_path / "bad.yaml")
    with pytest.raises(LatencyTableError, match="does not exist"):
        official_latency_model(space, tmp_path / "nowhere.yaml")


def test_official_files_drive_a_search(tmp_path):
    """The tutorial's set-up: its predictor and a device's lookup tables, searched by our evolution."""
    from onceforall.specialize.search import evolution_search

    space, net = ours("mbv3", TUTORIAL_SIZES, 1.2), reference_net("mbv3", 1.2)
    write_tables(tmp_path / "note10", "mbv3", 1.2, space, net)
    torch.save(tutorial_predictor(seed=15).model.state_dict(), tmp_path / "acc_predictor.pth")
    latency = official_latency_model(space, tmp_path / "note10")
    accuracy = AccuracyPredictor.load(tmp_path / "acc_predictor.pth", space).bind(space)
    smallest, largest = latency(space.min_arch(160)).item(), latency(space.max_arch(224)).item()
    budget = smallest + 0.3 * (largest - smallest)
    result = evolution_search(space, accuracy, latency, budget, population_size=20, generations=5, seed=0)
    best = result.best_arch
    table = official_table("mbv3", read_raw(tmp_path / "note10" / f"{best.image_size}_lookup_table.yaml"))
    assert official_latency(table, net, best) <= budget
    assert abs(official_latency(table, net, best) - latency(best).item()) < 1e-9
