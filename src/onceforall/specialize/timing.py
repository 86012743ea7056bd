"""Timing primitives: time a call, summarize rounds, the settings a measurement runs with, and the
`Measurer` that times forward passes on one backend (torch on CPU or CUDA, onnxruntime on CPU)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.allocator import reuse_freed_memory
from onceforall.errors import LatencyTableError

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per run: median and the 10th and 90th percentiles."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


MeasureFn = Callable[[nn.Module, tuple[int, ...]], Callable[[], Timing]]


# --------------------------------------------------------------------------- settings
def device_name(device: str) -> str:
    """The CPU model (from /proc/cpuinfo) or the CUDA device name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


# Settings whose difference makes a table's numbers doubtful rather than wrong: another library version
# may be a little faster or slower, so a table from it is used with a warning, not refused.
VERSION_KEYS = ("torch", "onnxruntime", "onceforall")


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onceforall")
    except PackageNotFoundError:
        return "unknown"


def current_settings(backend: str, device: str = "cpu", threads: int = 1, batch_size: int = 1) -> dict:
    """The settings a table measured here, now, would record (what `load(expect=...)` compares)."""
    if backend not in BACKENDS:
        raise LatencyTableError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if device != "cpu" and not device.startswith("cuda"):
        raise LatencyTableError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if backend == "onnxruntime" and device != "cpu":
        raise LatencyTableError("the onnxruntime backend measures on the CPU only; use --device cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatencyTableError(f"device {device!r} asked for, but CUDA is not available here")
    if threads < 1 or batch_size < 1:
        raise LatencyTableError(f"threads and batch_size must be >= 1, got {threads} and {batch_size}")
    return {
        "backend": backend,
        "device": device,
        "device_name": device_name(device),
        "threads": threads,
        "batch_size": batch_size,
        "torch": torch.__version__,
        "onnxruntime": _ort_version() if backend == "onnxruntime" else None,
        "onceforall": _own_version(),
        "allocator": "onnxruntime arena" if backend == "onnxruntime" else reuse_freed_memory(apply=False),
    }


@contextmanager
def torch_threads(n: int):
    """Run with `torch.set_num_threads(n)`, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- measuring
def time_call(
    fn: Callable[[], Any],
    warmup: int,
    repeats: int,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Median and 10th/90th percentiles (ms) of `repeats` timed calls after `warmup` untimed ones."""
    now = time.perf_counter
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    samples = []
    for _ in range(repeats):
        start = now()
        fn()
        if sync is not None:
            sync()
        samples.append((now() - start) * 1e3)
    # "inclusive": deciles stay within the samples (the default extrapolates: p10 < 0 from 2 samples)
    deciles = statistics.quantiles(samples, n=10, method="inclusive") if repeats > 1 else samples * 9
    return Timing(statistics.median(samples), deciles[0], deciles[-1], repeats)


STATISTICS = ("p10", "median")


def summarize(timings: Sequence[Timing], statistic: str = "p10") -> float:
    """One latency (ms) from several rounds of one measurement.

    "p10": the fastest round's 10th percentile, the latency the device reaches when nothing else
    disturbs it (robust to other jobs on a shared machine; close to the median on an idle one).
    "median": the median over rounds of each round's median.
    """
    if statistic == "p10":
        return min(t.p10_ms for t in timings)
    if statistic == "median":
        return statistics.median(t.median_ms for t in timings)
    raise LatencyTableError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")


class Measurer:
    """Times forward passes on one backend with fixed settings.

    `measurer(module, input_shape)` prepares the module once (moves it, or exports it and opens an
    onnxruntime session) and returns a timer: each call of the timer measures one round. A torch
    CPU measurer fixes glibc's allocation thresholds for the process (`onceforall.allocator`).
    """

    def __init__(
        self,
        backend: str,
        device: str = "cpu",
        threads: int = 1,
        batch_size: int = 1,
        warmup: int = 10,
        repeats: int = 20,
    ):
        current_settings(backend, device, threads, batch_size)  # validates
        self.backend, self.device, self.threads, self.batch_size = backend, device, threads, batch_size
        self.warmup, self.repeats = warmup, repeats
        if backend == "torch" and device == "cpu":
            reuse_freed_memory()

    def __call__(self, module: nn.Module, input_shape: tuple[int, ...]) -> Callable[[], Timing]:
        with torch_threads(self.threads):
            fn, sync = self._prepare(module.eval(), input_shape)

        def timer() -> Timing:
            with torch_threads(self.threads):
                return time_call(fn, self.warmup, self.repeats, sync)

        return timer

    def _prepare(self, module: nn.Module, shape: tuple[int, ...]):
        x = torch.randn(shape)
        if self.backend == "onnxruntime":
            from onceforall.export import onnx_bytes, ort_session

            session = ort_session(onnx_bytes(module, x, dynamic_batch=False), self.threads)
            feed = {"input": x.numpy()}
            return (lambda: session.run(None, feed)), None
        device = torch.device(self.device)
        module, x = module.to(device), x.to(device)
        if device.type == "cpu" and x.dim() == 4:
            module = module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                module(x)

        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        return run, sync


class _Identity(nn.Module):
    """An empty model: times the cost of one call of the backend."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 if torch.onnx.is_in_onnx_export() else x


def empty_call_ms(measure: MeasureFn, statistic: str = "p10", rounds: int = 3) -> float:
    """Time (ms, by `statistic` over `rounds`) of timing a model that does nothing, on this backend."""
    timer = measure(_Identity(), (1, 1))
    return summarize([timer() for _ in range(rounds)], statistic)


def measure_rounds(
    items: Sequence[tuple[Callable[[], nn.Module], tuple[int, ...]]],
    measure: MeasureFn,
    rounds: int,
    chunk: int = 128,
    done: Callable[[int, int, Timing], None] | None = None,
    skip: Callable[[int, int], bool] | None = None,
    breaks: Sequence[Callable[[], None]] = (),
) -> list[list[Timing]]:
    """Time every item `rounds` times, round by round over all the items.

    Each item's rounds are spread over the whole measurement, so a slow spell of the machine (another
    job, a shared VM's neighbour: 10-30 % for seconds to minutes) hits some rounds of every item
    rather than all rounds of a few, and the fastest round of each item comes from the same span of
    time. Rounds interleaved only within groups of items measured one group after another gave the
    layers of a group one shared error, which sums do not average out. Items are prepared (`measure`)
    `chunk` at a time to bound memory: once when they all fit in one chunk, else again each round.
    `items` are (module factory, input shape); `done(i, r, timing)` is called as each round is
    measured; `skip(i, r)` marks rounds measured before (a resumed build); `breaks` are called in
    order at equal intervals of the schedule, the last at its end (the build times its calibration
    subnets there).
    """
    schedule = [(r, i) for r in range(rounds) for i in range(len(items)) if not (skip and skip(i, r))]
    marks = [len(schedule) * (k + 1) // len(breaks) for k in range(len(breaks))]
    one_chunk = len(items) <= chunk
    out: list[list[Timing]] = [[] for _ in items]
    timers: dict[int, Callable[[], Timing]] = {}
    block = None
    pending = 0
    for step, (r, i) in enumerate(schedule):
        while pending < len(marks) and marks[pending] <= step:
            breaks[pending]()
            pending += 1
        if not one_chunk and block != (r, i // chunk):
            block = (r, i // chunk)
            timers.clear()
        if i not in timers:
            timers[i] = measure(items[i][0](), items[i][1])
        timing = timers[i]()
        out[i].append(timing)
        if done is not None:
            done(i, r, timing)
    for call in breaks[pending:]:
        call()
    return out
