"""Export an extracted (static) subnet to ONNX and to torch.export, checked against PyTorch.

Each export runs the exported model on a random input and compares it with the PyTorch output;
a difference above `atol` raises ExportError with the measured value. Both files load without
onceforall: the .onnx with onnxruntime alone, the .pt2 with plain torch (`torch.export.load`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from onceforall.arch import Arch
from onceforall.errors import ExportError
from onceforall.io import _atomic

ONNX_OPSET = 17


@dataclass(frozen=True)
class ExportReport:
    """Where a model was written and how far the exported model is from PyTorch (max abs diff)."""

    path: Path
    format: str
    max_abs_diff: float
    input_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "max_abs_diff": self.max_abs_diff,
            "input_shape": list(self.input_shape),
        }


def extract_subnet(net: nn.Module, arch: Arch) -> nn.Module:
    """The static subnet `arch` of a supernet (`set_arch` + `get_active_subnet`), in eval mode."""
    net.set_arch(arch)
    return net.get_active_subnet(preserve_weight=True).eval()


def onnx_bytes(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> bytes:
    """Serialized ONNX model of `model(example)` (TorchScript exporter, opset 17, eval mode).

    The TorchScript-based exporter is used because it needs no extra package and takes a fraction
    of a second per model; it folds batch norm into the convolutions.
    """
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
        )
    return buffer.getvalue()


# The intra-op size of this process's one onnxruntime thread pool, once the first session made it.
_ORT_POOL: list[int] = []


def ort_session(model: bytes | str | Path, threads: int | None = None):
    """An onnxruntime CPU InferenceSession with all graph optimisations, on the process's thread pool.

    Every session of a process shares one intra-op thread pool, made by its first session with
    `threads` threads (None: any pool; 1 when it makes it). With a pool per session and a table's
    hundreds of sessions alive, a 2-thread layer ran at its 1-thread speed in about half its rounds,
    a different half for each layer (2 vCPUs, session 22), which a deployed model, one session
    alone, does not see; with one pool for all, the sessions' rounds agreed. A session
    asking another thread count than the pool's raises ExportError: time it in another process.
    """
    import onnxruntime as ort

    if not _ORT_POOL:
        ort.set_global_thread_pool_sizes(threads or 1, 1)
        _ORT_POOL.append(threads or 1)
    if threads is not None and threads != _ORT_POOL[0]:
        raise ExportError(
            f"onnxruntime sessions of one process share one thread pool; this process made it with "
            f"{_ORT_POOL[0]} thread(s), so {threads} cannot be timed here: run it in a separate process "
            "(each `ofa` command is one)"
        )
    options = ort.SessionOptions()
    options.use_per_session_threads = False  # the process's pool: its size is set there, not here
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = str(model) if isinstance(model, (str, Path)) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _check(name: str, expected: torch.Tensor, got: torch.Tensor, atol: float) -> float:
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(
            f"{name}: output shape {list(got.shape)} differs from PyTorch's {list(expected.shape)}"
        )
    diff = (got.double() - expected.double()).abs().max().item()
    if not diff <= atol:
        raise ExportError(
            f"{name}: max abs diff {diff:.3e} between the exported model and PyTorch exceeds {atol:.1e}"
        )
    return diff


def _check_input(
    model: nn.Module, input_shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model.eval()(x)


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    atol: float = 1e-4,
    dynamic_batch: bool = True,
    seed: int = 0,
) -> ExportReport:
    """Write `model` as ONNX (opset 17, dynamic batch), run it in onnxruntime and compare with PyTorch."""
    model = model.cpu().eval()
    example = torch.randn(input_shape)
    data = onnx_bytes(model, example, dynamic_batch)
    check_shape = (input_shape[0] + 1, *input_shape[1:]) if dynamic_batch else tuple(input_shape)
    x, expected = _check_input(model, check_shape, seed)
    (got,) = ort_session(data).run(None, {"input": x.numpy()})
    diff = _check("ONNX", expected, torch.from_numpy(got), atol)
    path = _atomic(path, lambda handle: handle.write(data))
    return ExportReport(path, "onnx", diff, tuple(input_shape))


def export_torch(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    atol: float = 1e-4,
    dynamic_batch: bool = True,
    seed: int = 0,
) -> ExportReport:
    """Write `model` as a torch.export program (.pt2, dynamic batch), reload it and compare with PyTorch."""
    model = model.cpu().eval()
    shape = tuple(input_shape)
    if dynamic_batch and shape[0] < 2:  # tracing at batch 1 would specialise the batch size
        shape = (2, *shape[1:])
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(shape),), dynamic_shapes=dynamic)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    data = buffer.getvalue()
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    check_shape = (shape[0] + 1, *shape[1:]) if dynamic_batch else shape
    x, expected = _check_input(model, check_shape, seed)
    with torch.no_grad():
        got = loaded(x)
    diff = _check("torch.export", expected, got, atol)
    path = _atomic(path, lambda handle: handle.write(data))
    return ExportReport(path, "pt2", diff, tuple(input_shape))


def export_subnet(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out_dir: str | Path,
    formats: tuple[str, ...] = ("onnx", "pt2"),
    atol: float = 1e-4,
    name: str = "model",
) -> list[ExportReport]:
    """Export a static subnet to every format in `formats` under `out_dir` (`model.onnx`, `model.pt2`)."""
    exporters = {"onnx": export_onnx, "pt2": export_torch}
    unknown = [f for f in formats if f not in exporters]
    if unknown:
        raise ExportError(f"unknown export formats {unknown}; choose from {sorted(exporters)}")
    out_dir = Path(out_dir)
    return [exporters[f](model, input_shape, out_dir / f"{name}.{f}", atol) for f in formats]
