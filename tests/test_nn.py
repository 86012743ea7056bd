"""Elastic operators: kernel transforms, dynamic BN semantics, channel slicing."""

import torch
import torch.nn as nn

from onceforall.nn import DynamicBatchNorm2d, DynamicSeparableConv2d, make_divisible
from onceforall.nn.dynamic import center_window


def test_make_divisible_examples_from_reference():
    assert [make_divisible(v) for v in (19.2, 134.4, 90, 18, 51.2, 41.6)] == [24, 136, 88, 24, 48, 40]


def test_identity_matrices_give_center_crop():
    conv = DynamicSeparableConv2d(8, [3, 5, 7])
    w7 = conv.conv.weight
    assert torch.equal(conv.active_filter(8, 7), w7)
    assert torch.allclose(conv.active_filter(6, 5), w7[:6, :, 1:6, 1:6])
    assert torch.allclose(conv.active_filter(4, 3), w7[:4, :, 2:5, 2:5])


def test_kernel_transform_chain_matches_formula():
    torch.manual_seed(0)
    conv = DynamicSeparableConv2d(5, [3, 5, 7])
    with torch.no_grad():
        getattr(conv, "7to5_matrix").copy_(torch.randn(25, 25))
        getattr(conv, "5to3_matrix").copy_(torch.randn(9, 9))
    w7 = conv.conv.weight.detach()
    m75, m53 = getattr(conv, "7to5_matrix").detach(), getattr(conv, "5to3_matrix").detach()
    # new column vector = M @ old column vector, per channel
    w5 = torch.stack([(m75 @ w7[c, 0, 1:6, 1:6].reshape(25)).reshape(5, 5) for c in range(5)])
    w3 = torch.stack([(m53 @ w5[c, 1:4, 1:4].reshape(9)).reshape(3, 3) for c in range(5)])
    assert torch.allclose(conv.active_filter(5, 5)[:, 0], w5, atol=1e-5)
    assert torch.allclose(conv.active_filter(5, 3)[:, 0], w3, atol=1e-4)
    assert not torch.allclose(conv.active_filter(5, 3), center_window(w7, 3))


def test_kernel_matrices_are_named_parameters():
    names = dict(DynamicSeparableConv2d(4, [3, 5, 7]).named_parameters())
    assert set(names) == {"conv.weight", "7to5_matrix", "5to3_matrix"}
    assert names["7to5_matrix"].shape == (25, 25) and names["5to3_matrix"].shape == (9, 9)


def test_dynamic_bn_updates_only_active_running_stats():
    torch.manual_seed(0)
    dyn, ref = DynamicBatchNorm2d(8), nn.BatchNorm2d(5)
    x = torch.randn(4, 5, 6, 6) * 3 + 1
    y = dyn(x)
    assert torch.allclose(y, ref(x), atol=1e-6)
    assert torch.allclose(dyn.bn.running_mean[:5], ref.running_mean)
    assert torch.allclose(dyn.bn.running_var[:5], ref.running_var)
    assert torch.equal(dyn.bn.running_mean[5:], torch.zeros(3))
    assert torch.equal(dyn.bn.running_var[5:], torch.ones(3))
    assert dyn.bn.num_batches_tracked.item() == 1


def test_dynamic_bn_eval_uses_leading_statistics():
    dyn = DynamicBatchNorm2d(6).eval()
    with torch.no_grad():
        dyn.bn.running_mean.copy_(torch.arange(6.0))
        dyn.bn.running_var.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 4, 3, 3)
    expected = (x - torch.arange(4.0).view(1, 4, 1, 1)) / torch.sqrt(
        torch.arange(1.0, 5.0).view(1, 4, 1, 1) + 1e-5
    )
    assert torch.allclose(dyn(x), expected, atol=1e-5)
