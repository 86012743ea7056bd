"""OFA-MobileNetV3: structure, extraction parity, channel sorting, oracle counts, bad input."""

import copy
import json

import pytest
import torch
from random_init import input_matters, randomize_signal
from torch.utils.flop_counter import FlopCounterMode

from onceforall import ArchError, CheckpointError, MobileNetV3, OFAError, OFAMobileNetV3
from onceforall.nn import make_divisible
from onceforall.spaces.mobilenet_v3 import SMALL_INPUT_FIRST_STRIDE, SMALL_INPUT_STRIDES
from onceforall.specialize import count_macs, count_params

FULL = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], dropout_rate=0)


def check_parity(net, archs, atol_rel=1e-5):
    space = net.search_space()
    for arch in archs:
        net.set_arch(arch)
        subnet = net.get_active_subnet().eval()
        x = torch.randn(2, net.in_channels, arch.image_size, arch.image_size)
        with torch.no_grad():
            expected, got = net(x), subnet(x)
        assert input_matters(expected), "the test network ignores its input"
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= atol_rel * scale, space.name


def test_extraction_parity_30_random_archs(mbv3):
    space = mbv3.search_space()
    archs = space.decode(space.sample(30, torch.Generator().manual_seed(1)))
    check_parity(mbv3, archs)


def test_extraction_parity_after_channel_sorting(mbv3):
    net = copy.deepcopy(mbv3)
    net.re_organize_middle_weights(expand_ratio_stage=1)
    space = net.search_space()
    check_parity(net, space.decode(space.sample(10, torch.Generator().manual_seed(2))))


def test_channel_sorting_keeps_max_subnet_function(mbv3):
    # float64: the permutation only reorders sums, so any difference beyond rounding is a bug
    net = copy.deepcopy(mbv3).double()
    net.set_max_net()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        assert input_matters(before)
        for stage in (0, 1):
            net.re_organize_middle_weights(stage)
            assert torch.allclose(net(x), before, rtol=0, atol=1e-9 * before.abs().max().item())


def test_channel_sorting_puts_important_channels_first(mbv3):
    net = copy.deepcopy(mbv3)
    net.re_organize_middle_weights(0)
    for layer in net.dynamic_blocks:
        importance = layer.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(importance[:-1] >= importance[1:] - 1e-6)


def test_protected_sorting_keeps_narrow_channels_in_front(mbv3):
    layer = copy.deepcopy(mbv3.dynamic_blocks[5])
    width_e4 = make_divisible(round(layer.in_channel_list[0] * 4))
    weight = layer.point_linear.conv.conv.weight
    front, back = set(weight[0, :width_e4, 0, 0].tolist()), set(weight[0, width_e4:, 0, 0].tolist())
    layer.re_organize_middle_weights(expand_ratio_stage=1)
    assert set(weight[0, :width_e4, 0, 0].tolist()) == front
    assert set(weight[0, width_e4:, 0, 0].tolist()) == back
    importance = weight[:, :width_e4].abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:] - 1e-6)


def test_small_input_configuration_parity():
    net = OFAMobileNetV3(
        n_classes=10,
        in_channels=1,
        first_stride=SMALL_INPUT_FIRST_STRIDE,
        stage_strides=SMALL_INPUT_STRIDES,
        resolutions=(28, 32),
        width_mult=0.5,
        **FULL,
    )
    randomize_signal(net, size=32).eval()
    assert net.total_stride == 8
    space = net.search_space()
    assert space.name.endswith("_in1_s122211")
    check_parity(net, space.decode(space.sample(5, torch.Generator().manual_seed(3))))


def test_state_dict_layout_matches_official():
    net = OFAMobileNetV3(**FULL)
    sd = net.state_dict()
    assert len(sd) == 475
    assert sd["blocks.1.conv.depth_conv.conv.7to5_matrix"].shape == (25, 25)
    assert sd["blocks.1.conv.inverted_bottleneck.conv.conv.weight"].shape == (96, 16, 1, 1)
    assert sd["blocks.5.conv.depth_conv.se.fc.reduce.weight"].shape == (40, 144, 1, 1)
    assert sd["feature_mix_layer.conv.weight"].shape == (1280, 960, 1, 1)
    assert "feature_mix_layer.bn.weight" not in sd
    assert sd["classifier.linear.weight"].shape == (1000, 1280)


@pytest.mark.parametrize(
    ("width", "params", "max_macs", "min_macs", "max_params", "min_params"),
    [
        (1.0, 7_678_880, (188.25, 291.32, 417.29, 566.17), (41.48, 63.24, 89.84, 121.28), 7.665, 3.411),
        (1.2, 10_715_752, (279.99, 433.56, 621.27, 843.10), (65.54, 100.32, 142.83, 193.08), 10.702, 4.602),
    ],
)
def test_oracle_counts(width, params, max_macs, min_macs, max_params, min_params):
    net = OFAMobileNetV3(width_mult=width, **FULL)
    assert sum(p.numel() for p in net.parameters()) == params
    space = net.search_space()
    for r, big, small in zip((128, 160, 192, 224), max_macs, min_macs):
        macs = count_macs(space, [space.max_arch(r), space.min_arch(r)]) / 1e6
        assert macs.tolist() == pytest.approx([big, small], abs=0.005)
    counted = count_params(space, [space.max_arch(), space.min_arch()]) / 1e6
    assert counted.tolist() == pytest.approx([max_params, min_params], abs=0.0005)


@pytest.mark.parametrize(
    ("d", "e", "k", "macs"),
    [
        (2, 3, 3, 121.3),
        (2, 3, 7, 151.3),
        (2, 6, 3, 222.6),
        (2, 6, 7, 282.6),
        (4, 3, 3, 226.2),
        (4, 3, 7, 292.7),
        (4, 6, 3, 433.1),
        (4, 6, 7, 566.2),
    ],
)
def test_uniform_subnet_macs(d, e, k, macs):
    space = OFAMobileNetV3(**FULL).search_space()
    arch = space.validate(type(space.max_arch())(space.name, 224, d=(d,) * 5, e=(e,) * 20, ks=(k,) * 20))
    assert count_macs(space, arch).item() / 1e6 == pytest.approx(macs, abs=0.05)


def test_counts_equal_flop_counter_and_extracted_params(mbv3):
    space = mbv3.search_space()
    randoms = space.decode(space.sample(6, torch.Generator().manual_seed(4)))
    archs = [space.max_arch(160), space.min_arch(128), *randoms]
    macs, params = count_macs(space, archs), count_params(space, archs)
    for arch, m, p in zip(archs, macs.tolist(), params.tolist()):
        mbv3.set_arch(arch)
        subnet = mbv3.get_active_subnet()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            subnet(torch.randn(1, 3, arch.image_size, arch.image_size))
        assert counter.get_total_flops() == 2 * m
        assert sum(t.numel() for t in subnet.parameters()) == p


def test_net_config_round_trip(mbv3):
    space = mbv3.search_space()
    mbv3.set_arch(space.decode(space.sample(1, torch.Generator().manual_seed(5)))[0])
    config = json.loads(json.dumps(mbv3.get_active_net_config()))
    subnet = mbv3.get_active_subnet().eval()
    rebuilt = MobileNetV3.build_from_config(config).eval()
    rebuilt.load_state_dict(subnet.state_dict())
    assert config == subnet.config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), subnet(x))


def test_sample_active_subnet_and_max_net(mbv3):
    import random

    random.seed(0)
    config = mbv3.sample_active_subnet()
    assert len(config["ks"]) == len(config["e"]) == 20 and len(config["d"]) == 5
    assert mbv3.active_arch(224).subnet_kwargs() == config
    mbv3.set_max_net()
    assert mbv3.active_arch() == mbv3.search_space().max_arch()


def test_channels_last_forward_matches(mbv3):
    mbv3.sample_active_subnet()  # whatever subnet is active (the fixture is shared): both run the same one
    net = copy.deepcopy(mbv3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = mbv3(x)
        got = net(x.to(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item())


def test_bad_constructor_arguments():
    with pytest.raises(OFAError, match="n_classes must be a positive integer"):
        OFAMobileNetV3(n_classes=0)
    with pytest.raises(OFAError, match="kernel sizes must be odd"):
        OFAMobileNetV3(ks_list=[4])
    with pytest.raises(OFAError, match="stage_strides needs 5 entries"):
        OFAMobileNetV3(stage_strides=(2, 2))


def test_bad_inputs_name_the_problem(mbv3):
    with pytest.raises(OFAError, match="input has 1 channels but the network takes 3"):
        mbv3(torch.randn(1, 1, 64, 64))
    with pytest.raises(OFAError, match=r"\[N, C, H, W\]"):
        mbv3(torch.randn(3, 64, 64))
    with pytest.raises(OFAError, match="smaller than the network's total stride 32"):
        mbv3(torch.randn(1, 3, 16, 16))
    with pytest.raises(ArchError, match=r"ks = 9 is not allowed; choices are \(3, 5, 7\)"):
        mbv3.set_active_subnet(ks=9)
    with pytest.raises(ArchError, match="d has 4 entries; expected 5"):
        mbv3.set_active_subnet(d=[2, 2, 2, 2])


def test_state_dict_of_another_width_is_a_clear_error():
    wide = OFAMobileNetV3(width_mult=1.2, **FULL).state_dict()
    with pytest.raises(CheckpointError, match="another width") as err:
        OFAMobileNetV3(**FULL).load_state_dict(wide)
    assert "first_conv.conv.weight: checkpoint [24, 3, 3, 3] vs model [16, 3, 3, 3]" in str(err.value)
