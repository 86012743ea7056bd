"""`ofa specialize` and `ofa demo`: a supernet, a predictor and a latency table in, one exported subnet per budget out."""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path

from onceforall.arch import SearchSpace
from onceforall.cost import LayerTable
from onceforall.errors import OFAError, PredictorError
from onceforall.io import MAX_REPLACEABLE, FolderLock, is_png, remove_stale_tmp
from onceforall.registry import LoadedSupernet, predictor_path
from onceforall.specialize.finetune import distilling_finetuner
from onceforall.specialize.latency_build import build_latency_table
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.pipeline import Specialized, check_budgets
from onceforall.specialize.pipeline import specialize as run_pipeline
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.timing import current_settings
from onceforall.workflow.data import dataset_evaluator, supernet_data, training_loader

_SCALES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIMES = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}


def parse_quantity(text: str, kind: str = "count") -> float:
    """'300M' -> 3e8, '1.2G' -> 1.2e9 (kind "count"); '4ms' -> 4.0, '4000us' -> 4.0 (kind "time", in ms)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*", str(text))
    units = _TIMES if kind == "time" else _SCALES
    unit = match.group(2).lower() if match else None
    value = float(match.group(1)) * units[unit] if match and unit in units else math.nan
    if not (math.isfinite(value) and value > 0):
        example = "4ms, 2.5ms, 800us or 0.004s" if kind == "time" else "300M, 1.2G, 5e8 or 600k"
        raise OFAError(
            f"cannot read {text!r} as a positive {'latency' if kind == 'time' else 'count'}; write e.g. {example}"
        )
    return value


def parse_budgets(text: str) -> list[float] | None:
    """'2ms,4ms' -> [2.0, 4.0]; empty -> None (three budgets spread over the space)."""
    if not text.strip():
        return None
    parts = [p for p in text.split(",")]
    if any(not p.strip() for p in parts):
        raise OFAError(f"--budgets {text!r} has an empty entry; write e.g. 2ms,4ms,8ms")
    return sorted({parse_quantity(p, "time") for p in parts})


def parse_formats(text: str) -> tuple[str, ...]:
    """'onnx,pt2' -> ('onnx', 'pt2'), checked."""
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in ("onnx", "pt2")]
    if not formats or unknown:
        raise OFAError(f"--formats {text!r}: choose one or more of onnx, pt2 (comma-separated)")
    return formats


def spread_budgets(
    latency: LayerTable, space: SearchSpace, fractions: tuple[float, ...] = (0.2, 0.45, 0.8)
) -> list[float]:
    """Distinct budgets (ms, 3 significant digits) at `fractions` of the way from the smallest subnet's
    latency to the largest's."""
    archs = [space.min_arch(min(space.resolutions)), space.max_arch(max(space.resolutions))]
    low, high = latency(space.encode(archs)).tolist()
    budgets = (max(low, float(f"{low + f * (high - low):.3g}")) for f in fractions)
    return sorted(set(budgets))


def _is_report(data: bytes) -> bool:
    return data.startswith(b"# Specialized subnets of")


def _is_results(data: bytes) -> bool:
    try:
        rows = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and "budget_ms" in r for r in rows)


# What `ofa specialize` writes into --out (and the latency table it may keep there), and how each
# is recognised: a user's own report.md in the folder is not one of ours.
_OWN_FILES = {"report.md": _is_report, "results.json": _is_results, "pareto.png": is_png}


def _own(entry: Path) -> bool:
    return (
        entry.is_file()
        and entry.stat().st_size < MAX_REPLACEABLE
        and _OWN_FILES[entry.name](entry.read_bytes())
    )


def _budget_folder(entry: Path) -> bool:
    """A budget's export of an earlier run (its arch.json is written after the models)."""
    return entry.is_dir() and entry.name.startswith("budget_") and (entry / "arch.json").is_file()


def claim_output(out: Path) -> FolderLock:
    """Lock --out, refuse a folder that holds other things than a specialize run's, and clear the last
    run's outputs, so the folder never mixes two runs (old budget folders beside a new report).

    Called after the cheap checks, so a mistyped budget does not remove the previous results.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OFAError(f"--out {out} is a file; give a folder for report.md, results.json and the exports")
    foreign = sorted(
        p.name
        for p in (out.iterdir() if out.is_dir() else ())
        if not ((p.name in _OWN_FILES and _own(p)) or p.name.startswith(".") or p.suffix == ".jsonl")
        and not _budget_folder(p)
    )
    if foreign:
        raise OFAError(
            f"--out {out} holds files `ofa specialize` did not write ({foreign[:5]}); it is left untouched: "
            "give an empty or new folder"
        )
    lock = FolderLock(out, "--out").acquire()
    remove_stale_tmp(out)
    for entry in out.iterdir():
        if _budget_folder(entry):
            shutil.rmtree(entry)
        elif entry.name in _OWN_FILES:
            entry.unlink()
    return lock


def load_predictor(loaded: LoadedSupernet, predictor: Path | None, space: SearchSpace) -> AccuracyPredictor:
    """The given predictor file, else the one shipped with the supernet's registry id."""
    if predictor is None:
        net_id = loaded.info.get("net_id")
        if net_id is None:
            raise PredictorError(
                f"{loaded.info.get('source')} ships no accuracy predictor; pass --predictor (make one with "
                "`ofa acc-dataset` and `ofa predictor fit`)"
            )
        predictor = predictor_path(net_id)
    return AccuracyPredictor.load(predictor, space)


def specialize_supernet(
    loaded: LoadedSupernet,
    budgets_ms: list[float] | None,
    predictor: Path | None,
    table: Path,
    backend: str,
    threads: int,
    out: Path,
    finetune_epochs: int = 0,
    finetune_lr: float = 0.01,
    seed: int = 0,
    device: str | None = None,
    data: str | None = None,
    root: str | None = None,
    formats: tuple[str, ...] = ("onnx", "pt2"),
    max_searches: int = 3,
    generations: int = 500,
) -> list[Specialized]:
    """Budgets None picks three between the smallest and largest subnet's latency.

    The cheap checks (predictor, table, budgets) come before the data is loaded; the table is
    measured here first when the file is missing.
    """
    space = loaded.net.search_space()
    accuracy_model = load_predictor(loaded, predictor, space)
    # report.md's title: the registry id (given or recognised from the file), else the file itself
    name = loaded.info.get("net_id") or loaded.info.get("source")
    if table.is_file():
        latency = LatencyTable.load(table, expect=current_settings(backend, "cpu", threads, 1))
    else:
        latency = build_latency_table(space, table, backend=backend, threads=threads, progress=True)
        resolutions = ",".join(map(str, space.resolutions))
        check = f"ofa latency validate --supernet {name} --resolutions {resolutions} --table {table}"
        warning = latency.build_warning(check)
        # the chosen subnets are measured end to end all the same, but a table off by a spell's
        # slowdown costs searches again (or a budget missed), so the user hears of it now
        if warning:
            warnings.warn(warning, stacklevel=2)
    latency_model = latency.model(space)
    budgets_ms = budgets_ms or spread_budgets(latency_model, space)
    check_budgets(space, latency_model, budgets_ms)
    # Held until this function returns (the last reference goes): one `ofa specialize` per --out.
    lock = claim_output(out)  # noqa: F841
    source = supernet_data(loaded, data, root)
    evaluator, _ = dataset_evaluator(loaded, source, "test", device)
    tune = None
    if finetune_epochs:
        loader = training_loader(source, device, seed)
        tune = distilling_finetuner(evaluator, loader, finetune_epochs, finetune_lr, seed)
    return run_pipeline(
        evaluator,
        accuracy_model,
        latency,
        budgets_ms,
        out,
        seed,
        finetune=tune,
        formats=formats,
        max_rounds=max_searches,
        generations=generations,
        name=name,
    )
