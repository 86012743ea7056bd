"""Import the official `ofa` package (a test and bench reference only) on machines without torchvision.

The official package imports torchvision, tqdm and gdown for its data and download code only;
minimal stand-in modules let its network code import. Nothing here is used by `onceforall`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types


def _stub(name: str, **attrs: object) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attrs)
    sys.modules[name] = module


class _Anything:
    """Accepts any construction and attribute access (stands in for transforms and datasets)."""

    def __init__(self, *args: object, **kwargs: object):
        pass

    def __getattr__(self, name: str) -> _Anything:
        return _Anything()

    def __call__(self, *args: object, **kwargs: object) -> _Anything:
        return _Anything()


def _module_getattr(attr: str) -> type:
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Anything


def _install_stubs() -> None:
    import torch  # noqa: F401  (import torch before any stand-in exists)

    for name in ("torchvision", "torchvision.transforms", "torchvision.datasets"):
        try:
            importlib.import_module(name)
        except Exception:
            sys.modules.pop(name, None)
            _stub(name, __getattr__=_module_getattr)
    _stub("torchvision.transforms.functional", __getattr__=_module_getattr)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    for name, attrs in (("tqdm", {"tqdm": _Anything}), ("gdown", {"download": _Anything})):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            _stub(name, **attrs)


def available() -> bool:
    """Whether the official package is installed (`make reference` installs it)."""
    return importlib.util.find_spec("ofa") is not None


def import_ofa(module: str = "ofa.imagenet_classification.elastic_nn.networks") -> types.ModuleType:
    """Import a module of the official package behind the stand-ins."""
    _install_stubs()
    return importlib.import_module(module)
