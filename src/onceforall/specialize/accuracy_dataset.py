"""The accuracy dataset the predictor is fitted on: one scored subnet per line.

Append-only JSON lines (`{"arch", "accuracy", "meta"[, "loss"]}`), fsynced per line, so collection
can be killed and resumed; a corrupt line is reported with its number and skipped, the good rows are
kept. `collect_accuracy_dataset` scores a fixed list of distinct random subnets into such a file.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onceforall.arch import Arch, SearchSpace
from onceforall.errors import PredictorError
from onceforall.progress import progress_bar


def _accuracy(value: Any) -> float:
    """A row's accuracy: a number in [0, 1] (a string, a boolean or a percentage is a malformed row)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"accuracy {value!r} is not a fraction in [0, 1]")
    return float(value)


def _loss(value: Any) -> float | None:
    """A row's optional mean held-out loss: absent, or a finite non-negative number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"loss {value!r} is not a finite non-negative number")
    return float(value)


@dataclass
class AccuracyRecord:
    arch: Arch
    accuracy: float
    meta: dict = field(default_factory=dict)
    loss: float | None = None  # mean cross-entropy on the same images (rows written since #23)


class AccuracyDataset:
    """Append-only JSON lines of (arch, accuracy, meta), fsynced per line; tolerant reader."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.problems: list[tuple[int, str]] = []

    def read(self, warn: bool = True) -> list[AccuracyRecord]:
        """Every good row; malformed lines go to `problems` as (line number, reason) and are skipped."""
        self.problems = []
        if not self.path.is_file():
            return []
        records = []
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                    record = AccuracyRecord(
                        Arch.from_dict(row["arch"]),
                        _accuracy(row["accuracy"]),
                        row.get("meta", {}),
                        _loss(row.get("loss")),
                    )
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
                    truncated = not raw.endswith(b"\n")
                    reason = "truncated last line" if truncated else f"malformed row ({err})"
                    self.problems.append((number, reason))
                    continue
                records.append(record)
        if warn:
            for number, reason in self.problems:
                warnings.warn(
                    f"{self.path}:{number}: {reason}; skipped (the good rows are kept)", stacklevel=2
                )
        return records

    def __len__(self) -> int:
        return len(self.read(warn=False))

    def append(
        self, arch: Arch, accuracy: float, meta: dict | None = None, loss: float | None = None
    ) -> None:
        """Add one row and make it durable (one write, then fsync) before returning."""
        row = {"arch": arch.to_dict(), "accuracy": float(accuracy), "meta": meta or {}}
        if loss is not None:
            row["loss"] = float(loss)
        line = json.dumps(row) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair(self) -> int | None:
        """Move a partially written last line (a killed writer) to `<path>.corrupt`; its line number."""
        if not self.path.is_file():
            return None
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            with open(self.path.with_name(self.path.name + ".corrupt"), "ab") as side:
                side.write(data[cut:] + b"\n")
            handle.truncate(cut)
            return data[:cut].count(b"\n") + 1

    def population(self, space: SearchSpace, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(population [N, n_genes], accuracy [N]) of the rows; all must belong to `space`."""
        records = self.read(warn)
        if not records:
            first = f" (line {self.problems[0][0]}: {self.problems[0][1]})" if self.problems else ""
            raise PredictorError(
                f"accuracy dataset {self.path} has no usable rows{first}; is it a file of `ofa acc-dataset`?"
            )
        others = {r.arch.space for r in records} - {space.name}
        if others:
            raise PredictorError(
                f"accuracy dataset {self.path} holds archs of space(s) {sorted(others)}, not {space.name!r}"
            )
        population = space.encode([r.arch for r in records])
        return population, torch.tensor([r.accuracy for r in records])

    def losses(self) -> torch.Tensor:
        """Every usable row's mean held-out loss, in the order of `population`."""
        records = self.read(warn=False)
        missing = sum(r.loss is None for r in records)
        if missing:
            raise PredictorError(
                f"{missing} of {len(records)} rows of {self.path} have no loss (written before losses were "
                "recorded); score the subnets again with `ofa acc-dataset` into a new file, or fit to the "
                "accuracy (--label accuracy)"
            )
        return torch.tensor([r.loss for r in records])


def unique_samples(space: SearchSpace, n: int, seed: int = 0) -> torch.Tensor:
    """`n` distinct canonical subnets (resolution included), drawn in a fixed order for a seed."""
    total = space.count(include_resolution=True)
    if n > total:
        raise PredictorError(f"space {space.name!r} has only {total} distinct subnets; asked for {n}")
    generator = torch.Generator().manual_seed(seed)
    seen: dict[tuple, None] = {}
    for _ in range(1000):
        batch = space.canonical(space.sample(max(64, 2 * (n - len(seen))), generator))
        for row in batch.tolist():
            seen.setdefault(tuple(row), None)
            if len(seen) == n:
                return torch.tensor(list(seen), dtype=torch.long)
    raise PredictorError(f"could not draw {n} distinct subnets of {space.name!r}")


@dataclass
class CollectSummary:
    path: Path
    planned: int
    skipped: int
    evaluated: int
    seconds: float


def _refuse_foreign(dataset: AccuracyDataset) -> None:
    """Refuse to append to a file that is not an accuracy dataset (a latency table, notes, a checkpoint)."""
    path = dataset.path
    if path.exists() and not path.is_file():
        raise PredictorError(f"{path} is a folder, not an accuracy dataset file; give a file path as --out")
    if not path.is_file() or not path.stat().st_size:
        return
    with open(path, "rb") as handle:
        first = handle.readline(1 << 16)
    try:
        row = json.loads(first)
        Arch.from_dict(row["arch"])
        _accuracy(row["accuracy"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        if first.endswith(b"\n"):  # a complete line that is no row: not a file of ours
            raise PredictorError(
                f"{path} exists and is not an accuracy dataset (its first line is not an (arch, accuracy) "
                "row); it is left untouched: give another --out"
            ) from None


def _check_same_setting(old: dict, new: dict, path: Path) -> None:
    """Refuse to mix rows scored differently (another supernet, dataset or image count) in one file."""
    for key in sorted(old.keys() & new.keys() - {"seconds", "shard"}):
        if old[key] != new[key]:
            raise PredictorError(
                f"{path} holds subnets scored with {key}={old[key]!r}, this run uses {new[key]!r}; "
                "use another --out, or the same settings to resume"
            )


def collect_accuracy_dataset(
    evaluate_fn: Callable[[Arch], float | tuple[float, float]],
    space: SearchSpace,
    n: int,
    path: str | Path,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    meta: dict | None = None,
) -> CollectSummary:
    """Evaluate `n` distinct random subnets (this shard's share), appending each result as it is made.

    The subnets are a fixed list for (space, n, seed); shard (rank, world) takes every world-th one
    from rank. Subnets already in the file are skipped, so a killed run resumes where it stopped
    (rows whose `meta` differs from this run's, e.g. another supernet, are refused);
    a partially written last line is moved to `<path>.corrupt`. `evaluate_fn(arch)` returns the
    accuracy as a fraction, or (accuracy, mean loss on the same images).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise PredictorError(f"shard {rank}/{world} is invalid: need 0 <= rank < world")
    dataset = AccuracyDataset(path)
    _refuse_foreign(dataset)
    cut = dataset.repair()
    if cut is not None:
        warnings.warn(
            f"{dataset.path}:{cut}: truncated last line moved to {dataset.path.name}.corrupt", stacklevel=2
        )
    done = set()
    for record in dataset.read():
        _check_same_setting(record.meta, meta or {}, dataset.path)
        if record.arch.space == space.name:
            done.add(tuple(space.canonical(space.encode(record.arch))[0].tolist()))
    mine = unique_samples(space, n, seed)[rank::world]
    todo = [row for row in mine.tolist() if tuple(row) not in done]
    start = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluating subnets", total=len(mine), completed=len(mine) - len(todo))
        for arch in space.decode(torch.tensor(todo, dtype=torch.long).reshape(-1, space.n_genes)):
            began = time.perf_counter()
            result = evaluate_fn(arch)
            accuracy, loss = result if isinstance(result, tuple) else (result, None)
            accuracy = float(accuracy)
            row_meta = {
                **(meta or {}),
                "seconds": round(time.perf_counter() - began, 4),
                "shard": [rank, world],
            }
            dataset.append(arch, accuracy, row_meta, loss)
            bar.update(task, advance=1, description=f"evaluating subnets (last {100 * accuracy:.2f} %)")
    return CollectSummary(
        dataset.path, len(mine), len(mine) - len(todo), len(todo), time.perf_counter() - start
    )
