"""Issue #20: the calibration fit, old against new, on the same measurements.

For each latency table (built by bench/latency_grid.py, beside its `_points.json`: the validated
subnets measured end to end), refit the calibration on the table's own 12 calibration subnets two
ways and score both on the validated subnets: the session-18 fit (Theil-Sen line through layer sum
and measured: scale + overhead) and the library's (`_fit_calibration_terms`: scale + a cost per
parameter for the weights a network streams from memory + overhead, robust on relative errors).
Nothing is timed, so it runs beside anything. "levelled": the predictions scaled by the table's
drift at validation (see `ofa latency validate`). A table without points is scored
leave-one-out on its calibration subnets (each predicted by a fit on the other 11).

    .venv/bin/python bench/calibration_refit.py --supernet ofa_resnet50 --resolutions 128 runs/latency_grid/ofa_resnet50_*_spread.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import theilslopes

from onceforall.arch import Arch, SearchSpace
from onceforall.cost import count_params
from onceforall.registry import load_supernet
from onceforall.specialize.latency_build import _fit_calibration_terms
from onceforall.specialize.latency_table import LatencyTable, subnet_specs


def score(predicted: np.ndarray, measured: np.ndarray) -> str:
    errors = np.abs(predicted - measured) / measured
    return f"{100 * np.mean(errors <= 0.10):3.0f} % within 10 %, MAPE {100 * errors.mean():4.1f} %"


def features(table: LatencyTable, space: SearchSpace, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
    """Each subnet's layer sum (ms) and parameters (millions)."""
    population = space.encode(archs)
    sums = [table.layer_sum(chain) for chain in subnet_specs(space, population)]
    return np.array(sums), count_params(space, population).double().numpy() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", required=True)
    parser.add_argument("--resolutions", default="", help="comma-separated (default: the supernet's)")
    parser.add_argument("tables", type=Path, nargs="+")
    args = parser.parse_args()
    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    space = load_supernet(args.supernet, resolutions=resolutions).net.search_space()
    for path in args.tables:
        table = LatencyTable.load(path)
        points = path.with_name(path.stem + "_points.json")
        calibrated = table.calibration.subnets
        cx, cp = features(table, space, [Arch.from_dict(c["arch"]) for c in calibrated])
        cy = np.array([c["measured_ms"] for c in calibrated])
        if not points.is_file():  # a cell from before the grid wrote points: leave-one-out on the 12
            old, new = np.empty_like(cy), np.empty_like(cy)
            for i in range(len(cy)):
                keep = np.arange(len(cy)) != i
                slope, offset = theilslopes(cy[keep], cx[keep])[:2]
                old[i] = slope * cx[i] + offset
                w = _fit_calibration_terms(cx[keep].tolist(), cp[keep].tolist(), cy[keep].tolist())
                new[i] = w[0] * cx[i] + w[1] * cp[i] + w[2]
            print(
                f"{path.name}: leave-one-out, scale + overhead {score(old, cy)} | + weights {score(new, cy)}"
            )
            continue
        report = json.loads(points.read_text())
        vx, vp = features(table, space, [Arch.from_dict(a) for a in report["archs"]])
        vy, level = np.array(report["measured_ms"]), 1 + report["drift"] / 100
        slope, offset = theilslopes(cy, cx)[:2]
        old = slope * vx + offset
        scale, per_mparam, overhead = _fit_calibration_terms(cx.tolist(), cp.tolist(), cy.tolist())
        new = scale * vx + per_mparam * vp + overhead
        print(
            f"{path.name}: scale + overhead {score(old, vy)} (levelled {score(level * old, vy)}) | "
            f"+ weights ({per_mparam:.3f} ms/M) {score(new, vy)} (levelled {score(level * new, vy)})"
        )


if __name__ == "__main__":
    main()
