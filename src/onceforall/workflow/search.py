"""`ofa search` and `ofa pareto`: efficiency models from the stated budgets, then the search itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from onceforall.arch import SearchSpace
from onceforall.cost import LayerTable
from onceforall.errors import OFAError
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.predictor import AccuracyPredictor
from onceforall.specialize.search import (
    ParetoResult,
    SearchResult,
    evolution_search,
    nsga2_search,
    random_search,
)
from onceforall.workflow.specialize import parse_quantity

PopulationFn = Callable[[torch.Tensor], torch.Tensor]


def latency_model(space: SearchSpace, table: Path, expect: dict) -> tuple[LayerTable, dict]:
    """The table's model and its settings; refuses a table whose settings differ from `expect`'s non-None ones."""
    loaded = LatencyTable.load(table, expect={k: v for k, v in expect.items() if v is not None})
    return loaded.model(space), loaded.meta


def constraints(
    space: SearchSpace,
    table: Path | None,
    expect: dict,
    max_latency: str | None = None,
    max_macs: str | None = None,
    max_params: str | None = None,
) -> tuple[list[str], list[LayerTable], list[float]]:
    """Names, efficiency models and budgets of the given constraints."""
    names, models, budgets = [], [], []
    if max_latency is not None:
        if table is None:
            raise OFAError("--max-latency needs --table (a latency table built on the target)")
        names.append("latency_ms")
        models.append(latency_model(space, table, expect)[0])
        budgets.append(parse_quantity(max_latency, "time"))
    if max_macs is not None:
        names.append("macs")
        models.append(LayerTable(space, lambda spec: spec.macs))
        budgets.append(parse_quantity(max_macs))
    if max_params is not None:
        names.append("params")
        models.append(LayerTable(space, lambda spec: spec.params))
        budgets.append(parse_quantity(max_params))
    if not models:
        raise OFAError("give a budget: --max-latency (with --table), --max-macs or --max-params")
    return names, models, budgets


def stacked(models: list[LayerTable]) -> PopulationFn:
    """Several efficiency models as one [N, k] model."""
    return lambda population: torch.stack([m(population) for m in models], -1)


def search(
    space: SearchSpace,
    predictor: AccuracyPredictor,
    names: list[str],
    models: list[LayerTable],
    budgets: list[float],
    method: str = "evolution",
    population: int = 100,
    generations: int = 500,
    seed: int = 0,
) -> SearchResult:
    """The best predicted subnet within every budget, by constrained evolution or random search."""
    if population < 2 or generations < 1:
        raise OFAError(
            f"--population must be >= 2 and --generations >= 1, got {population} and {generations}"
        )
    accuracy = predictor.bind(space)
    efficiency = models[0] if len(models) == 1 else stacked(models)
    budget = budgets[0] if len(budgets) == 1 else budgets
    if method == "evolution":
        return evolution_search(space, accuracy, efficiency, budget, population, generations, seed=seed)
    if method == "random":
        return random_search(space, accuracy, efficiency, budget, n=population * (generations + 1), seed=seed)
    raise OFAError(f"unknown method {method!r}; choose evolution or random")


def objective_models(
    space: SearchSpace, objectives: str, table: Path | None, expect: dict
) -> dict[str, LayerTable]:
    """'latency,macs' -> {name: model} for NSGA-II."""
    models: dict[str, LayerTable] = {}
    for name in [o.strip() for o in objectives.split(",") if o.strip()]:
        if name == "latency":
            if table is None:
                raise OFAError("objective latency needs --table")
            models["latency_ms"] = latency_model(space, table, expect)[0]
        elif name in ("macs", "params"):
            models[name] = LayerTable(space, lambda spec, name=name: getattr(spec, name))
        else:
            raise OFAError(f"unknown objective {name!r}; choose from latency, macs, params")
    if not models:
        raise OFAError("--objectives is empty; choose from latency, macs, params")
    return models


def pareto(
    space: SearchSpace,
    predictor: AccuracyPredictor,
    models: dict[str, LayerTable],
    population: int = 100,
    generations: int = 100,
    seed: int = 0,
) -> ParetoResult:
    if population < 2 or generations < 1:
        raise OFAError(
            f"--population must be >= 2 and --generations >= 1, got {population} and {generations}"
        )
    return nsga2_search(space, predictor.bind(space), models, population, generations, seed)
