"""Issue #20: when a table misses a subnet, is it the subnet (the model) or the moment it was timed?

Loads a built table and times --n random extracted subnets (the ones `ofa latency validate
--seed 1` draws) three times each, as separate items of one interleaved schedule like validate's:
copies A and B next to each other (the same second of every round), copy C far from them (later
in the same round, 60-120 subnets on at --n 60). Each copy is prepared on its own (extracted, and
for onnxruntime exported and opened in a session of its own). Prints how far the copies disagree
(sd of log ratio) and how much the table's error on one copy repeats on another (correlation of
log(measured / predicted)). An error that belongs to the subnet repeats on every copy; one that
belongs to the moment repeats on A and B only.

    .venv/bin/python bench/copies_probe.py runs/latency_grid/ofa_mbv3_d234_e346_k357_w1.0_r160_onnxruntime_2t_b1_s10x20_spread_recal.jsonl \\
        --supernet ofa_mbv3_d234_e346_k357_w1.0 --resolutions 160 --n 60
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from onceforall.export import extract_subnet
from onceforall.registry import load_supernet
from onceforall.specialize.latency_build import _measure_subnets, table_measurer
from onceforall.specialize.latency_table import LatencyTable, subnet_specs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", type=Path)
    parser.add_argument("--supernet", required=True)
    parser.add_argument("--resolutions", default="", help="comma-separated, as the table was built")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1, help="validate's default draws the same subnets")
    args = parser.parse_args()

    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    net = load_supernet(args.supernet, resolutions=resolutions).net.eval()
    space = net.search_space()
    table = LatencyTable.load(args.table)
    population = space.sample(args.n, torch.Generator().manual_seed(args.seed))
    predicted = np.array(table.model(space)(population).tolist())
    subnets = [
        ((lambda a=a: extract_subnet(net, a)), chain)
        for a, chain in zip(space.decode(population), subnet_specs(space, population))
    ]
    # A and B side by side, then every C: each C is timed later in the round than its A and B
    items = [s for s in subnets for _ in range(2)] + subnets
    started = time.perf_counter()
    timed = _measure_subnets(table, items, table_measurer(table), True, "timing copies", chunk=len(items))
    a, b, c = (
        np.array(timed[0 : 2 * args.n : 2]),
        np.array(timed[1 : 2 * args.n : 2]),
        np.array(timed[2 * args.n :]),
    )
    print(
        f"{args.n} subnets x 3 copies in {time.perf_counter() - started:.0f} s; sd of log latency {np.log(a).std():.3f}"
    )
    errors = {name: np.log(m / predicted) for name, m in (("A", a), ("B", b), ("C", c))}
    for x, y, where in (("A", "B", "side by side"), ("A", "C", "apart"), ("B", "C", "apart")):
        disagree = (errors[x] - errors[y]).std()
        repeat = np.corrcoef(errors[x], errors[y])[0, 1]
        print(
            f"{x} vs {y} ({where}): sd of log ratio {disagree:.4f}, the table's error repeats r = {repeat:+.2f}"
        )
    for name, m in (("A", a), ("B", b), ("C", c), ("median of 3", np.median(np.stack([a, b, c]), 0))):
        within = np.mean(np.abs(predicted / m - 1) <= 0.10)
        rho = spearmanr(predicted, m).statistic
        print(
            f"{name:12s} error sd {np.log(m / predicted).std():.4f}, {100 * within:.0f} % within 10 %, Spearman {rho:.3f}"
        )


if __name__ == "__main__":
    main()
