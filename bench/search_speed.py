"""Constrained evolutionary search: ours (populations as tensors) vs the official `EvolutionFinder`.

Both search OFA-MobileNetV3 w1.0 (K 3/5/7, E 3/4/6, D 2/3/4) at resolutions 160-224 step 16
under the same MACs budget with the same accuracy predictor: one MLP in our format (fitted for a
few seconds on a synthetic accuracy function so that bigger subnets score higher and the budget
binds), loaded unchanged into the official `AccuracyPredictor` (same module names). The official
finder gets the official MACs model (`Mbv3FLOPsModel` on the official supernet); ours gets the
layer-table MACs model. Both predictors and both MACs models are checked to agree first. Both run
with one torch thread. Prints time and best predicted accuracy of each, and the speed-up.

    .venv/bin/python bench/search_speed.py [--budget 300] [--generations 500] [--seeds 10] [--official-seeds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
from onceforall.specialize.latency import torch_threads
from onceforall.specialize.predictor import AccuracyPredictor, fit_predictor
from onceforall.specialize.search import evolution_search

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=300, help="max MACs in millions")
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=10, help="runs of our search (seeds 0..n-1)")
    parser.add_argument(
        "--official-seeds", type=int, default=3, help="runs of the official search (minutes each)"
    )
    parser.add_argument("--skip-official", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = OFAMobileNetV3(n_classes=1000, dropout_rate=0, resolutions=RESOLUTIONS, **LISTS)
    space = net.search_space()
    predictor = make_predictor(space).eval()
    macs = LayerTable(space, lambda spec: spec.macs / 1e6)

    rows = []
    ours = []
    for seed in range(args.seeds):
        result = evolution_search(
            space, predictor.bind(space), macs, args.budget, generations=args.generations, seed=seed
        )
        ours.append(result)
        print(
            f"ours   seed {seed}: {result.seconds:6.2f} s  best {100 * result.best_accuracy:.3f} %  "
            f"{result.best_efficiency:.1f} MMACs  ({result.evaluated} candidates)"
        )
    ours_time = statistics.median(r.seconds for r in ours)
    ours_acc = [r.best_accuracy for r in ours]
    rows.append(("ours (median over seeds)", ours_time, statistics.median(ours_acc), min(ours_acc)))

    if not args.skip_official:
        finder = official(space, predictor)
        runs = []
        for seed in range(args.official_seeds):
            random.seed(seed)
            np.random.seed(seed)
            start = time.perf_counter()
            with torch_threads(1), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                _, (acc, arch_dict, efficiency) = finder.run_evolution_search(
                    args.budget, verbose=False, max_time_budget=args.generations
                )
            seconds = time.perf_counter() - start
            check = predictor.predict(space, [Arch.from_dict(arch_dict, space=space.name)]).item()
            print(
                f"official seed {seed}: {seconds:6.2f} s  best {100 * acc:.3f} %  {efficiency:.1f} MMACs "
                f"(our predictor on its arch: {100 * check:.3f} %)"
            )
            runs.append((seconds, acc))
        accs = [a for _, a in runs]
        times = [t for t, _ in runs]
        rows.append(
            ("official (median over seeds)", statistics.median(times), statistics.median(accs), min(accs))
        )

    print(
        f"\n{args.generations} generations, population 100, budget {args.budget:g} MMACs, "
        f"{len(RESOLUTIONS)} resolutions, 1 torch thread"
    )
    print(f"{'search':28s} {'time (s)':>9s} {'best acc (%)':>13s} {'worst seed (%)':>15s}")
    for name, seconds, acc, worst in rows:
        print(f"{name:28s} {seconds:9.2f} {100 * acc:13.3f} {100 * worst:15.3f}")
    if len(rows) == 2:
        print(
            f"speed-up: {rows[1][1] / rows[0][1]:.0f}x; best accuracy ours - official: "
            f"{100 * (rows[0][2] - rows[1][2]):+.3f} pts (medians over seeds), "
            f"{100 * (rows[0][3] - rows[1][3]):+.3f} pts (worst seeds)"
        )


if __name__ == "__main__":
    main()
