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
from onceforall.specialize.timing import torch_threads

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
class _Seen:
    """The canonical archs a search has already taken, as exact float64 keys in a Python set.

    A key is a fixed random linear form of a canonical row, small enough to be exact in float64
    (below 2**53); two distinct archs share a key with probability about 1e-13 per pair, and the
    only effect of such a collision is that one arch is never proposed.
    """

    def __init__(self, space: SearchSpace):
        spread = max(1, int((space._tables.limits - 1).sum()))
        high = max(2, 2**53 // spread)
        fixed = torch.Generator().manual_seed(0x5EE9)  # the same keys whatever the search's seed
        self.weights = torch.randint(1, high, (space.n_genes,), generator=fixed, dtype=torch.long).double()
        self.keys: set[float] = set()

    def take(
        self, canonical: torch.Tensor, candidates: torch.Tensor, slots: torch.Tensor, n: int
    ) -> list[int]:
        """Indices (into `canonical`) of the first unseen candidate of each slot, marked seen.

        `candidates` are the indices to consider, in order; `slots[i]` is candidate i's slot.
        """
        keys = (canonical[candidates].double() @ self.weights).tolist()
        filled = [False] * n
        taken = []
        for index, slot, key in zip(candidates.tolist(), slots[candidates].tolist(), keys):
            if filled[slot] or key in self.keys:
                continue
            self.keys.add(key)
            filled[slot] = True
            taken.append(index)
        return taken


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
    max_tries: int = 1,
    draws: int = 8,
    unit: str = "",
) -> SearchResult:
    """The original's evolution under `efficiency(pop) <= budget`, on whole populations, made to converge.

    Each generation keeps parents and adds `mutation_ratio * population_size` mutants and the rest
    crossover children of two distinct parents (mutation: block 0.1, depth 0.1, resolution 0.5 by
    default), each child slot with its parent(s) drawn first, as in the original. Two changes make
    one search reach what ten long ones do (docs/benchmarks.md):

    - No arch is taken twice. Children are canonical (skipped blocks' genes zeroed) and a child
      already seen in this search counts as a miss, like one over the budget. In the original the
      parents soon are copies of one arch, crossover of copies returns the copy, and the search
      stalls on the first good arch it found.
    - Parents are the best `parent_ratio * population_size` archs spread over the resolutions:
      at most ceil(n_parents / n_resolutions) per resolution. The resolution scales every layer's
      cost, so each resolution is its own basin; with one ranking, the resolution that looks best
      early takes all parents and the others are never refined.

    A slot draws as many candidates per round as fill it with probability 1/2 at the running
    share of feasible new candidates (at most `draws`), for at most `max_tries` rounds; its first
    feasible unseen candidate is kept and a slot still empty stays empty (a smaller generation,
    never an endless loop). Retrying the empty slots costs more than it gains: at a converged
    population most of their draws are already seen. One efficiency call per round and one
    accuracy call per generation. An infeasible budget raises SearchError with the
    smallest achievable value.
    """
    if population_size < 2 or generations < 0 or max_tries < 1 or draws < 1:
        raise SearchError(
            f"population_size={population_size}, generations={generations}, max_tries={max_tries}, "
            f"draws={draws}: need population_size >= 2, generations >= 0, max_tries >= 1 and draws >= 1"
        )
    start = time.perf_counter()
    budget_t = _budget(budget)
    generator = torch.Generator().manual_seed(seed)
    rates = space.mutation_rates(mutate_prob)
    n_parents = max(2, round(parent_ratio * population_size))
    n_mutants = round(mutation_ratio * population_size)
    need = (n_mutants, population_size - n_mutants)
    resolution = space._gene_index("image_size", None)
    per_niche = math.ceil(n_parents / len(space.resolutions))
    seen = _Seen(space)
    with torch_threads(1), torch.inference_mode():
        check_budget(space, efficiency, budget_t, unit)
        population, eff, evaluated = _initial(
            space, efficiency, budget_t, population_size, max_tries, seen, generator
        )
        acc = accuracy(population).float()
        rate = [0.5]  # running share of candidates that are feasible and new
        history = []
        for _ in range(generations):
            top = _parents(acc, population[:, resolution], n_parents, per_niche)
            population, acc, eff = population[top], acc[top], eff[top]
            history.append(max(history[-1] if history else -math.inf, float(acc[0])))
            children, child_eff, n_eval = _children(
                space, rates, population, efficiency, budget_t, need, rate, max_tries, draws, seen, generator
            )
            evaluated += n_eval
            population = torch.cat([population, children])
            acc = torch.cat([acc, accuracy(children).float()])
            eff = torch.cat([eff, child_eff])
        history.append(max(history[-1] if history else -math.inf, float(acc.max())))
    return _result(space, population, acc, eff, history, budget_t.tolist(), start, evaluated, "evolution")


def _parents(acc: torch.Tensor, niche: torch.Tensor, n: int, per_niche: int) -> torch.Tensor:
    """Indices of the best `n` archs with at most `per_niche` of each niche value, best first."""
    order = torch.argsort(acc, descending=True, stable=True)
    niche = niche[order]
    by_niche = torch.argsort(niche, stable=True)  # keeps the accuracy order inside each niche
    grouped = niche[by_niche]
    rank = torch.empty_like(by_niche)
    rank[by_niche] = torch.arange(len(niche)) - torch.searchsorted(grouped, grouped)
    return order[rank < per_niche][:n]


def _initial(
    space: SearchSpace,
    efficiency: PopulationFn,
    budget: torch.Tensor,
    n: int,
    max_tries: int,
    seen: _Seen,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Up to `n` distinct random feasible archs; if random draws rarely fit, the smallest feasible archs."""
    kept, values, evaluated, have = [], [], 0, 0
    for _ in range(10 * max_tries):
        candidates = space._canonical(space.sample(2 * n, generator))
        eff = efficiency(candidates)
        evaluated += len(candidates)
        ok = _feasible(eff, budget).nonzero().squeeze(1)
        # each candidate its own slot: every unseen feasible one is taken, up to n in all (the
        # surplus of the last batch stays marked seen: random archs, skipped later as repeats)
        taken = torch.tensor(seen.take(candidates, ok, torch.arange(len(candidates)), len(candidates)))
        taken = taken[: n - have].long()
        kept.append(candidates[taken])
        values.append(eff[taken])
        have += len(taken)
        if have >= n:
            break
    if have < n:  # bounded: the smallest archs that fit, instead of drawing forever
        sizes, archs = smallest(space, efficiency)
        archs = space._canonical(archs)
        ok = _feasible(sizes, budget).nonzero().squeeze(1)
        taken = torch.tensor(seen.take(archs, ok, torch.arange(len(archs)), len(archs))).long()
        kept.append(archs[taken])
        values.append(sizes[taken])
    return torch.cat(kept), torch.cat(values), evaluated


def _children(
    space: SearchSpace,
    rates: torch.Tensor,
    parents: torch.Tensor,
    efficiency: PopulationFn,
    budget: torch.Tensor,
    need: tuple[int, int],
    rate: list[float],
    max_tries: int,
    draws: int,
    seen: _Seen,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """New feasible mutants and crossover children; updates the running hit rate `rate[0]`.

    Each slot first picks its parent (or two distinct ones), then redraws its mutation
    (crossover): `reps` candidates per pending slot at once (enough that a slot fills with
    probability 1/2 at the running hit rate, at most `draws`), the first feasible unseen one kept,
    and only empty slots drawn again, at most `max_tries` rounds.
    """
    n_m, n_c = need
    n, p = n_m + n_c, len(parents)
    first = torch.randint(p, (n,), generator=generator)
    # crossover slot j >= n_m mates first[j] with second[j - n_m], another parent when there is one
    shift = torch.randint(max(1, p - 1), (n_c,), generator=generator)
    second = (first[n_m:] + 1 + shift) % p if p > 1 else first[n_m:]
    pending = torch.arange(n)
    kept, values, evaluated = [], [], 0
    for _ in range(max_tries):
        if not len(pending):
            break
        r = min(max(rate[0], 0.02), 0.99)
        reps = min(draws, math.ceil(math.log(0.5) / math.log1p(-r)))
        slots = pending.repeat_interleave(reps)
        split = int((slots < n_m).sum())  # slots are sorted: mutants first
        a = parents[first[slots]]
        candidates = torch.cat(
            [
                space._mutate(a[:split], generator, rates),
                space._crossover(a[split:], parents[second[slots[split:] - n_m]], generator),
            ]
        )
        candidates = space._canonical(candidates)
        eff = efficiency(candidates)
        evaluated += len(candidates)
        ok = _feasible(eff, budget).nonzero().squeeze(1)
        local = torch.arange(len(pending)).repeat_interleave(reps)
        taken = torch.tensor(seen.take(candidates, ok, local, len(pending)), dtype=torch.long)
        # the per-candidate hit rate that fills this share of slots with `reps` draws each
        filled_share = min(len(taken) / len(pending), 0.999)
        rate[0] = 0.7 * rate[0] + 0.3 * (1 - (1 - filled_share) ** (1 / reps))
        kept.append(candidates[taken])
        values.append(eff[taken])
        filled = torch.zeros(len(pending), dtype=torch.bool)
        filled[local[taken]] = True
        pending = pending[~filled]
    if not kept:
        return parents[:0], efficiency(parents[:0]), evaluated
    return torch.cat(kept), torch.cat(values), evaluated


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
