"""The `ofa` command line."""

import json

import torch
from typer.testing import CliRunner

from onceforall import Arch, MobileNetV3
from onceforall.cli import app


def test_demo_prints_table_and_writes_a_loadable_subnet(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--samples", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "2.176e+19 architectures" in result.output
    assert "random 0" in result.output and "latency (ms)" in result.output
    config = json.loads((tmp_path / "net.config").read_text())
    subnet = MobileNetV3.build_from_config(config)
    state = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    subnet.load_state_dict(state)
    arch = Arch.from_json(tmp_path / "arch.json")
    assert len(subnet.blocks) == 1 + sum(arch.d)
    assert subnet.eval()(torch.randn(1, 3, arch.image_size, arch.image_size)).shape == (1, 1000)
