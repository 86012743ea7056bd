"""One journey per official id, as a holder of the official checkpoints takes it, through the CLI.

The official package writes a checkpoint (random weights, 3 classes), then `ofa latency build` and
`ofa specialize --supernet FILE --net-id ID --data <a tiny ImageFolder>` specialize it for one budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from onceforall.cli import app
from onceforall.registry import REGISTRY, load_supernet, registered
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.timing import torch_threads

import ofa_reference

pytestmark = pytest.mark.skipif(
    not ofa_reference.available(), reason="needs the official package (make reference)"
)
LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}
CLASSES = ("cat", "dog", "fox")


def official_checkpoint(net_id: str, path: Path) -> Path:
    """The official package's supernet for `net_id` with 3 classes, saved as the model zoo saves it."""
    networks = ofa_reference.import_ofa()
    torch.manual_seed(0)
    if net_id.startswith("ofa_mbv3"):
        net = networks.OFAMobileNetV3(n_classes=3, dropout_rate=0, width_mult=float(net_id[-3:]), **LISTS)
    elif net_id.startswith("ofa_proxyless"):
        net = networks.OFAProxylessNASNets(n_classes=3, dropout_rate=0, width_mult=1.3, **LISTS)
    else:
        net = networks.OFAResNets(
            n_classes=3,
            dropout_rate=0,
            depth_list=[0, 1, 2],
            expand_ratio_list=[0.2, 0.25, 0.35],
            width_mult_list=[0.65, 0.8, 1.0],
        )
    torch.save({"state_dict": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return image_folder_at(tmp_path_factory.mktemp("folder"))


def image_folder_at(root: Path) -> Path:
    """train/ and val/ of three classes, a few 48 px RGB images each."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("net_id", registered(official=True))
def test_official_checkpoint_specializes_through_the_cli(net_id: str, image_folder: Path, tmp_path: Path):
    assert REGISTRY[net_id].official
    checkpoint = official_checkpoint(net_id, tmp_path / f"{net_id}.pth")
    common = ["--supernet", str(checkpoint), "--net-id", net_id, "--resolutions", "128"]
    table = tmp_path / "latency.jsonl"
    with torch_threads(1):
        fast = [
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--rounds",
            "1",
            "--subnet-rounds",
            "1",
            "--subnet-repeats",
            "1",
            "--calibration-subnets",
            "1",
        ]
        result = CliRunner().invoke(app, ["latency", "build", *common, "--out", str(table), *fast])
        assert result.exit_code == 0, result.output
        space = load_supernet(checkpoint, net_id=net_id, resolutions=[128]).net.search_space()
        AccuracyPredictor.for_space(space).save(tmp_path / "predictor.pt")
        args = ["specialize", *common, "--table", str(table), "--predictor", str(tmp_path / "predictor.pt")]
        args += [
            "--data",
            str(image_folder),
            "--budgets",
            "100000ms",
            "--formats",
            "onnx",
            "--out",
            str(tmp_path / "out"),
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert row["arch"]["space"] == space.name and row["arch"]["image_size"] == 128
    assert round(row["top1"] * 6 / 100, 6).is_integer()  # scored on the 6 val images
    report = (tmp_path / "out" / "report.md").read_text()
    assert space.name in report and "| 100000 |" in report
    export = tmp_path / "out" / "budget_100000ms"
    assert {p.name for p in export.iterdir()} >= {"model.onnx", "arch.json"}
