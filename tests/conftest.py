"""Shared fixtures: small, seeded supernets."""

from __future__ import annotations

import pytest
import torch
from random_init import randomize_signal

from onceforall import OFAMobileNetV3


@pytest.fixture(scope="module")
def mbv3() -> OFAMobileNetV3:
    torch.manual_seed(0)
    net = OFAMobileNetV3(
        n_classes=10, dropout_rate=0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
    )
    return randomize_signal(net).eval()
