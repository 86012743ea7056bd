"""The rest of the official control API, checked against the official package.

`module_str`, `config`, `set_constraint` / `clear_constraint`, `get_bn_param` / `set_bn_param`,
`load_state_dict` of official key layouts, strict `set_active_subnet` keywords, and the
tutorial's `net_config` dicts as `Arch`es. Each official net is built with the same arguments
as ours; random weights go into both through the official layout.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
import torch.nn as nn

from onceforall import (
    Arch,
    ArchError,
    CheckpointError,
    MobileNetV3,
    OFAError,
    OFAMobileNetV3,
    OFAProxylessNASNets,
    OFAResNets,
)
from onceforall.nn.keys import map_official_keys

import ofa_reference

pytestmark = pytest.mark.skipif(
    not ofa_reference.available(), reason="the official ofa package is not installed (make reference)"
)

MBV3_LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}
RESNET_LISTS = {
    "depth_list": [0, 1, 2],
    "expand_ratio_list": [0.2, 0.25, 0.35],
    "width_mult_list": [0.65, 0.8, 1.0],
}
KINDS = ("mbv3_w1.0", "mbv3_w1.2", "proxyless_w1.3", "resnet50")


def build(kind: str) -> tuple[nn.Module, nn.Module]:
    """(official supernet, ours) with the same arguments and the same random weights."""
    networks = ofa_reference.import_ofa()
    if kind.startswith("mbv3"):
        width = float(kind[-3:])
        ref = networks.OFAMobileNetV3(dropout_rate=0, width_mult=width, **MBV3_LISTS)
        ours = OFAMobileNetV3(dropout_rate=0, width_mult=width, **MBV3_LISTS)
    elif kind.startswith("proxyless"):
        ref = networks.OFAProxylessNASNets(dropout_rate=0, width_mult=1.3, **MBV3_LISTS)
        ours = OFAProxylessNASNets(dropout_rate=0, width_mult=1.3, **MBV3_LISTS)
    else:
        ref = networks.OFAResNets(dropout_rate=0, **RESNET_LISTS)
        ours = OFAResNets(dropout_rate=0, **RESNET_LISTS)
    ref.load_state_dict(noisy(ref.state_dict()))
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def noisy(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every float tensor replaced by noise (so a tensor loaded into the wrong place shows)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in state.items()
    }


def old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released MobileNetV3 / ProxylessNAS files' block spelling (before the 2020-11 rename)."""
    return {re.sub(r"^(blocks\.\d+)\.conv\.", r"\1.mobile_inverted_conv.", k): v for k, v in state.items()}


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def bn_settings(net: nn.Module) -> list[tuple[float | None, float]]:
    return [(m.momentum, m.eps) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def without_default_groups(config: object) -> object:
    """A config without `"groups": None` entries: the official active-subnet config leaves them out
    of the elastic blocks only (its static first block has one)."""
    if isinstance(config, dict):
        return {k: without_default_groups(v) for k, v in config.items() if not (k == "groups" and v is None)}
    if isinstance(config, (list, tuple)):
        return [without_default_groups(v) for v in config]
    return config


@pytest.fixture(scope="module", params=KINDS)
def pair(request) -> tuple[str, nn.Module, nn.Module]:
    return (request.param, *build(request.param))


# ---------------------------------------------------------------------------------------------- config, module_str
def test_supernet_config_is_the_official_one_and_json(pair):
    _, ref, ours, *_ = pair
    config = ours.config
    assert json.loads(json.dumps(config)) == json.loads(json.dumps(ref.config))
    assert config["name"] == type(ref).__name__
    assert len(config["blocks"]) == len(ref.blocks)


def test_module_str_matches_official_at_sampled_subnets(pair):
    _, ref, ours = pair
    for seed in range(4):
        random.seed(seed)
        ref_setting = ref.sample_active_subnet()
        random.seed(seed)
        assert ours.sample_active_subnet() == ref_setting
        assert ours.module_str == ref.module_str
        subnet, ref_subnet = ours.get_active_subnet(), ref.get_active_subnet()
        assert subnet.module_str == ref_subnet.module_str
    ours.set_max_net()
    ref.set_max_net()
    assert ours.module_str == ref.module_str


def test_module_str_follows_the_active_subnet():
    ours = OFAMobileNetV3(dropout_rate=0, **MBV3_LISTS)
    ours.set_active_subnet(ks=3, e=4, d=2)
    lines = ours.module_str.splitlines()
    assert len(lines) == 2 + 5 * 2 + 3  # first conv and block, two blocks per stage, the head
    assert lines[2] == "((O24, E4.0, K3), None)" and lines[3] == "((O24, E4.0, K3), Identity)"
    assert lines[4] == "(SE(O40, E4.0, K3), None)"


# ---------------------------------------------------------------------------------------------- set_constraint
@pytest.mark.parametrize("kind", ["mbv3_w1.0", "proxyless_w1.3"])
def test_constrained_sampling_matches_official(kind):
    ref, ours = build(kind)
    n_blocks, n_stages = len(ours.blocks) - 1, len(ours.block_group_info)
    per_block_e = [[3, 4] if i % 2 else [6] for i in range(n_blocks)]
    constraints = [([3, 5], "kernel_size"), (per_block_e, "expand_ratio"), ([2], "depth")]
    for include_list, constraint_type in constraints:
        ref.set_constraint(include_list, constraint_type)
        ours.set_constraint(include_list, constraint_type)
    for seed in range(5):
        random.seed(seed)
        setting = ours.sample_active_subnet()
        random.seed(seed)
        assert setting == ref.sample_active_subnet()
        assert set(setting["ks"]) <= {3, 5}
        assert all(e in allowed for e, allowed in zip(setting["e"], per_block_e))
        # ProxylessNAS: the one-block last stage runs whole whatever the constraint
        assert setting["d"] == [2] * 5 + ([1] if n_stages == 6 else [])
        assert ours.module_str == ref.module_str
    ref.clear_constraint()
    ours.clear_constraint()
    random.seed(11)
    setting = ours.sample_active_subnet()
    random.seed(11)
    assert setting == ref.sample_active_subnet()
    assert 7 in setting["ks"]  # 20+ blocks without a 7 after clearing: chance (2/3)^20


def test_set_constraint_rejects_what_it_cannot_honour(mbv3):
    with pytest.raises(ArchError, match=r"constraint_type = 'ks' is not known; choices are \('kernel_size'"):
        mbv3.set_constraint([3], "ks")
    with pytest.raises(
        ArchError,
        match=r"allows \[9\], which are not choices of this supernet at block 0; choices are \(3, 5, 7\)",
    ):
        mbv3.set_constraint([3, 9], "kernel_size")
    with pytest.raises(ArchError, match=r"has 2 lists; expected one per stage \(5\)"):
        mbv3.set_constraint([[2], [3]], "depth")
    with pytest.raises(ArchError, match="non-empty list"):
        mbv3.set_constraint([], "expand_ratio")
    with pytest.raises(ArchError, match="mixes lists and values"):
        mbv3.set_constraint([[3, 4], 6] + [[6]] * 18, "expand_ratio")
    with pytest.raises(ArchError, match="allows nothing at stage 2"):
        mbv3.set_constraint([[2], [3], [], [4], [2]], "depth")
    # nothing was recorded by the failed calls
    random.seed(0)
    assert set(mbv3.sample_active_subnet()["ks"]) == {3, 5, 7}


# ---------------------------------------------------------------------------------------------- BN parameters
def test_bn_param_methods_match_official(pair):
    _, ref, ours = pair
    default = ref.get_bn_param()
    assert ours.get_bn_param() == default
    ref.set_bn_param(momentum=0.05, eps=2e-3)
    ours.set_bn_param(momentum=0.05, eps=2e-3)
    assert bn_settings(ours) == bn_settings(ref) and bn_settings(ours)[0] == (0.05, 2e-3)
    subnet, ref_subnet = ours.get_active_subnet(), ref.get_active_subnet()
    assert (
        subnet.get_bn_param() == ref_subnet.get_bn_param() == {"momentum": 0.05, "eps": 2e-3, "ws_eps": None}
    )
    # the official idiom: copy one net's BN settings into another
    fresh = type(subnet).build_from_config(subnet.config)
    fresh.set_bn_param(momentum=0.3, eps=1e-1)
    fresh.set_bn_param(**subnet.get_bn_param())
    assert bn_settings(fresh) == bn_settings(subnet)
    ref.set_bn_param(**default)
    ours.set_bn_param(**default)


def test_set_bn_param_refuses_group_norm_and_weight_standardisation(mbv3):
    before = bn_settings(mbv3)
    with pytest.raises(OFAError, match="gn_channel_per_group = 8: GroupNorm is not supported; pass None"):
        mbv3.set_bn_param(0.1, 1e-5, gn_channel_per_group=8)
    with pytest.raises(OFAError, match="ws_eps = 1e-05: weight standardisation is not supported"):
        mbv3.set_bn_param(0.1, 1e-5, ws_eps=1e-5)
    with pytest.raises(OFAError, match=r"unknown keywords \['epsilon'\]"):
        mbv3.set_bn_param(momentum=0.1, eps=1e-5, epsilon=1e-3)
    assert bn_settings(mbv3) == before


# ---------------------------------------------------------------------------------------------- set_active_subnet
def test_set_active_subnet_rejects_unknown_keywords(mbv3):
    mbv3.set_active_subnet(ks=5, e=4, d=3)
    before = mbv3.active_arch()
    with pytest.raises(ArchError, match=r"unknown keyword 'kss'; it takes ks, e, d"):
        mbv3.set_active_subnet(kss=7, e=6)
    with pytest.raises(ArchError, match=r"r=\[160\].*input size.*set_arch\(Arch.from_dict"):
        mbv3.set_active_subnet(ks=7, r=[160])
    with pytest.raises(ArchError, match=r"wid = 1 cannot be honoured: .* has one width"):
        mbv3.set_active_subnet(wid=1, ks=7)
    assert mbv3.active_arch() == before  # a rejected call changes nothing
    mbv3.set_active_subnet(wid=None, ks=7)  # the pre-2020-11 signature's default
    mbv3.set_active_subnet(7, 6, 4)  # positional, as the official signature allows
    assert mbv3.active_arch() == mbv3.search_space().max_arch()


def test_resnet_set_active_subnet_keywords():
    ours = OFAResNets(**RESNET_LISTS)
    with pytest.raises(ArchError, match=r"unknown keyword 'depth'; it takes d, e, w"):
        ours.set_active_subnet(depth=1)
    with pytest.raises(ArchError, match=r"unknown keyword 'wid'; the ResNet width indices are `w`"):
        ours.set_active_subnet(wid=0)
    ours.set_active_subnet(d=[0, 1, 2, 0, 1], e=0.25, w=[0, 1, 2, 0, 1, 2])
    assert ours.active_arch().d == (0, 1, 2, 0, 1)


# ---------------------------------------------------------------------------------------------- load_state_dict
def test_load_state_dict_takes_official_layouts(pair):
    kind, ref, ours = pair
    state = noisy(ref.state_dict(), seed=1)
    variant = state if kind == "resnet50" else old_layout(state)
    if kind != "resnet50":
        assert any(".mobile_inverted_conv." in k for k in variant)
    ref.load_state_dict(variant)
    ours.load_state_dict(variant)
    assert same_state(ours, ref)
    ours.load_state_dict(ref.state_dict())  # and our own (the official current) layout


def test_static_teacher_loads_as_in_official_and_needs_zoo_for_matrices():
    networks = ofa_reference.import_ofa("ofa.imagenet_classification.networks")
    teacher = networks.MobileNetV3Large(width_mult=1.0, ks=7, expand_ratio=6, depth_param=4, dropout_rate=0)
    state = noisy(teacher.state_dict(), seed=2)
    assert "first_conv.bn.weight" in state and "blocks.1.conv.depth_conv.bn.weight" in state
    ref = ofa_reference.import_ofa().OFAMobileNetV3(
        ks_list=7, expand_ratio_list=6, depth_list=4, dropout_rate=0
    )
    ours = OFAMobileNetV3(ks_list=7, expand_ratio_list=6, depth_list=4, dropout_rate=0)
    ref.load_state_dict(state)
    ours.load_state_dict(state)  # static nesting (bn.weight) onto dynamic (bn.bn.weight)
    assert same_state(ours, ref)
    # into an elastic-kernel supernet the teacher lacks the kernel matrices, which the official
    # loader silently keeps from the model; here that is an error that names the fix
    with pytest.raises(CheckpointError, match=r"40 keys are missing.*_matrix.*zoo.load_official"):
        OFAMobileNetV3(**MBV3_LISTS).load_state_dict(state)


def test_subnet_state_dict_loads_into_a_fitting_supernet():
    """A static subnet's file (single nesting) maps onto a supernet whose only subnet it is."""
    ours = OFAMobileNetV3(ks_list=5, expand_ratio_list=4, depth_list=3, dropout_rate=0)
    ours.load_state_dict(noisy(ours.state_dict(), seed=3))
    subnet = ours.get_active_subnet()
    fresh = OFAMobileNetV3(ks_list=5, expand_ratio_list=4, depth_list=3, dropout_rate=0)
    fresh.load_state_dict(subnet.state_dict())
    assert same_state(fresh, ours)


def test_load_state_dict_errors_name_the_keys(mbv3):
    state = old_layout(mbv3.state_dict())
    with pytest.raises(
        CheckpointError, match=r"1 keys are unknown, e.g. \['blocks.3.mobile_inverted_conv.extra'\]"
    ):
        mbv3.load_state_dict({**state, "blocks.3.mobile_inverted_conv.extra": torch.zeros(1)})
    missing = dict(state)
    del missing["blocks.2.mobile_inverted_conv.point_linear.bn.bn.weight"]
    with pytest.raises(
        CheckpointError, match=r"1 keys are missing, e.g. \['blocks.2.conv.point_linear.bn.bn.weight'\]"
    ):
        mbv3.load_state_dict(missing)
    both = {**state, "blocks.2.conv.point_linear.bn.bn.weight": torch.ones(24)}
    with pytest.raises(CheckpointError, match="given twice by the state dict under different spellings"):
        mbv3.load_state_dict(both)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        mbv3.load_state_dict([("first_conv.conv.weight", torch.zeros(1))])
    # non-strict loading maps the official spellings of a part
    before = {k: v.clone() for k, v in mbv3.state_dict().items()}
    bias = torch.ones_like(mbv3.blocks[1].conv.depth_conv.bn.bn.bias)
    mbv3.load_state_dict({"blocks.1.mobile_inverted_conv.depth_conv.bn.bias": bias}, strict=False)
    assert torch.equal(mbv3.blocks[1].conv.depth_conv.bn.bn.bias, bias)
    mbv3.load_state_dict(before)


def test_map_official_keys_spellings():
    model_keys = {
        "blocks.1.conv.depth_conv.bn.bn.weight",
        "classifier.linear.linear.weight",
        "first_conv.conv.weight",
    }
    state = dict.fromkeys(
        [
            "blocks.1.mobile_inverted_conv.depth_conv.bn.weight",  # old name and static nesting
            "classifier.linear.weight",  # static linear onto the dynamic one
            "first_conv.conv.weight",  # as in the model
            "first_conv.bn.running_mean",  # nowhere
        ],
        torch.zeros(1),
    )
    assert map_official_keys(state, model_keys) == {
        "blocks.1.mobile_inverted_conv.depth_conv.bn.weight": "blocks.1.conv.depth_conv.bn.bn.weight",
        "classifier.linear.weight": "classifier.linear.linear.weight",
        "first_conv.conv.weight": "first_conv.conv.weight",
    }
    # and the other way: a supernet's nesting onto a static net
    static_keys = {"blocks.1.conv.depth_conv.bn.weight", "classifier.linear.weight"}
    dynamic = dict.fromkeys(["blocks.1.conv.depth_conv.bn.bn.weight", "classifier.linear.linear.weight"], 0)
    assert set(map_official_keys(dynamic, static_keys).values()) == static_keys


# ---------------------------------------------------------------------------------------------- Arch.from_dict
def test_tutorial_net_configs_become_archs():
    finder = ofa_reference.import_ofa("ofa.tutorial.evolution_finder")
    ref, ours = build("mbv3_w1.2")
    space = ours.search_space(resolutions=(160, 176, 192, 208, 224))
    random.seed(4)
    for _ in range(3):
        sample = finder.ArchManager().random_sample()
        assert sample["wid"] is None and len(sample["r"]) == 1
        arch = Arch.from_dict(sample, space=space.name)
        assert arch.image_size == sample["r"][0]
        assert space.validate(arch) is arch
        ours.set_arch(arch)
        ref.set_active_subnet(ks=sample["ks"], e=sample["e"], d=sample["d"])  # the tutorial's call
        expected = without_default_groups(json.loads(json.dumps(ref.get_active_net_config())))
        assert without_default_groups(ours.get_active_net_config()) == expected
    assert Arch.from_dict({**sample, "r": 176}, space=space.name).image_size == 176
    assert Arch.from_dict({**sample, "r": [176], "image_size": 176}, space=space.name).image_size == 176


def test_official_dicts_that_cannot_be_honoured_are_errors():
    base = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5}
    space = "ofa_mbv3_d234_e346_k357_w1.0"
    with pytest.raises(ArchError, match=r"arch.wid = 1 cannot be honoured: .*must be None.*'w'"):
        Arch.from_dict({**base, "wid": 1, "r": [160]}, space=space)
    with pytest.raises(ArchError, match=r"arch.r = \[160, 176\] is not one input size"):
        Arch.from_dict({**base, "r": [160, 176]}, space=space)
    with pytest.raises(ArchError, match=r"arch.r = '160' is not one input size"):
        Arch.from_dict({**base, "r": "160"}, space=space)
    with pytest.raises(ArchError, match=r"image_size = 160 and r = \[176\]; give one input size"):
        Arch.from_dict({**base, "r": [176], "image_size": 160}, space=space)
    with pytest.raises(ArchError, match=r"unknown arch keys \['width'\]"):
        Arch.from_dict({**base, "r": [160], "width": 1}, space=space)


def test_our_arch_format_and_resnet_dicts_are_unchanged():
    ours = OFAResNets(**RESNET_LISTS)
    arch = ours.search_space().max_arch()
    assert Arch.from_dict(json.loads(arch.to_json())) == arch
    random.seed(0)
    setting = ofa_reference.import_ofa().OFAResNets(**RESNET_LISTS).sample_active_subnet()
    got = Arch.from_dict({**setting, "image_size": 224}, space=ours.search_space().name)
    assert got.subnet_kwargs() == setting
    ours.set_arch(got)


def test_static_subnets_module_str_and_config_of_specialized_style_nets():
    """A subnet rebuilt from its config prints and reports BN settings as the official one."""
    networks = ofa_reference.import_ofa("ofa.imagenet_classification.networks")
    ours = OFAMobileNetV3(dropout_rate=0, **MBV3_LISTS)
    ours.set_active_subnet(ks=[3, 5, 7, 5] * 5, e=[3, 4, 6, 4] * 5, d=[2, 3, 4, 3, 2])
    config = json.loads(json.dumps(ours.get_active_net_config()))
    rebuilt, ref = MobileNetV3.build_from_config(config), networks.MobileNetV3.build_from_config(config)
    assert rebuilt.module_str == ref.module_str
    assert rebuilt.get_bn_param() == ref.get_bn_param()
