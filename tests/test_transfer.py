"""Transfer learning from an official checkpoint: configs/transfer_fashion_mnist.yaml, scaled down."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_train import needs_data

from onceforall import ConfigError
from onceforall.registry import load_supernet
from onceforall.specialize.timing import torch_threads
from onceforall.train import Trainer, recipe_from_dict
from onceforall.workflow.data import dataset_evaluator, supernet_data

import ofa_reference

CONFIG = Path(__file__).parents[1] / "configs" / "transfer_fashion_mnist.yaml"
LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}


def tiny_transfer_recipe(init: Path) -> dict:
    recipe = yaml.safe_load(CONFIG.read_text())
    recipe["init"] = str(init)
    recipe["data"].update(limit=48, holdout=16, batch_size=16, eval_batch_size=16)
    recipe.update(bn_calibration_images=16, bn_calibration_batch=16)
    return recipe


@needs_data
@pytest.mark.skipif(not ofa_reference.available(), reason="needs the official package (make reference)")
def test_an_official_checkpoint_fine_tunes_on_fashion_mnist(tmp_path: Path):
    torch.manual_seed(0)
    official = ofa_reference.import_ofa().OFAMobileNetV3(
        dropout_rate=0, width_mult=1.0, **LISTS
    )  # 1000 classes
    torch.save({"state_dict": official.state_dict()}, tmp_path / "official.pth")
    with torch_threads(1):
        trainer = Trainer(
            recipe_from_dict(tiny_transfer_recipe(tmp_path / "official.pth")), tmp_path / "run", device="cpu"
        )
        file = official.state_dict()
        kept = [k for k in trainer.net.state_dict() if not k.startswith("classifier.")]
        assert kept and all(torch.equal(trainer.net.state_dict()[k], file[k]) for k in kept)
        assert trainer.net.classifier.linear.weight.shape == (10, 1280)  # replaced: 10 classes
        final = trainer.run()
        loaded = load_supernet(final)
        assert (loaded.net.n_classes, loaded.net.in_channels) == (10, 3)
        evaluator, scored = dataset_evaluator(loaded, supernet_data(loaded), "holdout", "cpu")
        top1, _ = evaluator(loaded.net.search_space().min_arch(128))
    assert scored == 16 and round(top1 * 16 / 100, 6).is_integer()


@needs_data
def test_an_init_of_another_network_is_refused(tmp_path: Path):
    torch.manual_seed(0)
    from onceforall.registry import REGISTRY, save_supernet

    save_supernet(REGISTRY["ofa_proxyless_small"].build(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="is a different supernet than this recipe's net"):
        Trainer(recipe_from_dict(tiny_transfer_recipe(tmp_path / "other.pt")), tmp_path / "run", device="cpu")
