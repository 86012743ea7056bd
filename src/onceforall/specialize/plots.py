"""Every figure the project draws: the specialization Pareto plot, latency validation and NSGA-II fronts.

Each figure has a `*_figure` function that builds it from plain data (what the tests inspect) and a
`plot_*` function that also writes it as a PNG, atomically. Figures use constrained layout and fit
their titles to the figure's width, so nothing runs off an edge whatever the names and devices are.
Predicted accuracies outside 0–100 % are extrapolations of the predictor: they are drawn at the
nearest bound and counted in the legend, never silently stretched or dropped.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from onceforall.io import is_png, refuse_foreign_file, write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from onceforall.arch import SearchSpace
    from onceforall.specialize.latency_validate import ValidationReport
    from onceforall.specialize.pipeline import Specialized
    from onceforall.specialize.search import ParetoResult

DPI = 120
RANDOM_SUBNETS = 2000

# objective name -> (axis label, factor to its unit)
OBJECTIVES = {
    "latency_ms": ("predicted latency (ms)", 1.0),
    "macs": ("MACs (M)", 1e-6),
    "params": ("params (M)", 1e-6),
}


class ParetoPlot(NamedTuple):
    """Where the Pareto plot went and how many predicted accuracies it clamped to 0–100 %."""

    path: Path
    clamped: int


# --------------------------------------------------------------------------- shared
def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, so no global state and nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render `fig` to PNG bytes, then write them atomically (a reader never sees half an image).

    An existing file at `path` is replaced only if it is a PNG image.
    """
    refuse_foreign_file(path, "PNG image", is_png)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=DPI)
    return write_bytes_atomic(image.getvalue(), path)


def clamp_percent(values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """`values` clamped to [0, 100], with how many were above 100 and below 0."""
    values = values.detach().double().cpu()
    return values.clamp(0.0, 100.0), int((values > 100).sum()), int((values < 0).sum())


def extrapolation_note(above: int, below: int = 0) -> str:
    """Legend / report text for clamped predictions; empty when nothing was clamped."""
    parts = [f"{above} predicted > 100 %: extrapolation, drawn at 100 %"] * bool(above)
    parts += [f"{below} predicted < 0 %: extrapolation, drawn at 0 %"] * bool(below)
    return "; ".join(parts)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) or line for line in text.split("\n"))


def fit_text(artist: Text, limit_px: float, sizes: Sequence[float] = (10, 9, 8), max_lines: int = 4) -> Text:
    """Wrap `artist`'s text, then shrink it, until it is at most `limit_px` wide.

    Wrapping comes first (a smaller font is harder to read than one more line); below the last size
    the text wraps as narrow as it must, however many lines that takes.
    """
    renderer = artist.get_figure().canvas.get_renderer()
    text = artist.get_text()
    longest = max(len(line) for line in text.split("\n"))
    for size in sizes:
        artist.set_fontsize(size)
        for width in range(longest, 7, -2):
            wrapped = _wrap(text, width)
            if wrapped.count("\n") >= max_lines and size != sizes[-1]:
                break
            artist.set_text(wrapped)
            if artist.get_window_extent(renderer).width <= limit_px:
                return artist
    return artist


def set_title(fig: Figure, title: str) -> Text | None:
    """The figure's title, wrapped or shrunk to fit its width (the old titles ran off the right edge)."""
    if not title:
        return None
    return fit_text(fig.suptitle(title), 0.96 * fig.bbox.width)


def _objective(name: str) -> tuple[str, float]:
    return OBJECTIVES.get(name, (name, 1.0))


# --------------------------------------------------------------------------- specialization
def pareto_figure(
    results: Sequence[Specialized],
    random_ms: torch.Tensor,
    random_top1: torch.Tensor,
    title: str = "",
) -> tuple[Figure, int]:
    """Random subnets' predictions with the chosen subnets predicted and measured; and the clamped count.

    `random_ms` and `random_top1` are the random subnets' predicted latency and predicted held-out
    top-1 (%). Each chosen subnet is a hollow marker at its prediction joined to a filled one at its
    measurement (measured latency, test top-1 after fine-tuning if there was one).
    """
    fig = new_figure(7.5, 6.2)
    ax = fig.add_subplot()
    random_ms = random_ms.detach().double().cpu()
    random_top1 = random_top1.detach().double().cpu()
    chosen_ms = torch.tensor([r.predicted_ms for r in results], dtype=torch.float64)
    chosen_top1 = torch.tensor([r.predicted_top1 for r in results], dtype=torch.float64)
    random_y, above, below = clamp_percent(random_top1)
    chosen_y, chosen_above, chosen_below = clamp_percent(chosen_top1)
    above, below = above + chosen_above, below + chosen_below
    tuned = any(r.finetuned_top1 is not None for r in results)
    measured_y = [r.top1 if r.finetuned_top1 is None else r.finetuned_top1 for r in results]

    ax.scatter(
        random_ms.numpy(),
        random_y.numpy(),
        s=4,
        alpha=0.3,
        color="C0",
        linewidths=0,
        label=f"{len(random_y)} random subnets: predicted held-out top-1 vs predicted latency",
    )
    for r, y_predicted, y_measured in zip(results, chosen_y.tolist(), measured_y):
        ax.plot([r.predicted_ms, r.measured_ms], [y_predicted, y_measured], color="C3", lw=0.8, alpha=0.7)
    ax.scatter(
        chosen_ms.numpy(),
        chosen_y.numpy(),
        s=40,
        facecolors="none",
        edgecolors="C3",
        linewidths=1.3,
        zorder=3,
        label="chosen: predicted held-out top-1 vs predicted latency",
    )
    ax.scatter(
        [r.measured_ms for r in results],
        measured_y,
        s=40,
        color="C3",
        zorder=3,
        label="chosen: measured test top-1 vs measured latency" + " (after fine-tuning)" * tuned,
    )
    if results:  # a legend entry for the joining lines, drawn once rather than once per subnet
        ax.plot([], [], color="C3", lw=0.8, label="one line per chosen subnet: predicted to measured")
    if above or below:
        random_out, chosen_out = random_y != random_top1, chosen_y != chosen_top1
        ax.scatter(
            torch.cat([random_ms[random_out], chosen_ms[chosen_out]]).numpy(),
            torch.cat([random_y[random_out], chosen_y[chosen_out]]).numpy(),
            marker="^",
            s=22,
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
            zorder=4,
            label=extrapolation_note(above, below),
        )
    _budget_lines(ax, sorted({r.budget_ms for r in results}))
    ax.set_xlabel("latency (ms): predicted or measured, see legend")
    ax.set_ylabel("top-1 (%): predicted held-out or measured test, see legend")
    ax.grid(alpha=0.25)
    fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    set_title(fig, title)
    return fig, above + below


def _budget_lines(ax: Axes, budgets: Sequence[float]) -> None:
    """A dotted line per budget, labelled "budget N ms" just above the axes.

    Inside the axes a label would cover data wherever it went: the chosen subnets sit at the top
    (the best predictions) and their measurements can fall below every random subnet. Rotated, two
    labels overlap only for budgets a few pixels apart.
    """
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for budget in budgets:
        ax.axvline(budget, color="grey", linestyle=":", linewidth=0.9)
        ax.text(
            budget,
            1.01,
            f"budget {budget:g} ms",
            transform=transform,
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.3",
            clip_on=False,
        )


def plot_pareto(
    results: Sequence[Specialized],
    space: SearchSpace,
    predict: Callable[[torch.Tensor], torch.Tensor],
    latency: Callable[[torch.Tensor], torch.Tensor],
    path: str | Path,
    seed: int = 0,
    *,
    title: str = "",
    n: int = RANDOM_SUBNETS,
) -> ParetoPlot:
    """`pareto_figure` of `n` random subnets of `space` (seeded), written to `path` as a PNG."""
    population = space.sample(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        random_ms, random_top1 = latency(population), 100 * predict(population)
    fig, clamped = pareto_figure(results, random_ms, random_top1, title=title)
    return ParetoPlot(save_png(fig, path), clamped)


# --------------------------------------------------------------------------- latency validation
def validation_figure(report: ValidationReport, title: str = "") -> Figure:
    """Measured against predicted latency of whole subnets, with y = x and the ±10 % band."""
    fig = new_figure(6, 6.4)
    ax = fig.add_subplot()
    values = report.measured_ms + report.predicted_ms
    lo, hi = min(values) * 0.9, max(values) * 1.1
    # the band is where `within_10` counts a subnet: |predicted - measured| <= 10 % of measured
    ax.fill_between(
        [lo, hi],
        [lo / 1.1, hi / 1.1],
        [lo / 0.9, hi / 0.9],
        color="0.88",
        label="±10 % band: |predicted − measured| ≤ 10 % of measured",
    )
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="y = x: measured = predicted")
    ax.scatter(
        report.predicted_ms, report.measured_ms, s=12, color="C0", zorder=3, label=f"{report.n} subnets"
    )
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="predicted latency (ms)", ylabel="measured latency (ms)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.25)
    # below the axes: badly predicted subnets land in the corners, where a legend inside would sit
    fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    summary = (
        f"{report.n} subnets: {100 * report.within_10:.0f} % within ±10 %, MAPE {report.mape:.1f} %\n"
        f"Spearman {report.spearman:.3f}, largest error {report.max_error:.1f} %"
    )
    if abs(report.drift) > 5:  # the CLI warns at the same size
        summary += (
            f"\nmachine {report.drift:+.1f} % since calibration; scaled by that: "
            f"{100 * report.within_10_levelled:.0f} % within ±10 %"
        )
    set_title(fig, f"{title}\n{summary}" if title else summary)
    return fig


def plot_validation(report: ValidationReport, path: str | Path, title: str = "") -> Path:
    """`validation_figure` written to `path` as a PNG."""
    return save_png(validation_figure(report, title), path)


# --------------------------------------------------------------------------- NSGA-II
def front_figure(result: ParetoResult, title: str | None = None) -> Figure:
    """Predicted accuracy against the first objective; a step line for one objective, points for more.

    With two or more objectives the front is not a curve in this plane (a subnet can lose on the
    first objective and win on the second), so joining its points would draw a meaningless zig-zag:
    they are points coloured by the second objective instead.
    """
    names = list(result.objectives)
    fig = new_figure(6.5, 5)
    ax = fig.add_subplot()
    top1, above, below = clamp_percent(100 * result.accuracy)
    x_label, x_scale = _objective(names[0])
    x = result.objectives[names[0]].detach().double().cpu() * x_scale
    n = len(top1)
    if len(names) == 1:
        order = torch.argsort(x)
        # post: from each subnet on, its accuracy is reachable until the next one's cost
        ax.step(
            x[order].numpy(),
            top1[order].numpy(),
            where="post",
            color="C0",
            lw=1,
            label=f"front: best predicted top-1 at this {x_label.split(' (')[0]} or less",
        )
        ax.scatter(x.numpy(), top1.numpy(), s=14, color="C0", zorder=3, label=f"{n} non-dominated subnets")
    else:
        c_label, c_scale = _objective(names[1])
        colour = result.objectives[names[1]].detach().double().cpu() * c_scale
        points = ax.scatter(
            x.numpy(),
            top1.numpy(),
            c=colour.numpy(),
            cmap="viridis",
            s=16,
            label=f"{n} non-dominated subnets",
        )
        fig.colorbar(points, ax=ax, label=c_label)
        if len(names) > 2:
            hidden = ", ".join(_objective(k)[0] for k in names[2:])
            ax.plot([], [], " ", label=f"also minimised, not drawn: {hidden}")
    if above or below:
        ax.plot([], [], " ", label=extrapolation_note(above, below))
    ax.set(xlabel=x_label, ylabel="predicted top-1 (%)")
    ax.grid(alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    if title is None:
        title = f"{result.space.name}: NSGA-II front of {n} subnets\nhypervolume {result.hypervolume:.4g}"
    set_title(fig, title)
    return fig


def plot_front(result: ParetoResult, path: str | Path, title: str | None = None) -> Path:
    """`front_figure` written to `path` as a PNG."""
    return save_png(front_figure(result, title), path)
