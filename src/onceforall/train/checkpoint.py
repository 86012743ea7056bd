"""Files a training run writes: the full resumable state, and supernets with their construction args."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from onceforall.errors import CheckpointError
from onceforall.io import save_atomic
from onceforall.spaces.mobilenet_v3 import OFAMobileNetV3

SUPERNET_FORMAT = "onceforall.supernet"
STATE_FORMAT = "onceforall.train-state"


def read(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True and a clear error for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holding arbitrary objects
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a dict")
    return data


def save_supernet(net: OFAMobileNetV3, path: str | Path, **extra: Any) -> Path:
    """Weights plus everything needed to rebuild the supernet (`load_supernet`), written atomically."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return save_atomic(
        {"format": SUPERNET_FORMAT, "build_args": net.build_args, "state_dict": state, **extra}, path
    )


def load_supernet(path: str | Path) -> tuple[OFAMobileNetV3, dict[str, Any]]:
    """The supernet saved by `save_supernet` (and the file's other entries)."""
    data = read(path)
    if data.get("format") != SUPERNET_FORMAT:
        raise CheckpointError(
            f"{path} is not a onceforall supernet file (format {data.get('format')!r}); "
            "official checkpoints load with onceforall.zoo.ofa_net(net_id, checkpoint=path)"
        )
    net = OFAMobileNetV3(**data["build_args"])
    net.load_state_dict(data["state_dict"])
    return net, data
