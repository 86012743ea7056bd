"""docs/migration.md, run line by line: the official tutorial's flow on files the official package writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_journeys import image_folder_at, official_checkpoint
from test_official_files import LISTS, TUTORIAL_SIZES, tutorial_predictor, write_tables

from onceforall import zoo
from onceforall.registry import load_supernet
from onceforall.specialize.timing import torch_threads

import ofa_reference

DOC = Path(__file__).parents[1] / "docs" / "migration.md"
pytestmark = pytest.mark.skipif(
    not ofa_reference.available(), reason="needs the official package (make reference)"
)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_doc_has_every_step():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 7 and all(block.strip() for block in blocks)


def test_every_line_of_the_migration_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    checkpoint = tmp_path / "checkpoints" / "ofa_mbv3_d234_e346_k357_w1.2"
    official_checkpoint("ofa_mbv3_d234_e346_k357_w1.2", checkpoint)
    torch.save(tutorial_predictor(seed=3).model.state_dict(), tmp_path / "acc_predictor.pth")
    # note10-style tables for this 3-class network (the released ones key the 1000-class classifier).
    space = load_supernet(checkpoint, resolutions=list(TUTORIAL_SIZES)).net.search_space()
    reference = ofa_reference.import_ofa().OFAMobileNetV3(
        n_classes=3, dropout_rate=0, width_mult=1.2, **LISTS
    )
    write_tables(tmp_path / "note10", "mbv3", 1.2, space, reference)
    image_folder_at(tmp_path / "imagenet")
    # A specialized net as the zoo ships one: net.config and init, here one of the supernet's subnets.
    net = zoo.ofa_net("ofa_mbv3_d234_e346_k357_w1.2", n_classes=3)
    net.set_active_subnet(ks=5, e=4, d=3)
    folder = tmp_path / "flops@595M_top1@80.0_finetune@75"
    folder.mkdir()
    (folder / "net.config").write_text(json.dumps(net.get_active_net_config()))
    zoo.save_official(net.get_active_subnet(), folder / "init")

    namespace: dict = {}
    with torch_threads(1):
        for block in python_blocks(DOC.read_text()):
            exec(compile(block, str(DOC), "exec"), namespace)

    assert namespace["loaded"].info["net_id"] == "ofa_mbv3_d234_e346_k357_w1.2"
    assert namespace["ofa_network"].n_classes == 3 and namespace["space"].resolutions == TUTORIAL_SIZES
    assert float(namespace["latency"](namespace["best"])[0]) <= namespace["constraint"]
    assert namespace["scored"]["images"] == 6 and (tmp_path / "best_arch.json").is_file()
    assert tuple(namespace["logits"].shape) == (1, 3)
