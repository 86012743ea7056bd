"""Issue #20 item 1: how well latency tables predict whole subnets, over backends, threads and batch sizes.

For each (backend, threads, batch) cell: build a table for the supernet's space here (or reuse the
one in --folder), then measure --n random extracted subnets end to end and compare (as `ofa latency
validate`). Cells are appended to --out as they finish, so a stopped grid resumes (cells measured
on another CPU are measured again). Run it on a quiet
machine: a second job on the same cores makes every timing wrong. `--recalibrate` refits the
table's calibration (`ofa latency calibrate`) between build and validate, as the CLI tells a user
to when validate finds that the machine has changed speed since the build; the row says so. Each cell
runs in a process of its own: onnxruntime's sessions of one process share one thread pool.

    .venv/bin/python bench/latency_grid.py --supernet ofa_mbv3_fashion_mnist --n 60
    .venv/bin/python bench/latency_grid.py --supernet ofa_resnet50 --resolutions 128 --backends torch --n 60
    .venv/bin/python bench/latency_grid.py --supernet ofa_resnet50 --resolutions 128 --recalibrate --again
    .venv/bin/python bench/latency_grid.py --markdown                     # the table of --out
    .venv/bin/python bench/latency_grid.py --markdown --latest            # each cell's latest row
    .venv/bin/python bench/latency_grid.py --markdown --summary           # each cell: runs, met, a row
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from onceforall.export import extract_subnet
from onceforall.registry import load_supernet
from onceforall.specialize.latency_build import build_latency_table, calibrate_latency_table
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.latency_validate import validate_latency_table
from onceforall.specialize.timing import device_name

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace) -> None:
    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else None
    net = load_supernet(args.supernet, resolutions=resolutions).net.eval()
    space = net.search_space()
    timing = (args.subnet_rounds, args.subnet_repeats)
    here = cpu({"device_name": device_name("cpu")})
    done = {  # cells measured on this CPU (another machine's rows say nothing about this one)
        (r["supernet"], tuple(r["resolutions"]), r["backend"], r["threads"], r["batch"], subnet_timing(r))
        for r in read(args.out)
        if cpu(r) == here
        and layer_timing(r) == LAYER_TIMING
        and calibration_fit(r) == CALIBRATION_FIT
        and r.get("recalibrated", False) == args.recalibrate
        and ort_pool(r) in ("-", ORT_POOL)
        and not args.again
    }
    cells = itertools.product(args.backends.split(","), args.threads, args.batches)
    for backend, threads, batch in cells:
        if (args.supernet, tuple(space.resolutions), backend, threads, batch, timing) in done:
            continue
        tag = "_recal" if args.recalibrate else ""  # a plain cell never validates a refitted table
        res = "-".join(map(str, space.resolutions))  # the space's name does not say its resolutions
        table_path = (
            args.folder
            / f"{space.name}_r{res}_{backend}_{threads}t_b{batch}_s{timing[0]}x{timing[1]}_spread{tag}.jsonl"
        )
        started = time.perf_counter()
        build_latency_table(
            space,
            table_path,
            backend=backend,
            threads=threads,
            batch_size=batch,
            subnet_rounds=timing[0],
            subnet_repeats=timing[1],
            progress=True,
        )
        built = time.perf_counter() - started
        table = LatencyTable.load(table_path)
        if args.recalibrate:
            calibrate_latency_table(table, space, progress=True)
        recalibrated = time.perf_counter() - started - built
        report = validate_latency_table(
            table, space, args.n, subnet_fn=lambda arch: extract_subnet(net, arch), progress=True
        )
        # the points beside the table (runs/, not kept), for a look at which subnets miss
        points = table_path.with_name(table_path.stem + "_points.json")
        points.write_text(json.dumps(report.to_dict(with_points=True)))
        row = {
            "supernet": args.supernet,
            "resolutions": list(space.resolutions),
            "backend": backend,
            "threads": threads,
            "batch": batch,
            "subnet_rounds": timing[0],
            "subnet_repeats": timing[1],
            "layers": len(table.layers),
            "device_name": table.meta.get("device_name"),  # sessions differ in CPU: the row says which
            "layer_timing": LAYER_TIMING,
            "calibration_fit": CALIBRATION_FIT,
            **({"onnxruntime_pool": ORT_POOL} if backend == "onnxruntime" else {}),
            "recalibrated": args.recalibrate,
            "build_s": round(built, 1),
            "recalibrate_s": round(recalibrated, 1),
            "validate_s": round(time.perf_counter() - started - built - recalibrated, 1),
            **report.to_dict(),
        }
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(
            f"{args.supernet} {backend} {threads}t b{batch}: {100 * row['within_10']:.0f} % within 10 %, "
            f"MAPE {row['mape']:.1f} %, Spearman {row['spearman']:.3f}, spread {row['spread']:.1f} %, "
            f"drift {row['drift']:+.1f} % (levelled: {100 * row['within_10_levelled']:.0f} % within 10 %)",
            flush=True,
        )


def read(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


# How the cell's table timed its layers. Rows before session 17: "by chunk" (each layer's rounds within
# its chunk of 64, the calibration after the layers); since: every item's rounds spread over the
# whole build, the calibration subnets timed among them.
LAYER_TIMING = "whole build"


# What the cell's calibration fitted. Rows before session 19's commit 206bafd: a Theil-Sen line
# (scale + overhead); since: scale + a cost per parameter + overhead.
CALIBRATION_FIT = "scale + weights"


# How the cell's onnxruntime sessions got their threads. Rows before session 22: a pool per session (with
# many sessions alive, 2-thread rounds often ran at 1-thread speed); since: one pool per process.
ORT_POOL = "one per process"


def ort_pool(row: dict) -> str:
    return row.get("onnxruntime_pool", "per session") if row["backend"] == "onnxruntime" else "-"


def calibration_fit(row: dict) -> str:
    return row.get("calibration_fit", "scale + overhead")


def layer_timing(row: dict) -> str:
    return row.get("layer_timing", "by chunk")


def subnet_timing(row: dict) -> tuple[int, int]:
    """How the row's subnets were timed (rounds, repeats); rows from before it was recorded: 5 x 20."""
    return row.get("subnet_rounds", 5), row.get("subnet_repeats", 20)


def cpu(row: dict) -> str:
    """The row's CPU, short: "Intel Xeon" for "Intel(R) Xeon(R) Processor"."""
    return row.get("device_name", "-").replace("(R)", "").replace(" Processor", "")


def latest(rows: list[dict]) -> list[dict]:
    """The last row of each cell (CPU, supernet, resolutions, backend, threads, batch), in grid order:
    each machine's grid as it stands, each cell by its latest schedule and fit. One grid per CPU, since
    a cell measured on one VM says little about another (sessions 14-16 and 21 ran on a noisier one)."""
    last: dict[tuple, dict] = {}
    for r in rows:
        last[(cpu(r), r["supernet"], tuple(r["resolutions"]), r["backend"], r["threads"], r["batch"])] = r
    return [last[k] for k in sorted(last, key=lambda k: (k[0], k[1], k[2], k[5], k[4], k[3] != "torch"))]


def meets_goal(row: dict) -> bool:
    """Issue #20's goal for one cell: >= 95 % of subnets within +-10 % and Spearman >= 0.95."""
    return row["within_10"] >= 0.95 and row["spearman"] >= 0.95


def markdown(rows: list[dict]) -> str:
    lines = [
        "| CPU | supernet | resolutions | backend | threads | batch | layers timed | subnets timed | calibration | layers | within ±10 % | MAPE | Spearman | max error | machine spread | drift | within ±10 % levelled | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = ",".join(map(str, r["resolutions"]))
        lines.append(
            f"| {cpu(r)} | `{r['supernet']}` | {res} | {r['backend']} | {r['threads']} | {r['batch']} | "
            f"{layer_timing(r)}{', one pool' if ort_pool(r) == ORT_POOL else ''} | "
            f"{'{} x {}'.format(*subnet_timing(r))} | {calibration_fit(r)}"
            + (", refit before validate" if r.get("recalibrated") else "")
            + f" | {r['layers']} | "
            f"**{100 * r['within_10']:.0f} %** | {r['mape']:.1f} % | {r['spearman']:.3f} | "
            f"{r['max_error']:.1f} % | {r['spread']:.1f} % | "
            + (f"{r['drift']:+.1f} % |" if "drift" in r else "- |")
            + (f" {100 * r['within_10_levelled']:.0f} % |" if "within_10_levelled" in r else " - |")
            + (" yes |" if meets_goal(r) else " no |")
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line per cell of the issue's grid (supernet, backend, threads, batch), over every machine and
    resolution: how many runs it had, how many met the goal, and the latest that met (else the latest)."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["supernet"], r["batch"], r["threads"], r["backend"] != "torch"), []).append(r)
    lines = [
        "| supernet | backend | threads | batch | runs | met | shown: CPU | resolutions | within ±10 % | MAPE | Spearman | machine spread | drift |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(cells):
        runs = cells[key]
        met = [r for r in runs if meets_goal(r)]
        r = (met or runs)[-1]
        lines.append(
            f"| `{r['supernet']}` | {r['backend']} | {r['threads']} | {r['batch']} | {len(runs)} | "
            f"**{len(met)}** | {cpu(r)} | {','.join(map(str, r['resolutions']))} | "
            f"{100 * r['within_10']:.0f} % | {r['mape']:.1f} % | {r['spearman']:.3f} | {r['spread']:.1f} % | "
            + (f"{r['drift']:+.1f} % |" if "drift" in r else "- |")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default="ofa_mbv3_fashion_mnist")
    parser.add_argument("--resolutions", default="", help="comma-separated (default: the supernet's)")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--n", type=int, default=60, help="random subnets measured per cell")
    parser.add_argument("--subnet-rounds", type=int, default=10, help="rounds per whole subnet")
    parser.add_argument("--subnet-repeats", type=int, default=50, help="timed runs per subnet round")
    parser.add_argument(
        "--recalibrate", action="store_true", help="refit the calibration between build and validate"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="measure cells that --out already holds (a table in --folder is still reused)",
    )
    parser.add_argument("--folder", type=Path, default=ROOT / "runs" / "latency_grid")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "latency_grid.jsonl")
    parser.add_argument("--markdown", action="store_true", help="print the table of --out")
    parser.add_argument("--latest", action="store_true", help="only each cell's latest row, in grid order")
    parser.add_argument("--cpu", default="", help="only rows whose CPU contains this, e.g. xeon")
    parser.add_argument(
        "--summary", action="store_true", help="with --markdown: one line per cell, over machines and runs"
    )
    args = parser.parse_args()
    cells = list(itertools.product(args.backends.split(","), args.threads, args.batches))
    if not args.markdown and len(cells) > 1:
        # one process per cell: onnxruntime sessions of a process share one thread pool of one size
        for backend, threads, batch in cells:
            cell = ["--backends", backend, "--threads", str(threads), "--batches", str(batch)]
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], *cell])
            if done.returncode:
                sys.exit(done.returncode)  # the cell's own error is above
    elif not args.markdown:
        args.folder.mkdir(parents=True, exist_ok=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run(args)
    rows = [r for r in read(args.out) if args.cpu.lower() in cpu(r).lower()]
    print(summary(rows) if args.summary else markdown(latest(rows) if args.latest else rows))


if __name__ == "__main__":
    main()
