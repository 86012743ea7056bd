"""Supernets and their search spaces."""

from onceforall.spaces.mobilenet_v3 import MobileNetV3, OFAMobileNetV3

__all__ = ["MobileNetV3", "OFAMobileNetV3"]
