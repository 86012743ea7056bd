"""Official checkpoint key layouts mapped onto the names of our modules.

Official files come in two block spellings and two nestings of the same tensors:

* the released OFA-MobileNetV3 / ProxylessNAS files predate the 2020-11 rename and call each
  block's layer `blocks.N.mobile_inverted_conv.*`; newer files and our modules say `blocks.N.conv.*`;
* a static layer keeps its tensors one level deep (`bn.weight`, `conv.weight`, `linear.weight`),
  the dynamic layer it stands for two levels deep (`bn.bn.weight`, `conv.conv.weight`,
  `linear.linear.weight`). A static teacher (`ofa_D4_E6_K7`) loads into a supernet, and a
  supernet file into a static net, by adding or removing one level.

This module sits below `spaces/`, `zoo.py`, `train/` and `specialize/` and imports none of them,
so every loader can share one mapping.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from onceforall.errors import CheckpointError

OLD_BLOCK_NAME = ".mobile_inverted_conv."
BLOCK_NAME = ".conv."

# (spelling in the file, spelling in the model), tried in this order: first the ones that drop a
# nesting level (dynamic file -> static model), then the ones that add one (static -> dynamic).
# A rule applies only when the rewritten key exists in the model, so the order matters only when
# several rewrites would each give a model key; the first such one wins.
NESTING_RULES: tuple[tuple[str, str], ...] = (
    (".bn.bn.", ".bn."),
    (".conv.conv.weight", ".conv.weight"),
    (".linear.linear.", ".linear."),
    (".linear.", ".linear.linear."),
    ("bn.", "bn.bn."),
    ("conv.weight", "conv.conv.weight"),
)


def map_official_keys(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, str]:
    """Map each key of `state` onto a key of the model (old block names, static/dynamic nesting).

    Returns `{file key: model key}`; keys that fit no model key are left out, for the caller
    to report. A key already spelled as in the model maps onto itself.
    """
    mapping: dict[str, str] = {}
    for key in state:
        name = key.replace(OLD_BLOCK_NAME, BLOCK_NAME)
        if name not in model_keys:
            # `str.replace` rewrites every occurrence, as the original loader does; the rewritten
            # name counts only if the model has it.
            rewritten = (name.replace(old, new) for old, new in NESTING_RULES if old in name)
            name = next((candidate for candidate in rewritten if candidate in model_keys), name)
        if name in model_keys:
            mapping[key] = name
    return mapping


def rename_to_model(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """`state` with every key that fits the model renamed to the model's spelling.

    Keys that fit nothing keep their names, so a strict loader reports them as they are in
    the file. Two file keys landing on one model tensor (a file holding both spellings of a
    layer) is a CheckpointError: which one to load would be a guess.
    """
    mapping = map_official_keys(state, model_keys)
    sources: dict[str, list[str]] = {}
    for key, name in mapping.items():
        sources.setdefault(name, []).append(key)
    clashes = [keys for keys in sources.values() if len(keys) > 1]
    if clashes:
        raise CheckpointError(
            f"{len(clashes)} tensors of the model are given twice by the state dict under different "
            f"spellings, e.g. {clashes[:3]}; keep one spelling per tensor (old `mobile_inverted_conv` "
            "or current `conv` block names, static or dynamic nesting)"
        )
    return {mapping.get(key, key): value for key, value in state.items()}
