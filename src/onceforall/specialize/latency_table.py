"""Latency lookup tables measured on the target: build (resumable, shardable), load, predict, validate.

A table holds the measured latency of every distinct layer a space can produce (`distinct_specs`)
on one backend (`torch` on CPU or CUDA, `onnxruntime` on CPU), thread count and batch size, plus a
calibration measured on whole subnets. A subnet's predicted latency is a gather-and-sum:

    latency(arch) = overhead + sum over its layers of
                    (scale * (t(layer) - call_overhead) + ms_per_mparam * params(layer) / 1e6)

t is the table's statistic over interleaved measurement rounds (`summarize`: by default the
fastest round's 10th percentile, robust to other jobs on the machine; or the median).
`call_overhead` is the measured cost of one timed call of an empty model (paid once per layer in
the table but once per network in reality). `ms_per_mparam` is the cost of the weights a network
streams from memory: a layer timed alone over and over keeps its weights in cache, in a network
the others evict them (ResNet50's 25 M parameters are 100 MB a pass). `scale`, `ms_per_mparam`
(>= 0) and `overhead` are fitted robustly on whole subnets measured end to end. The file is JSON
lines: a header with the settings, then one line per measured layer and round and per calibration
subnet and round, appended and fsynced as it is measured (a killed build resumes where it
stopped), then a calibration line.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import SearchSpace
from onceforall.cost import LayerTable, distinct_specs
from onceforall.errors import LatencyTableError
from onceforall.nn.spec import LayerSpec
from onceforall.specialize.timing import VERSION_KEYS, Timing, summarize

FORMAT = "onceforall.latency_table"
VERSION = 1
# A build whose calibration rounds ran a median this much (%) slower than their fastest gets a warning.
# Measured on a 2-core VM: 1.1-1.9 % for its quietest builds; 6-42 % for builds through slow spells,
# some of whose tables still validated at 100 % (each layer's fastest round survives a spell) and some
# not, e.g. a `make demo` table at 13 %: 90 % within +-10 %, the machine's own spread 9.9 %.
SLOW_BUILD_PCT = 5.0


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


# --------------------------------------------------------------------------- the table
@dataclass
class Calibration:
    """prediction = overhead_ms + sum(scale * (t(layer) - call_overhead_ms) + ms_per_mparam * Mparams(layer)).

    Fitted on whole subnets; a calibration line from before `ms_per_mparam` reads it as 0.
    """

    call_overhead_ms: float = 0.0
    scale: float = 1.0
    overhead_ms: float = 0.0
    subnets: list[dict] = field(default_factory=list)
    ms_per_mparam: float = 0.0


@dataclass
class LatencyTable:
    """Measured per-layer latencies (ms, one Timing per round) with the settings they were measured with."""

    meta: dict
    rounds: dict[str, dict[int, Timing]] = field(default_factory=dict)
    specs: dict[str, dict] = field(default_factory=dict)
    subnet_rounds: dict[int, dict[int, Timing]] = field(default_factory=dict)  # calibration subnet -> rounds
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
            f"{key}: table {self.meta[key]!r}, expected {expect[key]!r}"
            if key in self.meta
            else f"{key}: not recorded (a table from an older onceforall), expected {expect[key]!r}"
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

    def build_slowdown(self) -> list[float]:
        """How much slower (%) the machine ran at each calibration round of the build than at its fastest.

        The build times its calibration subnets at `subnet_rounds` even points of its schedule: per
        round, the median over the subnets of (that round / the subnet's fastest round) - 1. About 0
        throughout on a quiet machine; a shared VM's slow spells show as the rounds they fell in. The
        table keeps every item's fastest round, so a table built through spells can still predict,
        but only `validate` can tell. Rounds not every subnet has (an unfinished build) and subnets
        timed at 0 ms are left out; empty when nothing is left (a shard, a merge). Tables built before
        the calibration rounds were spread over the build (December 2026, commit b174227) timed them
        back to back at its end: their numbers cover that last minute only.
        """
        stat = self.statistic
        per_subnet = [
            {r: summarize([t], stat) for r, t in rounds.items()} for rounds in self.subnet_rounds.values()
        ]
        common = sorted(set.intersection(*(set(v) for v in per_subnet))) if per_subnet else []
        slowdowns: list[list[float]] = [[] for _ in common]
        for v in per_subnet:
            fastest = min((v[r] for r in common), default=0.0)
            if fastest > 0:
                for row, r in zip(slowdowns, common):
                    row.append(v[r] / fastest - 1)
        return [100 * statistics.median(row) for row in slowdowns if row]

    def build_warning(self, check: str) -> str | None:
        """What to tell the user when the machine changed speed during the build (None when it held).

        `check` is the whole `ofa latency validate ...` command for this table (the caller knows
        the supernet's options). The warning says "check it", not "it is wrong": a table keeps each
        layer's fastest round, and some tables built through slow spells validate at 100 %.
        """
        slowdown = self.build_slowdown()
        if not slowdown or statistics.median(slowdown) <= SLOW_BUILD_PCT:
            return None
        return (
            "the machine changed speed while the latency table was measured: its calibration subnets "
            f"ran a median {statistics.median(slowdown):.1f} % (at worst "
            f"{max(slowdown):.1f} %) slower than their fastest round; the table keeps each layer's "
            f"fastest round, so it may still predict: check it with `{check}` on a machine with nothing "
            "else running"
        )

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
            lambda spec: (
                cal.scale * (layers[spec_key(spec)] - cal.call_overhead_ms)
                + cal.ms_per_mparam * spec.params / 1e6
            ),
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
        elif kind == "subnet":
            index, r = record["index"], record["round"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (index, r)):
                return False
            table.subnet_rounds.setdefault(index, {})[r] = _timing(record)
        elif kind == "calibration":
            keys = ("call_overhead_ms", "scale", "overhead_ms")
            values = {k: float(record[k]) for k in keys}
            values["ms_per_mparam"] = float(record.get("ms_per_mparam", 0.0))
            if not all(math.isfinite(v) for v in values.values()):
                return False
            if values["scale"] <= 0 or values["ms_per_mparam"] < 0:
                return False
            table.calibration = Calibration(**values, subnets=record["subnets"])
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
