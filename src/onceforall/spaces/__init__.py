"""Supernets and their search spaces."""

from onceforall.spaces.mobilenet_v3 import MobileNetV3, OFAMobileNetV3
from onceforall.spaces.proxyless import OFAProxylessNASNets, ProxylessNASNets
from onceforall.spaces.resnet import OFAResNets, ResNets

__all__ = [
    "MobileNetV3",
    "OFAMobileNetV3",
    "OFAProxylessNASNets",
    "OFAResNets",
    "ProxylessNASNets",
    "ResNets",
]
