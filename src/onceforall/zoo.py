"""The official model zoo: supernet ids, specialized-net names and checkpoint files.

Files cannot be downloaded here: `ofa_net` and `ofa_specialized` take local paths (or
already-loaded dicts). Official checkpoints in the old (`mobile_inverted_conv`) and current key
layouts load with `weights_only=True`; unlike the original loader, anything that does not fit
is an error that names the keys and the likely cause.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall import registry
from onceforall.checkpoints import load_official
from onceforall.errors import ConfigError, OFAError
from onceforall.io import save_atomic
from onceforall.spaces.mobilenet_v3 import MobileNetV3, OFAMobileNetV3
from onceforall.spaces.proxyless import OFAProxylessNASNets, ProxylessNASNets
from onceforall.spaces.resnet import OFAResNets, ResNets

# The official model zoo's supernet ids (each a registry entry).
SUPERNETS: tuple[str, ...] = tuple(registry.registered(official=True))

NETWORKS: dict[str, type[nn.Module]] = {
    "MobileNetV3": MobileNetV3,
    "ProxylessNASNets": ProxylessNASNets,
    "ResNets": ResNets,
}


def _expand(pattern: str, items: str) -> list[str]:
    return [pattern.format(item) for item in items.split()]


# Official specialized nets (`ofa_specialized/<name with '@' as '-'>/{net.config, run.config, init}`).
SPECIALIZED_NETS: tuple[str, ...] = tuple(
    _expand("flops@{}_finetune@75", "595M_top1@80.0 482M_top1@79.6 389M_top1@79.1")
    + _expand(
        "resnet50D_MAC@{}", "4.1B_top1@79.8 3.7B_top1@79.7 3.0B_top1@79.3 2.4B_top1@79.0 1.8B_top1@78.3"
    )
    + _expand("resnet50D_MAC@{}_finetune@25", "1.2B_top1@77.1 0.9B_top1@76.3 0.6B_top1@75.0")
    + _expand("pixel1_lat@{}_finetune@75", "143ms_top1@80.1 132ms_top1@79.8 79ms_top1@78.7 58ms_top1@76.9")
    + _expand("pixel1_lat@{}_finetune@25", "40ms_top1@74.9 28ms_top1@73.3 20ms_top1@71.4")
    + _expand("pixel2_lat@{}_finetune@25", "62ms_top1@75.8 50ms_top1@74.7 35ms_top1@73.4 25ms_top1@71.5")
    + _expand("note10_lat@{}_finetune@75", "64ms_top1@80.2 50ms_top1@79.7 41ms_top1@79.3 30ms_top1@78.4")
    + _expand("note10_lat@{}_finetune@25", "22ms_top1@76.6 16ms_top1@75.5 11ms_top1@73.6 8ms_top1@71.4")
    + _expand("note8_lat@{}_finetune@25", "65ms_top1@76.1 49ms_top1@74.9 31ms_top1@72.8 22ms_top1@70.4")
    + _expand("s7edge_lat@{}_finetune@25", "88ms_top1@76.3 58ms_top1@74.7 41ms_top1@73.1 29ms_top1@70.5")
    + _expand("LG-G8_lat@{}_finetune@25", "24ms_top1@76.4 16ms_top1@74.7 11ms_top1@73.0 8ms_top1@71.1")
    + _expand("1080ti_gpu64@{}_finetune@25", "27ms_top1@76.4 22ms_top1@75.3 15ms_top1@73.8 12ms_top1@72.6")
    + _expand("v100_gpu64@{}_finetune@25", "11ms_top1@76.1 9ms_top1@75.3 6ms_top1@73.0 5ms_top1@71.6")
    + _expand("tx2_gpu16@{}_finetune@25", "96ms_top1@75.8 80ms_top1@75.4 47ms_top1@72.9 35ms_top1@70.3")
    + _expand("cpu_lat@{}_finetune@25", "17ms_top1@75.7 15ms_top1@74.6 11ms_top1@72.0 10ms_top1@71.1")
)


# ---------------------------------------------------------------------------------------------- networks
def ofa_net(
    net_id: str, checkpoint: str | Path | Mapping | None = None, *, n_classes: int = 1000, **kwargs: Any
) -> nn.Module:
    """The supernet of a registered id with the zoo's settings (dropout 0), random or from a checkpoint.

    `checkpoint` is a local file (or loaded dict) in the official layout (files cannot be
    downloaded here); `n_classes` and other keyword arguments go to the constructor (e.g.
    `resolutions=...`). An id with shipped weights (`ofa_mbv3_fashion_mnist`) loads them.
    """
    found = registry.entry(net_id)
    if found.weights is not None and checkpoint is None:
        return registry.load_supernet(net_id).net
    net = found.build(**{"n_classes": n_classes, **kwargs})
    if checkpoint is not None:
        load_official(net, checkpoint)
    return net


def ofa_specialized(
    net_config: str | Path | Mapping[str, Any], checkpoint: str | Path | Mapping | None = None
) -> nn.Module:
    """A specialized net from an official `net.config` (dict, JSON file or the net's folder) and weights.

    Given a folder, reads `net.config` and, unless `checkpoint` is given, its `init` weights.
    Without weights the net keeps its random initialisation. The input size is in `run.config`.
    """
    config = net_config
    if not isinstance(config, Mapping):
        path = Path(config)
        if path.is_dir():
            if checkpoint is None and (path / "init").is_file():
                checkpoint = path / "init"
            path = path / "net.config"
        if not path.is_file():
            raise ConfigError(f"net config {path} does not exist")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"net config {path} is not valid JSON: {err}") from None
    net = build_network(config)
    if checkpoint is not None:
        load_official(net, checkpoint)
    return net


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """A static network (MobileNetV3, ProxylessNASNets or ResNets) from its official config."""
    name = config.get("name") if isinstance(config, Mapping) else None
    if name not in NETWORKS:
        raise ConfigError(f"net config names network {name!r}; expected one of {sorted(NETWORKS)}")
    try:
        return NETWORKS[name].build_from_config(json.loads(json.dumps(config)))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"net config of {name} is malformed: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------------------------- checkpoints
def official_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """`net`'s tensors under the official key names (current layout), detached on the CPU."""
    if not isinstance(net, (OFAMobileNetV3, OFAProxylessNASNets, OFAResNets, *NETWORKS.values())):
        raise OFAError(
            f"save_official takes one of our supernets or extracted subnets, got {type(net).__name__}"
        )
    return {k: v.detach().cpu().clone() for k, v in nn.Module.state_dict(net).items()}


def save_official(net: nn.Module, path: str | Path) -> Path:
    """Write `{'state_dict': ...}` in the official layout, atomically (temporary file, then rename)."""
    return save_atomic({"state_dict": official_state_dict(net)}, path)
