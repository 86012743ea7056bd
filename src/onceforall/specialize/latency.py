"""Latency lookup tables measured on the target: build (resumable, shardable), load, predict, validate.

A table holds the measured latency of every distinct layer a space can produce (`distinct_specs`)
on one backend (`torch` on CPU or CUDA, `onnxruntime` on CPU), thread count and batch size, plus a
calibration measured on whole subnets. A subnet's predicted latency is a gather-and-sum:

    latency(arch) = overhead + scale * sum over its layers of (t(layer) - call_overhead)

t is the table's statistic over interleaved measurement rounds (`summarize`: by default the
fastest round's 10th percentile, robust to other jobs on the machine; or the median).
`call_overhead` is the measured cost of one timed call of an empty model (paid once per layer in
the table but once per network in reality); `scale` and `overhead` are fitted by least squares on
whole subnets measured end to end. The file is JSON lines: a header with the settings, then one
line per measured layer and round, appended and fsynced as it is measured (a killed build resumes
where it stopped), then a calibration line.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.allocator import reuse_freed_memory
from onceforall.arch import Arch, SearchSpace
from onceforall.cost import LayerTable, distinct_specs
from onceforall.errors import LatencyTableError
from onceforall.nn.spec import LayerSpec
from onceforall.specialize.plots import plot_validation

FORMAT = "onceforall.latency_table"
VERSION = 1
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per run: median and the 10th and 90th percentiles."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


MeasureFn = Callable[[nn.Module, tuple[int, ...]], Callable[[], Timing]]


# --------------------------------------------------------------------------- specs and subnets
def spec_key(spec: LayerSpec) -> str:
    """A stable, readable key of a layer spec: every field, `name=value`, joined by `|`."""
    return "|".join(f"{f.name}={getattr(spec, f.name)}" for f in fields(spec))


def subnet_specs(space: SearchSpace, population: torch.Tensor) -> list[list[LayerSpec]]:
    """The layers each arch of a population runs, in order (what the table sums over)."""
    population = space._check(population)
    active = space.active(population).tolist()
    out = []
    for row, row_active in zip(population.tolist(), active):
        layers = []
        for site in space.sites:
            if site.slot is None or row_active[site.slot]:
                layers.append(site.spec(*(space.genes[g].choices[row[g]] for g in site.genes)))
        out.append(layers)
    return out


class SpecChain(nn.Sequential):
    """A whole subnet built from its layer specs (what `get_active_subnet` returns, fresh weights)."""

    def __init__(self, specs: Sequence[LayerSpec]):
        super().__init__(*(spec.build() for spec in specs))
        self.specs = list(specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for spec, layer in zip(self.specs, self):
            if spec.op == "linear" and x.dim() > 2:
                x = x.flatten(1)
            x = layer(x)
        return x


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
    deciles = statistics.quantiles(samples, n=10) if repeats > 1 else samples * 9
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
    chunk: int = 64,
    done: Callable[[int, int, Timing], None] | None = None,
    skip: Callable[[int, int], bool] | None = None,
) -> list[list[Timing]]:
    """Time every item `rounds` times, interleaved: chunk by chunk, round r over the whole chunk.

    Interleaving spreads a transient load (another job on the machine) over all items of a chunk
    instead of one. `items` are (module factory, input shape); `done(i, r, timing)` is called as
    each round is measured; `skip(i, r)` marks rounds measured before (a resumed build).
    """
    out: list[list[Timing]] = [[] for _ in items]
    for begin in range(0, len(items), chunk):
        ids = range(begin, min(begin + chunk, len(items)))
        ids = [i for i in ids if not (skip and all(skip(i, r) for r in range(rounds)))]
        timers = {i: measure(items[i][0](), items[i][1]) for i in ids}
        for r in range(rounds):
            for i in ids:
                if skip is not None and skip(i, r):
                    continue
                timing = timers[i]()
                out[i].append(timing)
                if done is not None:
                    done(i, r, timing)
        del timers
    return out


# --------------------------------------------------------------------------- the table
@dataclass
class Calibration:
    """prediction = overhead_ms + scale * sum(t(layer) - call_overhead_ms), fitted on whole subnets."""

    call_overhead_ms: float = 0.0
    scale: float = 1.0
    overhead_ms: float = 0.0
    subnets: list[dict] = field(default_factory=list)


@dataclass
class LatencyTable:
    """Measured per-layer latencies (ms, one Timing per round) with the settings they were measured with."""

    meta: dict
    rounds: dict[str, dict[int, Timing]] = field(default_factory=dict)
    specs: dict[str, dict] = field(default_factory=dict)
    calibration: Calibration | None = None
    path: Path | None = None

    # ----------------------------------------------------------------- reading
    @classmethod
    def load(
        cls, path: str | Path, expect: dict | None = None, require_calibration: bool = True
    ) -> LatencyTable:
        """Read a table; refuse one whose settings differ from `expect` (e.g. `current_settings(...)`)."""
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table {path} does not exist; build it with `ofa latency build`")
        table, bad = _read(path)
        if table is None:
            raise LatencyTableError(f"{path} is not a latency table (no header line)")
        if bad:
            raise LatencyTableError(
                f"{path}: malformed lines {bad[:5]}{' ...' if len(bad) > 5 else ''}; run `ofa latency build` "
                "again with the same --out and settings: it drops those lines and re-measures them"
            )
        if expect:
            table.check(expect)
        if require_calibration and table.calibration is None:
            raise LatencyTableError(
                f"{path} has no calibration (an unfinished or unmerged build); finish it with "
                "`ofa latency build` (it resumes) or `ofa latency merge`"
            )
        return table

    def check(self, expect: dict) -> None:
        """Raise LatencyTableError naming every setting that differs from `expect`; library versions
        that differ (or that the table did not record) only warn."""
        differs = [key for key, value in expect.items() if self.meta.get(key) != value]
        versions = [k for k in differs if k in VERSION_KEYS]
        wrong = [
            f"{key}: table {self.meta.get(key)!r}, expected {expect[key]!r}"
            for key in differs
            if key not in versions
        ]
        if versions and not wrong:
            found = ", ".join(f"{k} {self.meta.get(k, 'unrecorded')} (here {expect[k]})" for k in versions)
            warnings.warn(
                f"latency table {self.path or ''} was measured with {found}: its numbers may be off for "
                "this installation; rebuild it with `ofa latency build` to be sure",
                stacklevel=2,
            )
        if wrong:
            where = f" {self.path}" if self.path else ""
            raise LatencyTableError(
                f"latency table{where} was measured with other settings ({'; '.join(wrong)}); "
                "build a table for this backend/device/threads/batch size with `ofa latency build`"
            )

    @property
    def statistic(self) -> str:
        return self.meta.get("statistic", "p10")

    @property
    def layers(self) -> dict[str, float]:
        """Latency (ms, the table's statistic) of every completely measured layer (all its rounds)."""
        n = self.meta.get("rounds", 1)
        stat = self.statistic
        return {k: summarize(list(r.values()), stat) for k, r in self.rounds.items() if len(r) >= n}

    # ----------------------------------------------------------------- predicting
    def missing(self, space: SearchSpace) -> list[LayerSpec]:
        """The space's layers this table has not (completely) measured."""
        done = self.layers
        return [spec for spec in distinct_specs(space) if spec_key(spec) not in done]

    def model(self, space: SearchSpace) -> LayerTable:
        """The table as a population-wide efficiency model (ms): a gather-and-sum plus the overhead.

        Values are the calibrated layer latencies `scale * (t(layer) - call_overhead)`.
        """
        if self.meta.get("space") != space.name:
            raise LatencyTableError(
                f"latency table is for space {self.meta.get('space')!r}, not {space.name!r}; "
                "build one for this space"
            )
        missing = self.missing(space)
        if missing:
            sizes = sorted({s.in_size for s in missing})
            raise LatencyTableError(
                f"latency table lacks {len(missing)} of the space's layers (e.g. {spec_key(missing[0])}; "
                f"input sizes {sizes}); table resolutions {self.meta.get('resolutions')}, space "
                f"resolutions {list(space.resolutions)}: build (or resume) the table for these resolutions"
            )
        cal = self.calibration or Calibration()
        layers = self.layers
        return LayerTable(
            space,
            lambda spec: cal.scale * (layers[spec_key(spec)] - cal.call_overhead_ms),
            cal.overhead_ms,
        )

    def layer_sum(self, specs: Iterable[LayerSpec], call_overhead_ms: float | None = None) -> float:
        """Sum of the layers' latencies minus the per-call overhead (the uncalibrated prediction)."""
        if call_overhead_ms is None:
            call_overhead_ms = self.calibration.call_overhead_ms if self.calibration else 0.0
        layers = self.layers
        return sum(layers[spec_key(s)] - call_overhead_ms for s in specs)


def _time(value: Any) -> float:
    """A measured time (ms): a finite number >= 0, else ValueError (the line counts as malformed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{value!r} is not a time in ms")
    return float(value)


def _timing(record: dict) -> Timing:
    repeats = record["repeats"]
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats {repeats!r} is not a positive count")
    return Timing(*(_time(record[k]) for k in ("median_ms", "p10_ms", "p90_ms")), repeats)


def _read(path: Path) -> tuple[LatencyTable | None, list[int]]:
    """Parse a table file, skipping malformed lines (returned as 1-based line numbers)."""
    table, bad = None, []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                record = json.loads(raw)
                kind = record["type"]
            except (ValueError, KeyError, TypeError):
                bad.append(number)
                continue
            if kind == "header":
                if record.get("format") != FORMAT or record.get("version") != VERSION:
                    raise LatencyTableError(
                        f"{path}: format {record.get('format')!r} version {record.get('version')!r} is not "
                        f"{FORMAT!r} version {VERSION}"
                    )
                meta = {k: v for k, v in record.items() if k not in ("type", "format", "version")}
                table = LatencyTable(meta=meta, path=path)
            elif table is not None and _add(table, kind, record):
                continue
            else:
                bad.append(number)
    return table, bad


def _add(table: LatencyTable, kind: str, record: dict) -> bool:
    """Add a layer or calibration record to `table`; False if it is malformed."""
    try:
        if kind == "layer":
            table.rounds.setdefault(record["key"], {})[int(record["round"])] = _timing(record)
            table.specs[record["key"]] = record["spec"]
        elif kind == "calibration":
            values = [float(record[k]) for k in ("call_overhead_ms", "scale", "overhead_ms")]
            if not all(math.isfinite(v) for v in values) or values[1] <= 0:
                return False
            table.calibration = Calibration(*values, record["subnets"])
        else:
            return False
    except (ValueError, KeyError, TypeError):
        return False
    return True


def _append(path: Path, records: Sequence[dict]) -> None:
    """Append JSON lines in one write and make them durable before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(json.dumps(r) + "\n" for r in records).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_tail(path: Path) -> None:
    """Cut a partially written last line (a build killed mid-write) so appends start on a new line."""
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _header(meta: dict) -> dict:
    return {"type": "header", "format": FORMAT, "version": VERSION, **meta}


# --------------------------------------------------------------------------- building
def progress_bar(enabled: bool = True):
    """A rich progress bar with count and ETA, on stderr (stdout stays clean for --json)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, disable=not enabled, console=Console(stderr=True))


def refuse_foreign(path: Path) -> None:
    """Refuse to append to or replace a file that is not a latency table (notes, an accuracy dataset...)."""
    if path.exists() and not path.is_file():
        raise LatencyTableError(f"{path} is a folder, not a latency table file; give a file path as --out")
    if not path.is_file() or not path.stat().st_size:
        return
    with open(path, "rb") as handle:
        first = handle.readline(1 << 16)
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and record.get("type") == "header" and record.get("format") == FORMAT):
        raise LatencyTableError(
            f"{path} exists and is not a latency table (its first line is not a {FORMAT} header); "
            "it is left untouched: give another --out"
        )


def _open_table(path: Path, meta: dict) -> LatencyTable:
    """The table at `path` to resume (its settings must match), or a new file with its header.

    Lines that do not parse (a disk error, an edit) are dropped from the file, so that the build
    measures them again: the repair `LatencyTable.load`'s error asks for.
    """
    refuse_foreign(path)
    table = None
    if path.is_file() and path.stat().st_size:
        _repair_tail(path)
        table, bad = _read(path)
        if table is not None and bad:
            table.check({k: v for k, v in meta.items() if k != "created"})
            _drop_lines(path, bad)
            warnings.warn(f"{path}: dropped malformed lines {bad[:5]}; they are measured again", stacklevel=3)
            table, _ = _read(path)
    if table is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        _append(path, [_header(meta)])
        return LatencyTable(meta=dict(meta), path=path)
    table.check({k: v for k, v in meta.items() if k != "created"})
    return table


def _drop_lines(path: Path, numbers: Sequence[int]) -> None:
    """Rewrite `path` (atomically) without the given 1-based lines."""
    drop = set(numbers)
    with open(path, "rb") as handle:
        kept = [line for number, line in enumerate(handle, 1) if number not in drop]
    tmp = path.with_name(f".{path.name}.repair.tmp")
    tmp.write_bytes(b"".join(kept))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def build_latency_table(
    space: SearchSpace,
    path: str | Path,
    backend: str = "torch",
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 20,
    rounds: int = 5,
    statistic: str = "p10",
    shard: tuple[int, int] = (0, 1),
    calibration_subnets: int = 10,
    seed: int = 0,
    progress: bool = False,
    measure: MeasureFn | None = None,
) -> LatencyTable:
    """Measure every distinct layer of `space` (this shard's share), appending each round to `path`.

    Each layer is timed `rounds` times (`warmup` untimed and `repeats` timed runs each), interleaved
    with the other layers of its chunk. A file left by a killed build is resumed: rounds already in
    it are not measured again. With `shard=(rank, world)` only the specs with index % world == rank
    are measured; combine the shard files with `merge_latency_tables`. An unsharded build ends by
    calibrating on whole subnets. `measure(module, input_shape) -> timer` replaces the backend (tests).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise LatencyTableError(f"shard {rank}/{world} is invalid: need 0 <= rank < world")
    if statistic not in STATISTICS:
        raise LatencyTableError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise LatencyTableError(
            f"need rounds >= 1, repeats >= 1, warmup >= 0; got {rounds}, {repeats}, {warmup}"
        )
    meta = {
        **current_settings(backend, device, threads, batch_size),
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "statistic": statistic,
        "space": space.name,
        "resolutions": list(space.resolutions),
        "shard": [rank, world],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(path)
    table = _open_table(path, meta)
    specs = [s for i, s in enumerate(distinct_specs(space)) if i % world == rank]
    keys = [spec_key(s) for s in specs]
    measure = measure or Measurer(backend, device, threads, batch_size, warmup, repeats)
    todo = sum(rounds - len(table.rounds.get(k, {})) for k in keys)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"measuring {len(specs)} layers ({backend}, {device})", total=todo)

        def done(i: int, r: int, timing: Timing) -> None:
            record = {"type": "layer", "key": keys[i], "round": r, "spec": asdict(specs[i]), **asdict(timing)}
            _append(path, [record])
            table.rounds.setdefault(keys[i], {})[r] = timing
            table.specs[keys[i]] = record["spec"]
            bar.advance(task)

        items = [(spec.build, spec.input_shape(batch_size)) for spec in specs]
        measure_rounds(
            items, measure, rounds, done=done, skip=lambda i, r: r in table.rounds.get(keys[i], {})
        )
    if world == 1 and table.calibration is None:
        calibrate_latency_table(table, space, calibration_subnets, seed, progress, measure)
    return table


def merge_latency_tables(
    paths: Sequence[str | Path],
    out: str | Path,
    space: SearchSpace,
    calibration_subnets: int = 10,
    seed: int = 0,
    progress: bool = False,
    measure: MeasureFn | None = None,
) -> LatencyTable:
    """Combine shard files into one table at `out`, then calibrate it here (same settings required)."""
    tables = []
    for p in paths:
        if not Path(p).is_file():
            raise LatencyTableError(f"shard file {p} does not exist")
        table, bad = _read(Path(p))
        if table is None:
            raise LatencyTableError(f"{p} is not a latency table (no header line)")
        if bad:
            raise LatencyTableError(f"{p}: malformed lines {bad[:5]}; resume that shard's build first")
        tables.append(table)
    first = tables[0]
    for table in tables[1:]:
        table.check({k: v for k, v in first.meta.items() if k not in ("shard", "created")})
    if first.meta.get("space") != space.name:
        raise LatencyTableError(f"the shards are for space {first.meta.get('space')!r}, not {space.name!r}")
    merged = LatencyTable(meta={**first.meta, "shard": [0, 1]}, path=Path(out))
    for table in tables:
        merged.rounds.update(table.rounds)
        merged.specs.update(table.specs)
    missing = merged.missing(space)
    if missing:
        raise LatencyTableError(
            f"the shards lack {len(missing)} layers (e.g. {spec_key(missing[0])}); finish every shard's build"
        )
    records = [_header(merged.meta)]
    for key, rounds in merged.rounds.items():
        for r, timing in sorted(rounds.items()):
            records.append(
                {"type": "layer", "key": key, "round": r, "spec": merged.specs[key], **asdict(timing)}
            )
    out = Path(out)
    refuse_foreign(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(b"")
    _append(tmp, records)
    os.replace(tmp, out)
    calibrate_latency_table(merged, space, calibration_subnets, seed, progress, measure)
    return merged


def table_measurer(table: LatencyTable) -> Measurer:
    """A Measurer with the table's settings; refuses if this machine is not the one it was measured on."""
    m = table.meta
    settings = (m["backend"], m["device"], m["threads"], m["batch_size"])
    table.check(current_settings(*settings))
    return Measurer(*settings, m["warmup"], m["repeats"])


def calibrate_latency_table(
    table: LatencyTable,
    space: SearchSpace,
    n_subnets: int = 10,
    seed: int = 0,
    progress: bool = False,
    measure: MeasureFn | None = None,
) -> Calibration:
    """Fit `scale` and `overhead` on whole subnets (random ones plus the min and the max) measured here.

    The per-call overhead is measured on an empty model; a robust (Theil-Sen) line through
    (layer sum, measured) gives scale and overhead; with a degenerate fit the scale stays 1 and the
    overhead is the median residual. The subnets are measured in rounds interleaved over all of
    them, so a burst of load cannot hit every round of one subnet. Appended to the table file.
    """
    measure = measure or table_measurer(table)
    call = empty_call_ms(measure, table.statistic) if isinstance(measure, Measurer) else 0.0
    population = torch.cat(
        [
            space.sample(n_subnets, torch.Generator().manual_seed(seed)),
            space.encode([space.min_arch(space.resolutions[0]), space.max_arch(space.resolutions[-1])]),
        ]
    )
    archs = space.decode(population)
    chains = subnet_specs(space, population)
    items = [(lambda c=c: SpecChain(c), c) for c in chains]
    measured = _measure_subnets(table, items, measure, progress, "calibrating", chunk=len(items))
    sums = [table.layer_sum(c, call) for c in chains]
    scale, overhead = _fit_line(sums, measured)
    subnets = [
        {"arch": a.to_dict(), "layer_sum_ms": s, "measured_ms": m} for a, s, m in zip(archs, sums, measured)
    ]
    table.calibration = Calibration(call, scale, overhead, subnets)
    if table.path is not None:
        _append(table.path, [{"type": "calibration", **asdict(table.calibration)}])
    return table.calibration


def _measure_subnets(
    table: LatencyTable,
    subnets: Sequence[tuple[Callable[[], nn.Module], list[LayerSpec]]],
    measure: MeasureFn,
    progress: bool,
    description: str,
    in_channels: int | None = None,
    chunk: int = 25,
) -> list[float]:
    """Median latency (ms) of whole subnets, measured in interleaved rounds like the layers."""
    batch, rounds = table.meta["batch_size"], table.meta.get("rounds", 1)
    items = []
    for factory, specs in subnets:
        first = specs[0]
        items.append((factory, (batch, in_channels or first.in_channels, first.in_size, first.in_size)))
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(items) * rounds)
        timings = measure_rounds(items, measure, rounds, chunk=chunk, done=lambda i, r, t: bar.advance(task))
    return [summarize(t, table.statistic) for t in timings]


def _fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Robust (Theil-Sen) line y = scale * x + offset; scale 1 and the median residual if degenerate."""
    from scipy.stats import theilslopes

    if len(x) >= 3 and max(x) > min(x):
        scale, offset = theilslopes(y, x)[:2]
        if 0.5 <= scale <= 2.0:
            return float(scale), float(offset)
    return 1.0, statistics.median(b - a for a, b in zip(x, y))


# --------------------------------------------------------------------------- validating
@dataclass
class ValidationReport:
    """How well a table predicts whole subnets measured end to end."""

    n: int
    within_10: float
    mape: float
    spearman: float
    max_error: float
    measured_ms: list[float]
    predicted_ms: list[float]
    archs: list[dict]
    plot: str | None = None
    spread: float = float("nan")  # the machine's own spread (%): re-measurements of the same subnets

    def to_dict(self, with_points: bool = False) -> dict:
        keys = ("n", "within_10", "mape", "spearman", "max_error", "spread", "plot")
        out = {k: getattr(self, k) for k in keys}
        if with_points:
            out.update(measured_ms=self.measured_ms, predicted_ms=self.predicted_ms, archs=self.archs)
        return out


def validate_latency_table(
    table: LatencyTable,
    space: SearchSpace,
    n: int = 100,
    seed: int = 1,
    subnet_fn: Callable[[Arch], nn.Module] | None = None,
    in_channels: int | None = None,
    plot: str | Path | None = None,
    progress: bool = False,
    measure: MeasureFn | None = None,
    chunk: int = 50,
    repeats_for_spread: int = 5,
    spread_repeats: int = 2,
) -> ValidationReport:
    """Measure `n` random subnets end to end with the table's settings and compare with its prediction.

    `subnet_fn(arch)` gives the module to time (e.g. a supernet's extracted subnet); by default the
    subnet is built from the space's layer specs. Reports the share within +-10 %, MAPE (%),
    Spearman's rank correlation, the largest relative error (%), and the machine's own spread (the
    median over `repeats_for_spread` subnets of (max - min) / median of their latency measured
    1 + `spread_repeats` times, %): errors below it are noise, not the table's. `plot` writes a
    measured-vs-predicted PNG. Rounds are interleaved over `chunk` subnets at a time (more spreads
    each subnet's rounds over a longer time; fewer holds fewer prepared subnets in memory).
    """
    from scipy.stats import spearmanr

    if n < 1:
        raise LatencyTableError(f"validate needs n >= 1 subnets, got {n}")
    measure = measure or table_measurer(table)
    population = space.sample(n, torch.Generator().manual_seed(seed))
    predicted = table.model(space)(population).tolist()
    archs = space.decode(population)
    chains = subnet_specs(space, population)
    factories = [
        (lambda a=a: subnet_fn(a)) if subnet_fn is not None else (lambda c=c: SpecChain(c))
        for a, c in zip(archs, chains)
    ]
    subnets = list(zip(factories, chains))
    measured = _measure_subnets(table, subnets, measure, progress, "measuring subnets", in_channels, chunk)
    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    # The same few subnets measured again: how far this machine disagrees with itself.
    again = [
        _measure_subnets(
            table,
            subnets[:repeats_for_spread],
            measure,
            progress,
            f"re-measuring ({k + 2})",
            in_channels,
            chunk,
        )
        for k in range(spread_repeats)
    ]
    spreads = [
        (max(runs) - min(runs)) / statistics.median(runs)
        for runs in zip(measured[:repeats_for_spread], *again)
    ]
    report = ValidationReport(
        n=n,
        within_10=sum(e <= 0.10 for e in errors) / n,
        mape=100 * sum(errors) / n,
        spearman=float(spearmanr(measured, predicted).statistic) if n > 2 else float("nan"),
        max_error=100 * max(errors),
        measured_ms=measured,
        predicted_ms=predicted,
        archs=[a.to_dict() for a in archs],
        spread=100 * statistics.median(spreads) if spreads else float("nan"),
    )
    if plot is not None:
        report.plot = str(plot_validation(report, plot, title=_title(table)))
    return report


def _title(table: LatencyTable) -> str:
    """The validation plot's title: the space, then the measurement settings (wrapped to fit by the plot)."""
    m = table.meta
    nbsp = "\N{NO-BREAK SPACE}"  # a wrapped title keeps "1 thread(s)" and "batch 1" on one line
    return (
        f"{m.get('space')}\n{m.get('backend')} on {m.get('device_name')}, "
        f"{m.get('threads')}{nbsp}thread(s), batch{nbsp}{m.get('batch_size')}"
    )
