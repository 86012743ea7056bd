"""OFA-ProxylessNAS: structure, oracle counts, extraction parity, configs, encoding, bad input."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from random_init import input_matters, randomize_signal
from torch.utils.flop_counter import FlopCounterMode

from onceforall import Arch, ArchError, OFAError, OFAProxylessNASNets, ProxylessNASNets
from onceforall.specialize import count_macs, count_params

import ofa_reference

FULL = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], dropout_rate=0)
needs_reference = pytest.mark.skipif(
    not ofa_reference.available(), reason="the official ofa package is not installed (make reference)"
)


@pytest.fixture(scope="module")
def proxyless() -> OFAProxylessNASNets:
    net = OFAProxylessNASNets(n_classes=10, width_mult=1.3, resolutions=(32, 41, 64), **FULL)
    return randomize_signal(net, seed=11).eval()


def sample(net, n: int, seed: int) -> list[Arch]:
    space = net.search_space()
    return space.decode(space.sample(n, torch.Generator().manual_seed(seed)))


def test_oracle_counts():
    net = OFAProxylessNASNets(width_mult=1.3, **FULL)
    assert sum(p.numel() for p in net.parameters()) == 7_956_882
    space = net.search_space()
    assert space.name == "ofa_proxyless_d234_e346_k357_w1.3"
    assert space.count() == 7371**5 * 9 and f"{space.count():.3g}" == "1.96e+20"
    assert space.count(include_resolution=True) == 25 * space.count()
    maxes, mins = (329.25, 513.52, 738.74, 1004.91), (87.82, 136.29, 195.52, 265.53)
    for r, big, small in zip((128, 160, 192, 224), maxes, mins):
        macs = count_macs(space, [space.max_arch(r), space.min_arch(r)]) / 1e6
        assert macs.tolist() == pytest.approx([big, small], abs=0.005)
    params = count_params(space, [space.max_arch(), space.min_arch()]) / 1e6
    assert params.tolist() == pytest.approx([7.942, 3.719], abs=0.0005)


def test_state_dict_layout_matches_official():
    net = OFAProxylessNASNets(width_mult=1.3, **FULL)
    sd = net.state_dict()
    assert len(sd) == 446
    assert sd["first_conv.conv.weight"].shape == (40, 3, 3, 3)
    assert sd["blocks.0.conv.depth_conv.conv.weight"].shape == (40, 1, 3, 3)
    assert sd["blocks.0.conv.point_linear.conv.weight"].shape == (24, 40, 1, 1)
    assert sd["blocks.1.conv.depth_conv.conv.7to5_matrix"].shape == (25, 25)
    assert sd["feature_mix_layer.conv.weight"].shape == (1664, 416, 1, 1)
    assert sd["feature_mix_layer.bn.running_var"].shape == (1664,)
    assert sd["classifier.linear.weight"].shape == (1000, 1664)
    mids = [sd[f"blocks.{i}.conv.inverted_bottleneck.conv.conv.weight"].shape[0] for i in range(1, 22)]
    assert mids[0::4][:5] == [144, 192, 336, 624, 768] and mids[1::4][:5] == [192, 336, 624, 768, 1488]
    assert mids[20] == 1488 and net.block_group_info[-1] == [21]
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    assert net.blocks[0].shortcut is None


def test_extraction_parity(proxyless):
    space = proxyless.search_space()
    for arch in [space.max_arch(64), space.min_arch(32), *sample(proxyless, 8, seed=1)]:
        proxyless.set_arch(arch)
        subnet = proxyless.get_active_subnet().eval()
        x = torch.randn(2, 3, arch.image_size, arch.image_size)
        with torch.no_grad():
            expected, got = proxyless(x), subnet(x)
        assert input_matters(expected)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_counts_equal_flop_counter_and_extracted_params(proxyless):
    space = proxyless.search_space()
    archs = [space.max_arch(64), space.min_arch(41), *sample(proxyless, 4, seed=2)]
    macs, params = count_macs(space, archs), count_params(space, archs)
    for arch, m, p in zip(archs, macs.tolist(), params.tolist()):
        proxyless.set_arch(arch)
        subnet = proxyless.get_active_subnet()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            subnet(torch.randn(1, 3, arch.image_size, arch.image_size))
        assert counter.get_total_flops() == 2 * m
        assert sum(t.numel() for t in subnet.parameters()) == p


def test_net_config_round_trip(proxyless):
    proxyless.set_arch(sample(proxyless, 1, seed=3)[0])
    config = json.loads(json.dumps(proxyless.get_active_net_config()))
    subnet = proxyless.get_active_subnet().eval()
    assert config == subnet.config and config["name"] == "ProxylessNASNets"
    assert config["bn"]["eps"] == 1e-3 and len(config["blocks"]) == 1 + sum(proxyless.runtime_depth)
    rebuilt = ProxylessNASNets.build_from_config(config).eval()
    rebuilt.load_state_dict(subnet.state_dict())
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), subnet(x))


def test_sample_set_and_active_arch(proxyless):
    random.seed(0)
    config = proxyless.sample_active_subnet()
    assert len(config["ks"]) == len(config["e"]) == 21 and len(config["d"]) == 6 and config["d"][-1] == 1
    assert proxyless.active_arch(41).subnet_kwargs() == config
    proxyless.set_max_net()
    assert proxyless.runtime_depth == [4, 4, 4, 4, 4, 1]
    assert proxyless.active_arch() == proxyless.search_space().max_arch()
    proxyless.set_active_subnet(d=2)  # a scalar depth leaves the one-block last stage running
    assert proxyless.runtime_depth == [2, 2, 2, 2, 2, 1]


def test_space_structure(proxyless):
    space = proxyless.search_space()
    assert space.n_genes == 1 + 6 + 21 + 21 and space.genes[6].choices == (1,)
    assert space.onehot_dim == 3 + 21 * 3 * 2
    active = space.active(space.encode(space.min_arch()))
    assert active.sum().item() == 11 and active[0, 20]


def test_channel_sorting_keeps_max_subnet_and_parity(proxyless):
    net = copy.deepcopy(proxyless)
    net.set_max_net()
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        before = net(x)
        net.re_organize_middle_weights(expand_ratio_stage=1)
        assert (net(x) - before).abs().max() <= 1e-4 * before.abs().max()
    arch = sample(net, 1, seed=4)[0]
    net.set_arch(arch)
    x = torch.randn(2, 3, arch.image_size, arch.image_size)
    with torch.no_grad():
        assert (net.get_active_subnet().eval()(x) - net(x)).abs().max() <= 1e-5 * net(x).abs().max()


def test_google_widths_and_small_inputs():
    net = OFAProxylessNASNets(
        n_classes=10, base_stage_width="google", in_channels=1, first_stride=1, resolutions=(28, 32), **FULL
    )
    assert net.stage_widths == (24, 32, 64, 96, 160, 320) and net.total_stride == 16
    assert net.search_space().name == "ofa_proxyless_d234_e346_k357_w1.0_google_in1_s1222121"
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@needs_reference
def test_onehot_matches_reference_encoder(proxyless):
    encoders = ofa_reference.import_ofa("ofa.nas.accuracy_predictor.arch_encoder")

    class ProxylessEncoder(encoders.MobileNetArchEncoder):
        SPACE_TYPE = "mbv2"

    space = proxyless.search_space()
    encoder = ProxylessEncoder(list(space.resolutions), [3, 5, 7], [3, 4, 6], [2, 3, 4])
    population = space.sample(20, torch.Generator().manual_seed(5))
    features = space.onehot(population)
    for arch, feature in zip(space.decode(population), features):
        expected = encoder.arch2feature({**arch.subnet_kwargs(), "image_size": arch.image_size})
        assert feature.tolist() == expected.tolist()


@needs_reference
def test_sampling_draws_the_reference_subnets(proxyless):
    networks = ofa_reference.import_ofa()
    ref = networks.OFAProxylessNASNets(n_classes=10, width_mult=1.3, **FULL)
    for seed in range(3):
        random.seed(seed)
        ours = proxyless.sample_active_subnet()
        random.seed(seed)
        assert ref.sample_active_subnet() == ours


def test_bad_arguments_and_archs(proxyless):
    with pytest.raises(OFAError, match="stage_strides needs 6 entries"):
        OFAProxylessNASNets(stage_strides=(2, 2, 2, 1, 2))
    with pytest.raises(OFAError, match="base_stage_width must be None"):
        OFAProxylessNASNets(base_stage_width=[32, 16])
    with pytest.raises(ArchError, match=r"d = 5 is not allowed; choices are \(2, 3, 4\)"):
        proxyless.set_active_subnet(d=[5, 2, 2, 2, 2, 1])
    with pytest.raises(ArchError, match="ks has 20 entries; expected 21"):
        proxyless.set_active_subnet(ks=[3] * 20)
    space = proxyless.search_space()
    bad = Arch(space.name, 32, d=(4, 4, 4, 4, 4, 2), e=(6,) * 21, ks=(7,) * 21)
    with pytest.raises(ArchError, match=r"arch.d\[5\] = 2 is not allowed; choices are \(1,\)"):
        proxyless.set_arch(bad)
    with pytest.raises(OFAError, match="smaller than the network's total stride 32"):
        proxyless(torch.randn(1, 3, 16, 16))
