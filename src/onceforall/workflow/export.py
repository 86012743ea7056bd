"""`ofa export`: one subnet extracted as every other command extracts it, exported with what a deployer needs.

The subnet's BN statistics are recalibrated on the supernet's training images (as `ofa eval` and
`ofa specialize` score it); without data (random weights, no `--data`) they stay the supernet's and
the export says so. The folder is built beside the old one and swapped in only when every export
passed its parity check, so a failed export never removes a good one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from onceforall.arch import Arch
from onceforall.errors import ExportError
from onceforall.export import ExportReport, export_subnet, extract_subnet
from onceforall.io import replaced_folder, write_json_atomic
from onceforall.registry import LoadedSupernet
from onceforall.workflow.data import SupernetData, dataset_evaluator, preprocessing

EXPORT_FORMAT = "onceforall.export"


def export_arch(
    loaded: LoadedSupernet,
    arch: Arch,
    out: str | Path,
    source: SupernetData | None,
    formats: tuple[str, ...] = ("onnx", "pt2"),
    batch_size: int = 1,
    atol: float = 1e-4,
    device: str | None = None,
) -> dict[str, Any]:
    """Extract `arch` (BN recalibrated on `source`'s training images), export it into `out`, describe it.

    Writes model.onnx / model.pt2, arch.json and deploy.json (input size, resize rule, mean/std,
    channels, BN calibration, arch); returns deploy.json's content.
    """
    net = loaded.net
    if source is not None:
        evaluator, _ = dataset_evaluator(loaded, source, "test", device)
        subnet = evaluator.subnet(arch)
        calibration = {**source.calibration, "dataset": source.info.name}
    else:  # deploy.json records bn_calibration: null; the CLI says so in one line
        subnet = extract_subnet(net, arch)
        calibration = None
    subnet = subnet.cpu().eval().to(memory_format=torch.contiguous_format)
    shape = (batch_size, net.in_channels, arch.image_size, arch.image_size)
    refuse_foreign_folder(Path(out))
    with replaced_folder(out) as folder:
        reports = export_subnet(subnet, shape, folder, formats, atol)
        arch.to_json(folder / "arch.json")
        deploy = describe_export(loaded, arch, source, calibration, reports, Path(out))
        write_json_atomic(deploy, folder / "deploy.json")
    return deploy


def refuse_foreign_folder(out: Path) -> None:
    """An export replaces --out whole: refuse unless it is missing, empty, or an earlier export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder for model.onnx, model.pt2 and deploy.json")
    if not any(out.iterdir()):
        return
    try:
        ours = json.loads((out / "deploy.json").read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        ours = False
    if not ours:
        raise ExportError(
            f"--out {out} is a folder that is not an `ofa export` (no deploy.json of ours); an export "
            "replaces the whole folder, so it is left untouched: give a new or empty folder"
        )


def describe_export(
    loaded: LoadedSupernet,
    arch: Arch,
    source: SupernetData | None,
    calibration: dict[str, Any] | None,
    reports: list[ExportReport],
    out: Path,
) -> dict[str, Any]:
    """deploy.json: everything a deployer needs to feed the exported model."""
    pre = (
        preprocessing(source, arch.image_size)
        if source is not None
        else {"input_size": [loaded.net.in_channels, arch.image_size, arch.image_size]}
    )
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "supernet": loaded.info.get("net_id") or loaded.info.get("source"),
        "arch": arch.to_dict(),
        "preprocessing": pre,
        "bn_calibration": calibration,
        "exports": [{**r.to_dict(), "path": str(out / Path(r.path).name)} for r in reports],
    }
