"""Search convergence and speed: ours against the official `EvolutionFinder`, and NSGA-II against a long run.

Both evolutions search OFA-MobileNetV3 w1.0 (K 3/5/7, E 3/4/6, D 2/3/4) at resolutions 160-224
step 16 under the same MACs budget with the same accuracy predictor: one MLP in our format
(fitted for a few seconds on a synthetic accuracy function so that bigger subnets score higher
and the budget binds), loaded unchanged into the official `AccuracyPredictor` (same module
names). The official finder gets the official MACs model (`Mbv3FLOPsModel` on the official
supernet); ours the layer-table MACs model. Predictors and MACs models are checked to agree first.
Everything runs on one torch thread.

1. Reference: the best of `--long-seeds` long searches of ours (`--long-generations`, seeds 100+).
2. Per seed, side by side: our search (population 100, `--generations`) then the official one
   with the same settings; time and best predicted accuracy of each, their ratio and difference,
   and each one's gap to the reference.
3. NSGA-II (accuracy x MACs): hypervolume of a normal run against a long run of the same seed.

    .venv/bin/python bench/search_speed.py [--budget 300] [--generations 500] [--seeds 10]
        [--our-generations 200] [--official-seeds 3] [--long-seeds 10] [--long-generations 5000] [--skip-official] [--skip-nsga2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from onceforall import Arch, OFAMobileNetV3
from onceforall.specialize import LayerTable, count_macs
from onceforall.specialize.predictor import AccuracyPredictor, fit_predictor
from onceforall.specialize.search import evolution_search, nsga2_search
from onceforall.specialize.timing import torch_threads

LISTS = dict(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
RESOLUTIONS = (160, 176, 192, 208, 224)


def synthetic_accuracy(space, population: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A smooth, saturating function of MACs plus fixed per-choice effects (a stand-in for real data)."""
    g = torch.Generator().manual_seed(seed)
    effects = 0.004 * torch.randn(space.onehot_dim, generator=g)
    macs = count_macs(space, population) / 1e6
    return 0.80 - 0.18 * torch.exp(-macs / 250) + space.onehot(population) @ effects


def make_predictor(space, seed: int = 0) -> AccuracyPredictor:
    population = space.sample(3000, torch.Generator().manual_seed(seed))
    predictor, metrics = fit_predictor(space, population, synthetic_accuracy(space, population), epochs=30)
    print(
        f"predictor fitted on 3000 synthetic subnets: held-out RMSE {100 * metrics.rmse:.2f} pts, "
        f"Kendall tau {metrics.kendall_tau:.3f} ({metrics.seconds:.1f} s)"
    )
    return predictor


class _Bar:
    """Stands in for tqdm (the official finder's progress bar) where tqdm is not installed."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix(self, *args, **kwargs):
        pass

    def update(self, *args):
        pass


def official(space, predictor: AccuracyPredictor):
    import importlib.util
    import types

    if importlib.util.find_spec("tqdm") is None:
        sys.modules["tqdm"] = types.SimpleNamespace(tqdm=_Bar)
    import ofa_reference

    networks = ofa_reference.import_ofa("ofa.imagenet_classification.elastic_nn.networks")
    nas_acc = ofa_reference.import_ofa("ofa.nas.accuracy_predictor")
    nas_eff = ofa_reference.import_ofa("ofa.nas.efficiency_predictor")
    nas_search = ofa_reference.import_ofa("ofa.nas.search_algorithm")
    supernet = networks.OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=1.0, **LISTS)
    encoder = nas_acc.MobileNetArchEncoder(
        image_size_list=list(RESOLUTIONS),
        ks_list=LISTS["ks_list"],
        expand_list=LISTS["expand_ratio_list"],
        depth_list=LISTS["depth_list"],
    )
    their_predictor = nas_acc.AccuracyPredictor(encoder, device="cpu")
    their_predictor.load_state_dict(predictor.state_dict())
    their_predictor.eval()
    efficiency = nas_eff.Mbv3FLOPsModel(supernet)
    # The same functions on both sides: check predictions and MACs on random archs.
    archs = space.decode(space.sample(20, torch.Generator().manual_seed(1)))
    dicts = [{**a.subnet_kwargs(), "image_size": a.image_size} for a in archs]
    with torch.no_grad():
        theirs = their_predictor.predict_acc(dicts)
    diff = (theirs - predictor.predict(space, archs)).abs().max().item()
    macs_theirs = torch.tensor([efficiency.get_efficiency(d) for d in dicts], dtype=torch.float64)
    macs_diff = (macs_theirs - count_macs(space, archs) / 1e6).abs().max().item()
    print(f"parity: accuracy predictors max diff {diff:.1e}, MACs models max diff {macs_diff:.1e} M")
    assert diff < 1e-5 and macs_diff < 1e-6
    return nas_search.EvolutionFinder(efficiency, their_predictor)


def run_official(finder, space, predictor: AccuracyPredictor, budget: float, generations: int, seed: int):
    """One official search, seeded as the official code draws (Python `random` and NumPy)."""
    random.seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    with torch_threads(1), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        _, (acc, arch_dict, efficiency) = finder.run_evolution_search(
            budget, verbose=False, max_time_budget=generations
        )
    seconds = time.perf_counter() - start
    check = predictor.predict(space, [Arch.from_dict(arch_dict, space=space.name)]).item()
    assert abs(check - acc) < 1e-5, (check, acc)  # the same predictor scores its arch the same
    return seconds, acc, efficiency


def spread(values: list[float]) -> str:
    return f"{100 * min(values):.3f}-{100 * max(values):.3f} % (spread {100 * (max(values) - min(values)):.3f} pts)"


def summary(args: argparse.Namespace, reference: float, ours: list, theirs: list) -> None:
    print(
        f"\nours {args.our_generations} generations, official {args.generations}, population 100, "
        f"budget {args.budget:g} MMACs, "
        f"{len(RESOLUTIONS)} resolutions, 1 torch thread"
    )
    times = [t for t, _ in ours]
    accs = [a for _, a in ours]
    print(
        f"ours, {len(ours)} seeds: median {statistics.median(times):.2f} s (max {max(times):.2f}), "
        f"best {spread(accs)}, worst gap to the reference {100 * (reference - min(accs)):.3f} pts"
    )
    if theirs:
        t_times = [t for t, _ in theirs]
        t_accs = [a for _, a in theirs]
        ratios = [t / o for (t, _), (o, _) in zip(theirs, ours)]
        diffs = [o - t for (_, t), (_, o) in zip(theirs, ours)]
        print(
            f"official, {len(theirs)} seeds: median {statistics.median(t_times):.2f} s, best {spread(t_accs)}, "
            f"worst gap {100 * (reference - min(t_accs)):.3f} pts"
        )
        print(
            f"speed-up per seed: {', '.join(f'{r:.0f}x' for r in ratios)} (goal >= 100x); "
            f"ours - official per seed: {', '.join(f'{100 * d:+.3f}' for d in diffs)} pts (goal >= 0)"
        )
    print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=300, help="max MACs in millions")
    parser.add_argument("--generations", type=int, default=500, help="the official finder's generations")
    parser.add_argument(
        "--our-generations", type=int, default=None, help="ours (default: --generations; 200 converge here)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="normal searches of ours (seeds 0..n-1)")
    parser.add_argument(
        "--official-seeds", type=int, default=3, help="of those, how many also run officially (a minute each)"
    )
    parser.add_argument("--long-seeds", type=int, default=10, help="long searches for the reference")
    parser.add_argument("--long-generations", type=int, default=5000)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--skip-nsga2", action="store_true")
    parser.add_argument("--nsga2-seeds", type=int, default=3)
    parser.add_argument("--nsga2-generations", type=int, default=100)
    parser.add_argument("--nsga2-long-generations", type=int, default=1000)
    args = parser.parse_args()
    if args.our_generations is None:
        args.our_generations = args.generations
    torch.manual_seed(0)
    net = OFAMobileNetV3(n_classes=1000, dropout_rate=0, resolutions=RESOLUTIONS, **LISTS)
    space = net.search_space()
    predictor = make_predictor(space).eval()
    accuracy = predictor.bind(space)
    macs = LayerTable(space, lambda spec: spec.macs / 1e6)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"load average at start: {load}")

    long_best = []
    for seed in range(100, 100 + args.long_seeds):
        result = evolution_search(
            space, accuracy, macs, args.budget, generations=args.long_generations, seed=seed
        )
        long_best.append(result.best_accuracy)
        print(
            f"long   seed {seed}: {result.seconds:6.2f} s  best {100 * result.best_accuracy:.3f} %  "
            f"{result.best_efficiency:.1f} MMACs at {result.best_arch.image_size} px"
        )
    reference = max(long_best) if long_best else math.nan
    if long_best:
        print(
            f"reference: best of {len(long_best)} searches of {args.long_generations} generations {100 * reference:.3f} %"
        )

    finder = None if args.skip_official else official(space, predictor)
    ours, theirs = [], []
    for seed in range(args.seeds):
        result = evolution_search(
            space, accuracy, macs, args.budget, generations=args.our_generations, seed=seed
        )
        ours.append((result.seconds, result.best_accuracy))
        line = (
            f"seed {seed}: ours {result.seconds:5.2f} s {100 * result.best_accuracy:.3f} % "
            f"({result.best_efficiency:.1f} MMACs, {result.best_arch.image_size} px, "
            f"{result.evaluated} candidates, gap {100 * (reference - result.best_accuracy):.3f} pts)"
        )
        if finder is not None and seed < args.official_seeds:
            seconds, acc, eff = run_official(finder, space, predictor, args.budget, args.generations, seed)
            theirs.append((seconds, acc))
            line += (
                f" | official {seconds:6.2f} s {100 * acc:.3f} % ({eff:.1f} MMACs, gap "
                f"{100 * (reference - acc):.3f} pts) | speed-up {seconds / result.seconds:.0f}x, "
                f"ours - official {100 * (result.best_accuracy - acc):+.3f} pts"
            )
        print(line, flush=True)

    if ours:
        summary(args, reference, ours, theirs)

    if args.skip_nsga2:
        return
    print(
        f"\nNSGA-II, accuracy x MACs, population 100: {args.nsga2_generations} vs {args.nsga2_long_generations} generations"
    )
    for seed in range(args.nsga2_seeds):
        normal = nsga2_search(space, accuracy, {"macs": macs}, 100, args.nsga2_generations, seed=seed)
        long = nsga2_search(space, accuracy, {"macs": macs}, 100, args.nsga2_long_generations, seed=seed)
        print(
            f"seed {seed}: {args.nsga2_generations} generations {normal.seconds:5.2f} s HV {normal.hypervolume:.4f} "
            f"({len(normal.population)} on the front) | {args.nsga2_long_generations} generations "
            f"{long.seconds:6.2f} s HV {long.hypervolume:.4f} | ratio {normal.hypervolume / long.hypervolume:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
