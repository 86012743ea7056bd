"""Once-for-All: train one supernet, then specialize it for every device without retraining."""

from onceforall.arch import Arch, SearchSpace
from onceforall.errors import ArchError, CheckpointError, ConfigError, DataError, OFAError
from onceforall.spaces import (
    MobileNetV3,
    OFAMobileNetV3,
    OFAProxylessNASNets,
    OFAResNets,
    ProxylessNASNets,
    ResNets,
)

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "ArchError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MobileNetV3",
    "OFAError",
    "OFAMobileNetV3",
    "OFAProxylessNASNets",
    "OFAResNets",
    "ProxylessNASNets",
    "ResNets",
    "SearchSpace",
]
