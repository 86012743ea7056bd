"""OFA-ResNet50: structure, oracle counts, extraction parity, configs, encoding, sorting, bad input."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from random_init import input_matters, randomize_signal
from torch.utils.flop_counter import FlopCounterMode

from onceforall import Arch, ArchError, OFAError, OFAResNets, ResNets
from onceforall.spaces.resnet import RESNET_RESOLUTIONS
from onceforall.specialize import count_macs, count_params

import ofa_reference

FULL = dict(depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35], width_mult_list=[0.65, 0.8, 1.0])
needs_reference = pytest.mark.skipif(
    not ofa_reference.available(), reason="the official ofa package is not installed (make reference)"
)


@pytest.fixture(scope="module")
def resnet() -> OFAResNets:
    return randomize_signal(OFAResNets(n_classes=10, resolutions=(32, 41, 64), **FULL), seed=12).eval()


@pytest.fixture(scope="module")
def big() -> OFAResNets:
    return OFAResNets(**FULL)


def sample(net, n: int, seed: int) -> list[Arch]:
    space = net.search_space()
    return space.decode(space.sample(n, torch.Generator().manual_seed(seed)))


def test_oracle_counts(big):
    assert sum(p.numel() for p in big.parameters()) == 48_105_992
    space = big.search_space()
    assert space.name == "ofa_resnet50" and space.resolutions == RESNET_RESOLUTIONS
    assert space.count() == 2 * 3**6 * 117**3 * 1053 and f"{space.count():.3g}" == "2.46e+12"
    macs = count_macs(space, [space.max_arch(128), space.max_arch(224), space.max_arch(256)]) / 1e6
    assert macs.tolist() == pytest.approx([2447.6, 7491.6, 9784.4], abs=0.05)
    assert count_macs(space, space.min_arch(224)).item() / 1e6 == pytest.approx(962.2, abs=0.05)
    params = count_params(space, [space.max_arch(), space.min_arch()]) / 1e6
    assert params.tolist() == pytest.approx([48.11, 6.54], abs=0.005)


def test_state_dict_layout_and_widths_match_official(big):
    sd = big.state_dict()
    assert len(sd) == 368 and not any(k.endswith("_matrix") for k in sd)
    assert sd["input_stem.0.conv.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["input_stem.1.conv.conv.conv.weight"].shape == (32, 32, 3, 3)
    assert sd["input_stem.2.conv.conv.weight"].shape == (64, 32, 3, 3)
    assert sd["blocks.0.conv1.conv.conv.weight"].shape == (88, 64, 1, 1)
    assert sd["blocks.0.conv2.conv.conv.weight"].shape == (88, 88, 3, 3)
    assert sd["blocks.0.conv3.conv.conv.weight"].shape == (256, 88, 1, 1)
    assert sd["blocks.0.downsample.conv.conv.weight"].shape == (256, 64, 1, 1)
    assert sd["blocks.17.conv1.conv.conv.weight"].shape == (720, 2048, 1, 1)
    assert sd["classifier.linear.linear.weight"].shape == (1000, 2048)
    projected = sorted({int(k.split(".")[1]) for k in sd if ".downsample." in k})
    assert projected == [0, 4, 8, 14]
    assert big.input_stem[0].out_channel_list == [24, 24, 32]
    assert big.input_stem[2].out_channel_list == [40, 48, 64]
    assert big.stage_widths == ([168, 208, 256], [336, 408, 512], [664, 816, 1024], [1328, 1640, 2048])
    assert big.block_group_info == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]


def test_extraction_parity(resnet):
    space = resnet.search_space()
    for arch in [space.max_arch(64), space.min_arch(32), *sample(resnet, 6, seed=1)]:
        resnet.set_arch(arch)
        subnet = resnet.get_active_subnet().eval()
        assert len(subnet.input_stem) == (3 if arch.d[0] else 2)
        x = torch.randn(2, 3, arch.image_size, arch.image_size)
        with torch.no_grad():
            expected, got = resnet(x), subnet(x)
        assert input_matters(expected)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_counts_equal_flop_counter_and_extracted_params(resnet):
    space = resnet.search_space()
    archs = [space.max_arch(41), space.min_arch(32), *sample(resnet, 3, seed=2)]
    macs, params = count_macs(space, archs), count_params(space, archs)
    for arch, m, p in zip(archs, macs.tolist(), params.tolist()):
        resnet.set_arch(arch)
        subnet = resnet.get_active_subnet()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            subnet(torch.randn(1, 3, arch.image_size, arch.image_size))
        assert counter.get_total_flops() == 2 * m
        assert sum(t.numel() for t in subnet.parameters()) == p


def test_net_config_is_json_and_round_trips(resnet):
    resnet.set_active_subnet(d=[2, 1, 0, 2, 1], e=0.25, w=[0, 1, 2, 1, 0, 2])
    config = json.loads(json.dumps(resnet.get_active_net_config()))
    subnet = resnet.get_active_subnet().eval()
    assert config == subnet.config and config["input_stem"][1]["shortcut"]["name"] == "IdentityLayer"
    assert [b["mid_channels"] for b in config["blocks"][:3]] == [64, 64, 64]  # stage 1 at w=1.0, e=0.25
    rebuilt = ResNets.build_from_config(config).eval()
    rebuilt.load_state_dict(subnet.state_dict())
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), subnet(x))


def test_active_arch_round_trips_width_indices(resnet):
    arch = Arch(resnet.search_space().name, 41, d=(0, 1, 2, 0, 1), e=(0.2,) * 18, w=(1, 0, 2, 1, 0, 2))
    resnet.set_arch(arch)
    assert resnet.input_stem[0].active_out_channel == 24  # w 0 and 1 give the same stem width
    assert resnet.input_stem_skipping and resnet.runtime_depth == [1, 0, 2, 1]
    assert resnet.active_arch(41) == arch
    random.seed(0)
    config = resnet.sample_active_subnet()
    assert config["d"][0] in (0, 2) and len(config["e"]) == 18 and len(config["w"]) == 6
    assert resnet.active_arch().subnet_kwargs() == config
    resnet.set_max_net()
    assert resnet.active_arch() == resnet.search_space().max_arch()


def test_space_structure(resnet):
    space = resnet.search_space()
    assert [g.label for g in space.genes[:8]] == [
        "image_size",
        "d[0]",
        "d[1]",
        "d[2]",
        "d[3]",
        "d[4]",
        "w[0]",
        "w[1]",
    ]
    assert space.genes[1].choices == (0, 2) and space.n_slots == 19
    assert space.onehot_dim == 3 + 2 + 6 * 3 + 18 * 3
    active = space.active(space.encode(space.min_arch()))
    assert active.sum().item() == 10 and not active[0, 18]


def test_channel_sorting_keeps_max_subnet_and_protects_narrow_widths(resnet):
    net = copy.deepcopy(resnet)
    net.set_max_net()
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        before = net(x)
        net.re_organize_middle_weights(0)
        assert (net(x) - before).abs().max() <= 1e-4 * before.abs().max()
    block = net.blocks[5]  # stage 2: the e=0.2 width is make_divisible(round(512 * 0.2)) = 104
    narrow = 104
    weight = block.conv3.conv.conv.weight
    front = set(weight[0, :narrow, 0, 0].tolist())
    block.re_organize_middle_weights(expand_ratio_stage=2)
    assert set(weight[0, :narrow, 0, 0].tolist()) == front


@needs_reference
def test_onehot_matches_reference_encoder(resnet):
    encoders = ofa_reference.import_ofa("ofa.nas.accuracy_predictor.arch_encoder")
    space = resnet.search_space()
    encoder = encoders.ResNetArchEncoder(
        list(space.resolutions), [0, 1, 2], [0.2, 0.25, 0.35], [0.65, 0.8, 1.0]
    )
    population = space.sample(20, torch.Generator().manual_seed(5))
    for arch, feature in zip(space.decode(population), space.onehot(population)):
        expected = encoder.arch2feature({**arch.subnet_kwargs(), "image_size": arch.image_size})
        assert feature.tolist() == expected.tolist()


@needs_reference
def test_sampling_and_channel_sorting_match_reference(resnet):
    networks = ofa_reference.import_ofa()
    ref = networks.OFAResNets(n_classes=10, dropout_rate=0, **FULL)
    ref.load_state_dict(resnet.state_dict())
    for seed in range(3):
        random.seed(seed)
        ours = resnet.sample_active_subnet()
        random.seed(seed)
        assert ref.sample_active_subnet() == ours
    ours = copy.deepcopy(resnet)
    for stage in (0, 1):
        ours.re_organize_middle_weights(stage)
        ref.re_organize_middle_weights(stage)
        expected = ref.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())


def test_bad_arguments_and_archs(resnet):
    with pytest.raises(OFAError, match=r"depths .* must be integers >= 0"):
        OFAResNets(depth_list=[-1, 2])
    with pytest.raises(OFAError, match="width multipliers must be positive"):
        OFAResNets(width_mult_list=[0, 1.0])
    with pytest.raises(ArchError, match=r"w = 0.65 is not allowed; choices are \(0, 1, 2\) \(indices into"):
        resnet.set_active_subnet(w=0.65)
    with pytest.raises(ArchError, match=r"w = 1.0 is not allowed"):
        resnet.set_active_subnet(w=1.0)
    with pytest.raises(ArchError, match="e has 17 entries; expected 18"):
        resnet.set_active_subnet(e=[0.25] * 17)
    with pytest.raises(ArchError, match=r"d = 3 is not allowed"):
        resnet.set_active_subnet(d=[2, 3, 0, 0, 0])
    with pytest.raises(OFAError, match="input has 1 channels but the network takes 3"):
        resnet(torch.randn(1, 1, 64, 64))
