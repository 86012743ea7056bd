"""Issue #20: is `validate`'s drift the machine changing speed, or the context a subnet is timed in?

A build times its calibration subnets after stretches of layer timings; `validate` times them
again among whole subnets. This loads a built table and, in one process, alternates the two
contexts: A, every distinct layer once, then the calibration subnets back to back (twice); B, the
calibration subnets among --n random extracted subnets, round by round (twice). Each cycle prints
the calibration subnets' median now / at calibration - 1 in both. A context effect shows as A and
B apart by the same amount every cycle; the machine's change of speed, as both moving together.
Both contexts take the fastest of two rounds where the build took the fastest of its ten, so both
read a little slower than the table: compare A with B, and cycles with each other.

    .venv/bin/python bench/drift_probe.py runs/latency_grid/ofa_mbv3_d234_e346_k357_w1.0_torch_2t_b8_s10x5_spread.jsonl \\
        --supernet ofa_mbv3_d234_e346_k357_w1.0 --resolutions 160 --cycles 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from onceforall.arch import Arch
from onceforall.cost import distinct_specs
from onceforall.export import extract_subnet
from onceforall.registry import load_supernet
from onceforall.specialize.latency_build import _subnet_shape, layer_measurer, table_measurer
from onceforall.specialize.latency_table import LatencyTable, SpecChain, subnet_specs
from onceforall.specialize.timing import Timing, summarize


def change(table: LatencyTable, timings: list[list[Timing]]) -> float:
    """Median over the calibration subnets of now / at calibration - 1, in %."""
    then = [c["measured_ms"] for c in table.calibration.subnets]
    return 100 * (statistics.median(summarize(t, table.statistic) / m for t, m in zip(timings, then)) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--supernet", required=True)
    parser.add_argument("--resolutions", default="", help="comma-separated (default: the supernet's)")
    parser.add_argument("--n", type=int, default=60, help="extracted subnets in context B")
    parser.add_argument("--cycles", type=int, default=4)
    args = parser.parse_args()
    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    table = LatencyTable.load(args.table)
    if table.calibration is None:
        raise SystemExit(
            f"{args.table} has no calibration: build it unsharded, or run `ofa latency calibrate`"
        )
    net = load_supernet(args.supernet, resolutions=resolutions).net.eval()
    space, batch = net.search_space(), table.meta["batch_size"]
    archs = [Arch.from_dict(c["arch"]) for c in table.calibration.subnets]
    subnet_measure, layer_measure = table_measurer(table), layer_measurer(table)
    calibration = [
        subnet_measure(SpecChain(c), _subnet_shape(c, batch))
        for c in subnet_specs(space, space.encode(archs))
    ]
    layers = [layer_measure(s.build(), s.input_shape(batch)) for s in distinct_specs(space)]
    others = [
        subnet_measure(extract_subnet(net, a), (batch, net.in_channels, a.image_size, a.image_size))
        for a in space.decode(space.sample(args.n, torch.Generator().manual_seed(0)))
    ]
    every = max(1, len(others) // len(calibration))  # one calibration subnet after every `every` others
    started = time.perf_counter()
    for _ in range(args.cycles):
        after_layers: list[list[Timing]] = [[] for _ in calibration]
        among_subnets: list[list[Timing]] = [[] for _ in calibration]
        for _ in range(2):
            for timer in layers:
                timer()
            for k, timer in enumerate(calibration):
                after_layers[k].append(timer())
        for _ in range(2):
            pending: list[tuple[int, Callable[[], Timing]]] = list(enumerate(calibration))
            for j, timer in enumerate(others):
                timer()
                if (j + 1) % every == 0 and pending:
                    k, cal = pending.pop(0)
                    among_subnets[k].append(cal())
            for k, cal in pending:  # fewer others than calibration subnets x every
                among_subnets[k].append(cal())
        print(
            f"{time.perf_counter() - started:6.0f} s  A (after layers) {change(table, after_layers):+5.1f} %"
            f"   B (among subnets) {change(table, among_subnets):+5.1f} %",
            flush=True,
        )


if __name__ == "__main__":
    main()
