"""Model zoo: official checkpoints, specialized nets and configs, against the official package.

For each official id the reference supernet gets random weights, BN statistics and kernel
matrices, is saved in the official file format and loaded through `zoo.ofa_net`; outputs,
extracted subnets, net configs (both ways) and MACs must then agree with the reference.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn as nn
from random_init import input_matters, randomize_signal

from onceforall import CheckpointError, ConfigError, OFAError, zoo
from onceforall.checkpoints import state_dict_of
from onceforall.specialize import count_macs

import ofa_reference

needs_reference = pytest.mark.skipif(
    not ofa_reference.available(), reason="the official ofa package is not installed (make reference)"
)

NET_IDS = list(zoo.SUPERNETS)
MBV3 = "ofa_mbv3_d234_e346_k357_w1.0"
SIZES = (32, 41, 56, 64)  # small (and odd) sizes keep the forwards cheap and exercise rounding
MBV3_LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}


def reference_supernet(net_id: str) -> nn.Module:
    networks = ofa_reference.import_ofa()
    if net_id.startswith("ofa_mbv3"):
        return networks.OFAMobileNetV3(dropout_rate=0, width_mult=float(net_id[-3:]), **MBV3_LISTS)
    if net_id.startswith("ofa_proxyless"):
        return networks.OFAProxylessNASNets(dropout_rate=0, width_mult=1.3, **MBV3_LISTS)
    return networks.OFAResNets(
        dropout_rate=0,
        depth_list=[0, 1, 2],
        expand_ratio_list=[0.2, 0.25, 0.35],
        width_mult_list=[0.65, 0.8, 1.0],
    )


def json_safe(config):
    """The reference's ResNet config embeds a module (its shortcut); replace modules by their configs."""
    if isinstance(config, nn.Module):
        return config.config
    if isinstance(config, dict):
        return {k: json_safe(v) for k, v in config.items()}
    if isinstance(config, list):
        return [json_safe(v) for v in config]
    return config


def assert_close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Outputs agree to `rel` of the output scale (float32 rounding of differently ordered ops)."""
    scale = expected.abs().max().item()
    assert torch.isfinite(expected).all() and scale > 0
    assert (got - expected).abs().max().item() <= rel * scale


def archs(net, n: int, seed: int):
    space = net.search_space()
    return space.decode(space.sample(n, torch.Generator().manual_seed(seed)))


def activate(ours, ref, arch) -> torch.Tensor:
    ours.set_arch(arch)
    ref.set_active_subnet(**arch.subnet_kwargs())
    return torch.randn(2, 3, arch.image_size, arch.image_size, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module", params=NET_IDS)
def pair(request, tmp_path_factory):
    """(net id, reference supernet, ours loaded from the reference's file, the file)."""
    if not ofa_reference.available():
        pytest.skip("the official ofa package is not installed (make reference)")
    net_id = request.param
    ref = randomize_signal(reference_supernet(net_id), seed=NET_IDS.index(net_id)).eval()
    path = tmp_path_factory.mktemp("official") / net_id
    torch.save({"state_dict": ref.state_dict()}, path)
    ours = zoo.ofa_net(net_id, path, resolutions=SIZES).eval()
    return net_id, ref, ours, path


# ---------------------------------------------------------------------------------------------- parity
def test_state_dict_layout_is_the_official_one(pair):
    _, ref, ours, _ = pair
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(torch.equal(our_sd[k], ref_sd[k]) for k in ref_sd)


def test_outputs_match_reference_at_20_archs(pair):
    _, ref, ours, _ = pair
    with torch.no_grad():
        for arch in archs(ours, 20, seed=1):
            x = activate(ours, ref, arch)
            expected = ref(x)
            assert input_matters(expected)
            assert_close(ours(x), expected)


def test_extracted_subnets_match_reference(pair):
    _, ref, ours, _ = pair
    for arch in archs(ours, 3, seed=2):
        x = activate(ours, ref, arch)
        subnet, ref_subnet = ours.get_active_subnet().eval(), ref.get_active_subnet().eval()
        assert type(subnet).__name__ == type(ref_subnet).__name__
        sd, ref_sd = subnet.state_dict(), ref_subnet.state_dict()
        assert list(sd) == list(ref_sd)
        assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd)
        with torch.no_grad():
            assert_close(subnet(x), ref_subnet(x))


def test_net_configs_build_both_ways(pair):
    _, ref, ours, _ = pair
    networks = ofa_reference.import_ofa("ofa.imagenet_classification.networks")
    for arch in archs(ours, 2, seed=3):
        x = activate(ours, ref, arch)
        config = json.loads(json.dumps(ours.get_active_net_config()))
        subnet, ref_subnet = ours.get_active_subnet().eval(), ref.get_active_subnet().eval()
        assert config == subnet.config
        # ours -> official package
        built = networks.get_net_by_name(config["name"]).build_from_config(json.loads(json.dumps(config)))
        built.load_state_dict(subnet.state_dict())
        # official package -> ours
        ref_config = json.loads(json.dumps(json_safe(ref.get_active_net_config())))
        specialized = zoo.ofa_specialized(ref_config, {"state_dict": ref_subnet.state_dict()}).eval()
        assert specialized.config == config
        with torch.no_grad():
            assert_close(built.eval()(x), subnet(x))
            assert_close(specialized(x), ref_subnet(x))


def test_macs_match_reference_counters(pair):
    net_id, ref, ours, _ = pair
    predictors = ofa_reference.import_ofa("ofa.nas.efficiency_predictor")
    if net_id.startswith("ofa_mbv3"):
        flops_model = predictors.Mbv3FLOPsModel(ref)
    elif net_id.startswith("ofa_proxyless"):
        flops_model = predictors.ProxylessNASFLOPsModel(ref)
    else:
        flops_model = predictors.ResNet50FLOPsModel(ref)
    space = ours.search_space(resolutions=tuple(range(128, 257, 4)))
    population = space.sample(50, torch.Generator().manual_seed(4))
    macs = count_macs(space, population).tolist()
    for arch, m in zip(space.decode(population), macs):
        expected = flops_model.get_efficiency({**arch.subnet_kwargs(), "image_size": arch.image_size})
        assert m == pytest.approx(expected * 1e6, rel=1e-12)
    # the reference's hook-based counter on its extracted subnets
    count_net_flops = ofa_reference.import_ofa("ofa.utils.pytorch_utils").count_net_flops
    for arch in archs(ours, 2, seed=5):
        activate(ours, ref, arch)
        counted = count_net_flops(ref.get_active_subnet(), (1, 3, arch.image_size, arch.image_size))
        assert count_macs(ours.search_space(), arch).item() == counted


def test_plain_old_style_and_module_prefixed_files_load(pair, tmp_path):
    net_id, ref, ours, _ = pair
    state = ref.state_dict()
    if net_id == "ofa_resnet50":  # released after the rename: try a plain, DataParallel-style dict
        variant = {f"module.{k}": v for k, v in state.items()}
    else:  # MBv3 / Proxyless releases use the pre-2020-11 block name, wrapped as {'state_dict': ...}
        variant = {
            "state_dict": {
                re.sub(r"^(blocks\.\d+)\.conv\.", r"\1.mobile_inverted_conv.", k): v for k, v in state.items()
            }
        }
        assert any(".mobile_inverted_conv." in k for k in variant["state_dict"])
    torch.save(variant, tmp_path / "variant")
    loaded = zoo.ofa_net(net_id, tmp_path / "variant").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ours.state_dict().items())


def test_save_official_loads_in_reference(pair, tmp_path):
    net_id, _, ours, _ = pair
    path = zoo.save_official(ours, tmp_path / "ours.pth")
    fresh = reference_supernet(net_id)
    fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    got, expected = fresh.state_dict(), ours.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not list(tmp_path.glob("*.tmp"))


@needs_reference
def test_static_teacher_checkpoint_keeps_identity_matrices():
    networks = ofa_reference.import_ofa("ofa.imagenet_classification.networks")
    teacher = networks.MobileNetV3Large(width_mult=1.0, ks=7, expand_ratio=6, depth_param=4, dropout_rate=0)
    randomize_signal(teacher, seed=5).eval()
    with pytest.warns(UserWarning, match="set to identity"):
        net = zoo.ofa_net(MBV3, {"state_dict": teacher.state_dict()}).eval()
    matrices = [v for k, v in net.state_dict().items() if k.endswith("_matrix")]
    assert len(matrices) == 40 and all(torch.equal(m, torch.eye(len(m))) for m in matrices)
    net.set_max_net()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(net(x), teacher(x))


# ---------------------------------------------------------------------------------------------- specialized
def test_ofa_specialized_reads_a_folder(tmp_path):
    supernet = randomize_signal(zoo.ofa_net("ofa_proxyless_d234_e346_k357_w1.3", n_classes=10)).eval()
    supernet.set_active_subnet(ks=5, e=4, d=2)
    subnet = supernet.get_active_subnet().eval()
    (tmp_path / "net.config").write_text(json.dumps(supernet.get_active_net_config()))
    (tmp_path / "run.config").write_text(json.dumps({"image_size": 160}))
    zoo.save_official(subnet, tmp_path / "init")
    net = zoo.ofa_specialized(tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), subnet(x))
    assert net.first_conv.bn.eps == 1e-3


def test_ofa_specialized_reads_old_layer_names():
    supernet = randomize_signal(zoo.ofa_net(MBV3, n_classes=10)).eval()
    supernet.set_active_subnet(ks=7, e=6, d=3)
    subnet = supernet.get_active_subnet().eval()
    config = supernet.get_active_net_config()
    for block in config["blocks"]:
        block["name"], block["mobile_inverted_conv"] = "MobileInvertedResidualBlock", block.pop("conv")
        block["mobile_inverted_conv"]["name"] = "MBInvertedConvLayer"
    state = {
        re.sub(r"^(blocks\.\d+)\.conv\.", r"\1.mobile_inverted_conv.", k): v
        for k, v in subnet.state_dict().items()
    }
    assert any(".mobile_inverted_conv." in k for k in state)
    net = zoo.ofa_specialized(config, {"state_dict": state}).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), subnet(x))


def test_specialized_net_names_are_listed():
    assert len(zoo.SPECIALIZED_NETS) == 58 == len(set(zoo.SPECIALIZED_NETS))
    assert "flops@595M_top1@80.0_finetune@75" in zoo.SPECIALIZED_NETS
    assert "resnet50D_MAC@0.6B_top1@75.0_finetune@25" in zoo.SPECIALIZED_NETS
    assert "LG-G8_lat@8ms_top1@71.1_finetune@25" in zoo.SPECIALIZED_NETS


def test_ofa_net_without_checkpoint_is_a_random_supernet():
    net = zoo.ofa_net(MBV3)
    assert net.search_space().name == MBV3 and net.classifier.dropout_rate == 0
    assert zoo.ofa_net("ofa_resnet50", n_classes=10).n_classes == 10


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_net_id_lists_the_known_ones():
    with pytest.raises(
        OFAError,
        match=r"unknown supernet id 'ofa_mbv3' \(did you mean 'ofa_mbv3_small'\?\); registered ids: ofa_mbv3_d234",
    ):
        zoo.ofa_net("ofa_mbv3")


def test_checkpoint_of_another_width_names_the_likely_id():
    wide = zoo.ofa_net("ofa_mbv3_d234_e346_k357_w1.2", n_classes=10).state_dict()
    with pytest.raises(CheckpointError, match="another shape") as err:
        zoo.ofa_net(MBV3, wide, n_classes=10)
    assert "first_conv.conv.weight: file [24, 3, 3, 3] vs model [16, 3, 3, 3]" in str(err.value)
    assert "looks like 'ofa_mbv3_d234_e346_k357_w1.2'" in str(err.value)


def test_checkpoint_of_another_class_count_says_so():
    state = zoo.ofa_net("ofa_resnet50", n_classes=10).state_dict()
    with pytest.raises(CheckpointError, match="classifies 10 classes: pass n_classes=10"):
        zoo.ofa_net("ofa_resnet50", state)


def test_missing_and_unknown_keys_are_named():
    net = zoo.ofa_net(MBV3, n_classes=10)
    state = dict(net.state_dict())
    del state["blocks.3.conv.point_linear.bn.bn.weight"]
    state["blocks.99.conv.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        zoo.load_official(net, state)
    message = str(err.value)
    assert "missing from the file, e.g. ['blocks.3.conv.point_linear.bn.bn.weight']" in message
    assert "fit no layer, e.g. ['blocks.99.conv.extra.weight']" in message


def test_some_but_not_all_kernel_matrices_is_an_error():
    net = zoo.ofa_net(MBV3, n_classes=10)
    state = {k: v for k, v in net.state_dict().items() if k != "blocks.2.conv.depth_conv.conv.7to5_matrix"}
    with pytest.raises(CheckpointError, match=r"lacks \['blocks.2.conv.depth_conv.conv.7to5_matrix'\]"):
        zoo.load_official(net, state)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        zoo.ofa_net(MBV3, tmp_path / "missing")
    torch.save({"state_dict": {"a": object()}}, tmp_path / "pickled")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        state_dict_of(tmp_path / "pickled")
    with pytest.raises(CheckpointError, match="must be a dict"):
        state_dict_of([1, 2])
    with pytest.raises(CheckpointError, match="holds no tensors"):
        state_dict_of({"epoch": 3})


def test_bad_net_configs(tmp_path):
    with pytest.raises(ConfigError, match="names network 'OFAMobileNetV3'"):
        zoo.ofa_specialized({"name": "OFAMobileNetV3"})
    with pytest.raises(ConfigError, match="malformed"):
        zoo.ofa_specialized({"name": "ResNets", "input_stem": []})
    with pytest.raises(ConfigError, match="does not exist"):
        zoo.ofa_specialized(tmp_path / "net.config")
    with pytest.raises(OFAError, match="save_official takes one of our"):
        zoo.save_official(nn.Linear(2, 2), tmp_path / "x")
