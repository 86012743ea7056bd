"""Search over populations as tensors: constrained evolution, NSGA-II (pymoo) and random search.

Accuracy and efficiency models are callables on a population (LongTensor [N, n_genes] of choice
indices) returning one value per arch (an efficiency model may return [N, m] with m budgets).
No model is ever called per candidate: each generation evaluates all its candidates in one call.
Randomness comes from a seeded `torch.Generator`, so a search is deterministic for a seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from onceforall.arch import Arch, SearchSpace
from onceforall.errors import SearchError
from onceforall.specialize.latency import torch_threads

PopulationFn = Callable[[torch.Tensor], torch.Tensor]


def _feasible(efficiency: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    if efficiency.dim() == 1:
        return efficiency <= budget
    return (efficiency <= budget).all(-1)


def smallest(space: SearchSpace, efficiency: PopulationFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Efficiency of the smallest arch at each resolution: ([R, ...] values, [R, n_genes] archs)."""
    archs = space.encode([space.min_arch(r) for r in space.resolutions])
    return efficiency(archs), archs


def check_budget(space: SearchSpace, efficiency: PopulationFn, budget: torch.Tensor, unit: str = "") -> None:
    """Raise SearchError naming the smallest achievable value if no arch can meet `budget`."""
    values, _ = smallest(space, efficiency)
    if _feasible(values, budget).any():
        return
    flat = values if values.dim() == 1 else values.max(-1).values
    best = int(flat.argmin())
    need = values[best].tolist()
    raise SearchError(
        f"no subnet of {space.name} meets the budget {_fmt(budget.tolist(), unit)}: the smallest achievable "
        f"is {_fmt(need, unit)} (the smallest subnet at resolution {space.resolutions[best]}); "
        "raise the budget, or use a space with smaller resolutions or choices"
    )


def _fmt(value: float | list, unit: str) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(_fmt(v, unit) for v in value) + ")"
    return f"{value:.4g}{' ' + unit if unit else ''}"


def _fill(
    draw: Callable[[], torch.Tensor],
    efficiency: PopulationFn,
    budget: torch.Tensor,
    n: int,
    max_tries: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Up to `n` feasible rows from repeated batches of candidates (bounded), their efficiency, #evaluated."""
    kept, values, evaluated = [], [], 0
    have = 0
    for _ in range(max_tries):
        candidates = draw()
        eff = efficiency(candidates)
        evaluated += len(candidates)
        ok = _feasible(eff, budget)
        kept.append(candidates[ok])
        values.append(eff[ok])
        have += int(ok.sum())
        if have >= n:
            break
    return torch.cat(kept)[:n], torch.cat(values)[:n], evaluated


# --------------------------------------------------------------------------- results
@dataclass
class SearchResult:
    """The final population (best first) with predicted accuracy, efficiency and the search history."""

    space: SearchSpace = field(repr=False)
    population: torch.Tensor
    accuracy: torch.Tensor
    efficiency: torch.Tensor
    history: torch.Tensor
    budget: list[float] | float | None
    seconds: float
    evaluated: int
    method: str

    @property
    def best_arch(self) -> Arch:
        return self.space.decode(self.population[:1])[0]

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy[0])

    @property
    def best_efficiency(self) -> float | list[float]:
        return self.efficiency[0].tolist()

    def archs(self, k: int | None = None) -> list[Arch]:
        return self.space.decode(self.population[:k])

    def to_dict(self, top: int = 5) -> dict:
        rows = [
            {"arch": a.to_dict(), "accuracy": float(acc), "efficiency": eff}
            for a, acc, eff in zip(
                self.archs(top), self.accuracy[:top].tolist(), self.efficiency[:top].tolist()
            )
        ]
        return {
            "method": self.method,
            "space": self.space.name,
            "budget": self.budget,
            "best": rows[0] if rows else None,
            "top": rows,
            "seconds": self.seconds,
            "evaluated": self.evaluated,
            "history": self.history.tolist(),
        }


def _result(
    space, population, accuracy, efficiency, history, budget, start, evaluated, method
) -> SearchResult:
    order = torch.argsort(accuracy, descending=True, stable=True)
    return SearchResult(
        space,
        population[order],
        accuracy[order],
        efficiency[order],
        torch.tensor(history),
        budget,
        time.perf_counter() - start,
        evaluated,
        method,
    )


def _budget(budget: float | Sequence[float]) -> torch.Tensor:
    return torch.as_tensor(budget, dtype=torch.float64)


# --------------------------------------------------------------------------- evolution
def evolution_search(
    space: SearchSpace,
    accuracy: PopulationFn,
    efficiency: PopulationFn,
    budget: float | Sequence[float],
    population_size: int = 100,
    generations: int = 500,
    parent_ratio: float = 0.25,
    mutation_ratio: float = 0.5,
    mutate_prob: dict[str, float] | None = None,
    seed: int = 0,
    oversample: float = 2.0,
    max_tries: int = 20,
    unit: str = "",
) -> SearchResult:
    """The original's evolution under `efficiency(pop) <= budget`, on whole populations.

    Each generation keeps the top `parent_ratio` of the population by predicted accuracy and adds
    `mutation_ratio * population_size` mutants and the rest crossover children of random parents
    (mutation: block 0.1, depth 0.1, resolution 0.5 by default). As in the original each child
    slot picks its parent(s) and redraws its mutation (crossover) until it fits, but all slots at
    once: several candidates per slot (from the running acceptance rate, at first 1/`oversample`),
    one efficiency call for all, the first feasible candidate of each slot kept, at most
    `max_tries` rounds; a slot still empty gets its parent (feasible), so a budget almost nothing
    meets cannot loop forever. An infeasible budget raises SearchError with the smallest
    achievable value.
    """
    start = time.perf_counter()
    budget_t = _budget(budget)
    generator = torch.Generator().manual_seed(seed)
    rates = space.mutation_rates(mutate_prob)
    n_parents = max(1, round(parent_ratio * population_size))
    n_mutants = round(mutation_ratio * population_size)
    need = (n_mutants, population_size - n_mutants)
    rate = [1 / oversample]  # running share of candidates that meet the budget
    with torch_threads(1), torch.inference_mode():
        check_budget(space, efficiency, budget_t, unit)
        population, eff, evaluated = _initial(
            space, efficiency, budget_t, population_size, oversample, max_tries, generator
        )
        acc = accuracy(population).float()
        history = []
        for _ in range(generations):
            top = torch.topk(acc, min(n_parents, len(acc))).indices
            parents, parent_acc, parent_eff = population[top], acc[top], eff[top]
            history.append(max(history[-1] if history else -math.inf, float(parent_acc[0])))
            children, child_eff, n_eval = _children(
                space, rates, parents, efficiency, budget_t, need, rate, max_tries, generator
            )
            evaluated += n_eval
            population = torch.cat([parents, children])
            acc = torch.cat([parent_acc, accuracy(children).float()])
            eff = torch.cat([parent_eff, child_eff])
        history.append(max(history[-1] if history else -math.inf, float(acc.max())))
    return _result(space, population, acc, eff, history, budget_t.tolist(), start, evaluated, "evolution")


def _initial(space, efficiency, budget, n, oversample, max_tries, generator):
    """`n` random feasible archs; if random draws rarely fit, the rest are the smallest feasible archs."""
    batch = math.ceil(n * oversample)
    population, eff, evaluated = _fill(
        lambda: space.sample(batch, generator), efficiency, budget, n, max_tries
    )
    if len(population) < n:
        values, archs = smallest(space, efficiency)
        ok = _feasible(values, budget)
        fill = archs[ok].repeat(math.ceil((n - len(population)) / int(ok.sum())), 1)[: n - len(population)]
        population = torch.cat([population, fill])
        eff = torch.cat([eff, efficiency(fill)])
    return population, eff, evaluated


def _children(space, rates, parents, efficiency, budget, need, rate, max_tries, generator):
    """Mutants and crossover children that meet the budget; updates the acceptance rate `rate[0]`.

    As in the original, each child slot first picks its parent (or two), then its mutation
    (crossover) is redrawn until it fits: here `reps` candidates per slot at once (enough that a
    slot stays empty with probability ~0.5 % at the running acceptance rate), the first feasible one
    kept, and only empty slots drawn again (at most `max_tries` times). A slot that stays empty
    gets its (first) parent, which is feasible.
    """
    n_m, n_c = need
    n = n_m + n_c
    picks = torch.randint(len(parents), (n + n_c,), generator=generator)
    first, second = picks[:n], picks[n:]  # crossover slot j >= n_m mates first[j] with second[j - n_m]
    chosen, chosen_eff = parents[first].clone(), None
    pending = torch.arange(n)
    evaluated = 0
    for _ in range(max_tries):
        if not len(pending):
            break
        r = min(max(rate[0], 0.02), 0.99)
        reps = min(32, math.ceil(math.log(0.005) / math.log1p(-r)))
        slots = pending.repeat_interleave(reps)
        split = int((slots < n_m).sum())  # slots are sorted: mutants first
        a = parents[first[slots]]
        candidates = torch.cat(
            [
                space._mutate(a[:split], generator, rates),
                space._crossover(a[split:], parents[second[slots[split:] - n_m]], generator),
            ]
        )
        eff = efficiency(candidates)
        evaluated += len(candidates)
        if chosen_eff is None:
            chosen_eff = eff.new_zeros((n, *eff.shape[1:]))
        hit = _feasible(eff, budget).view(len(pending), reps)
        rate[0] = 0.7 * rate[0] + 0.3 * hit.float().mean().item()
        found = hit.any(1)
        index = (torch.arange(len(pending)) * reps + hit.float().argmax(1))[found]
        chosen[pending[found]], chosen_eff[pending[found]] = candidates[index], eff[index]
        pending = pending[~found]
    if len(pending):  # bounded: the parent itself (feasible) instead of looping forever
        chosen_eff[pending] = efficiency(chosen[pending])
    return chosen, chosen_eff, evaluated


# --------------------------------------------------------------------------- random search
def random_search(
    space: SearchSpace,
    accuracy: PopulationFn,
    efficiency: PopulationFn,
    budget: float | Sequence[float],
    n: int = 50_100,
    batch_size: int = 5_000,
    seed: int = 0,
    keep: int = 100,
    unit: str = "",
) -> SearchResult:
    """The baseline: `n` uniform random archs, the best `keep` feasible ones by predicted accuracy.

    The default `n` equals the number of archs evolution's default run predicts (100 + 500 x 100).
    """
    start = time.perf_counter()
    budget_t = _budget(budget)
    generator = torch.Generator().manual_seed(seed)
    with torch_threads(1), torch.inference_mode():
        check_budget(space, efficiency, budget_t, unit)
        best_pop = torch.zeros(0, space.n_genes, dtype=torch.long)
        best_acc, best_eff = torch.zeros(0), None
        history, drawn = [], 0
        while drawn < n:
            candidates = space.sample(min(batch_size, n - drawn), generator)
            drawn += len(candidates)
            eff = efficiency(candidates)
            ok = _feasible(eff, budget_t)
            candidates, eff = candidates[ok], eff[ok]
            acc = accuracy(candidates).float()
            best_pop = torch.cat([best_pop, candidates])
            best_acc = torch.cat([best_acc, acc])
            best_eff = eff if best_eff is None else torch.cat([best_eff, eff])
            top = torch.topk(best_acc, min(keep, len(best_acc))).indices
            best_pop, best_acc, best_eff = best_pop[top], best_acc[top], best_eff[top]
            history.append(float(best_acc[0]) if len(best_acc) else -math.inf)
    if best_eff is None or not len(best_pop):
        raise SearchError(f"random search found no arch within the budget in {n} draws; use evolution_search")
    return _result(space, best_pop, best_acc, best_eff, history, budget_t.tolist(), start, drawn, "random")


# --------------------------------------------------------------------------- NSGA-II
@dataclass
class ParetoResult:
    """The non-dominated archs (sorted by the first efficiency objective) and the front's hypervolume."""

    space: SearchSpace = field(repr=False)
    population: torch.Tensor
    accuracy: torch.Tensor
    objectives: dict[str, torch.Tensor]
    hypervolume: float
    ref_point: list[float]
    history: list[float]
    seconds: float
    evaluated: int

    def archs(self) -> list[Arch]:
        return self.space.decode(self.population)

    def to_dict(self) -> dict:
        names = list(self.objectives)
        front = [
            {"arch": a.to_dict(), "accuracy": float(acc), **{k: float(self.objectives[k][i]) for k in names}}
            for i, (a, acc) in enumerate(zip(self.archs(), self.accuracy.tolist()))
        ]
        return {
            "method": "nsga2",
            "space": self.space.name,
            "objectives": ["accuracy", *names],
            "hypervolume": self.hypervolume,
            "ref_point": self.ref_point,
            "front": front,
            "hypervolume_history": self.history,
            "seconds": self.seconds,
            "evaluated": self.evaluated,
        }


def nsga2_search(
    space: SearchSpace,
    accuracy: PopulationFn,
    objectives: dict[str, PopulationFn],
    population_size: int = 100,
    generations: int = 100,
    seed: int = 0,
    mutate_prob: dict[str, float] | None = None,
) -> ParetoResult:
    """The accuracy x efficiency Pareto front by NSGA-II (pymoo) over integer gene vectors.

    Maximises accuracy and minimises each of `objectives` (e.g. {"latency_ms": table, "params": ...}).
    Sampling, crossover and mutation are this space's operators (children canonicalised, so equal
    subnets are detected as duplicates); evaluation is one call per generation. The hypervolume
    (pymoo's indicator) of (-accuracy, objectives...) is measured against the reference point
    (0, value of the largest subnet for each objective).
    """
    import numpy as np
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.callback import Callback
    from pymoo.core.crossover import Crossover
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.sampling import Sampling
    from pymoo.indicators.hv import HV
    from pymoo.optimize import minimize

    if not objectives:
        raise SearchError("NSGA-II needs at least one efficiency objective besides accuracy")
    start = time.perf_counter()
    names = list(objectives)
    generator = torch.Generator().manual_seed(seed)
    rates = space.mutation_rates(mutate_prob)
    counter = {"evaluated": 0}

    def as_population(x) -> torch.Tensor:
        return torch.from_numpy(np.rint(np.asarray(x, dtype=np.float64)).astype(np.int64))

    class ArchProblem(Problem):
        def __init__(self):
            upper = np.array([len(g.choices) - 1 for g in space.genes])
            super().__init__(n_var=space.n_genes, n_obj=1 + len(names), xl=0, xu=upper, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            population = as_population(x)
            counter["evaluated"] += len(population)
            columns = [-accuracy(population).double()]
            columns += [objectives[k](population).double() for k in names]
            out["F"] = torch.stack(columns, 1).numpy()

    class ArchSampling(Sampling):
        def _do(self, problem, n_samples, **kwargs):
            return space.canonical(space.sample(n_samples, generator)).numpy()

    class ArchCrossover(Crossover):
        def __init__(self):
            super().__init__(2, 2)

        def _do(self, problem, x, **kwargs):
            a, b = as_population(x[0]), as_population(x[1])
            pick = torch.rand(a.shape, generator=generator, dtype=torch.float64) < 0.5
            first, second = torch.where(pick, a, b), torch.where(pick, b, a)
            return np.stack([space.canonical(first).numpy(), space.canonical(second).numpy()])

    class ArchMutation(Mutation):
        def _do(self, problem, x, **kwargs):
            return space.canonical(space._mutate(as_population(x), generator, rates)).numpy()

    with torch_threads(1), torch.inference_mode():
        largest = space.encode([space.max_arch(r) for r in space.resolutions])
        ref = [0.0] + [float(objectives[k](largest).double().max()) for k in names]
        indicator = HV(ref_point=np.array(ref))
        history: list[float] = []

        class Record(Callback):
            def notify(self, algorithm):
                history.append(float(indicator(algorithm.opt.get("F"))))

        algorithm = NSGA2(
            pop_size=population_size,
            sampling=ArchSampling(),
            crossover=ArchCrossover(),
            mutation=ArchMutation(),
            eliminate_duplicates=True,
        )
        result = minimize(
            ArchProblem(), algorithm, ("n_gen", generations), seed=seed, callback=Record(), verbose=False
        )
    population = as_population(result.X)
    f = torch.from_numpy(np.asarray(result.F, dtype=np.float64))
    order = torch.argsort(f[:, 1], stable=True)
    population, f = population[order], f[order]
    return ParetoResult(
        space,
        population,
        -f[:, 0],
        {k: f[:, 1 + i] for i, k in enumerate(names)},
        float(indicator(f.numpy())),
        ref,
        history,
        time.perf_counter() - start,
        counter["evaluated"],
    )
