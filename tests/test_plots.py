"""The figures say what they show: labelled sets, budgets and bands, clamped extrapolations, nothing off the edge."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.text import Text

from onceforall.specialize import plots
from onceforall.specialize.latency_table import LatencyTable
from onceforall.specialize.latency_validate import ValidationReport, _title
from onceforall.specialize.pipeline import Specialized, report
from onceforall.specialize.search import ParetoResult

SPACE = "ofa_mbv3_d234_e346_k357_w0.75_in1_s122211"
LONG_DEVICE = "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (Sapphire Rapids, 4th generation)"
PNG = b"\x89PNG\r\n\x1a\n"


def chosen(
    budget: float, predicted_ms: float, measured_ms: float, predicted: float, top1: float
) -> Specialized:
    return Specialized(
        budget_ms=budget,
        arch={"image_size": 28},
        predicted_ms=predicted_ms,
        measured_ms=measured_ms,
        predicted_top1=predicted,
        top1=top1,
        macs=12_500_000,
        params=1_760_000,
        files=[],
    )


def demo_results() -> list[Specialized]:
    """Three budgets as `ofa demo` makes them on the shipped supernet (values from a real run's scale)."""
    return [
        chosen(4.0, 3.93, 4.21, 93.76, 92.86),
        chosen(5.0, 4.95, 5.02, 94.25, 93.41),
        chosen(6.0, 5.81, 6.35, 94.29, 93.25),
    ]


def random_subnets(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ms = 2.5 + 5 * torch.rand(n, generator=g, dtype=torch.float64)
    top1 = 90.5 + 0.3 * ms + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    return ms, top1


def table_meta(device_name: str = LONG_DEVICE) -> LatencyTable:
    return LatencyTable(
        meta={"space": SPACE, "backend": "torch", "device_name": device_name, "threads": 1, "batch_size": 1}
    )


def visible_texts(fig) -> list[Text]:
    """Every text a draw renders: tick labels of ticks beyond the axis limits are kept, not drawn."""
    fig.canvas.draw()
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 * abs(hi - lo) <= tick.get_loc() <= hi + 1e-9 * abs(hi - lo):
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def outside(fig) -> list[str]:
    """Texts whose rendered extent leaves the figure (after the constrained layout of a draw)."""
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    off = []
    for t in visible_texts(fig):
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 0.5 or e.y0 < box.y0 - 0.5 or e.x1 > box.x1 + 0.5 or e.y1 > box.y1 + 0.5:
            off.append(t.get_text())
    return off


def overlapping(fig, texts: list[Text]) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text().strip()]
    return [(a, b) for (a, ea), (b, eb) in itertools.combinations(boxes, 2) if ea.overlaps(eb)]


def labelled(fig) -> list[Text]:
    """The texts a reader reads, other than tick labels: titles, axis labels, annotations, legends."""
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.texts]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for legend in fig.legends:
        texts += legend.get_texts()
    return texts


def legend_labels(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


# --------------------------------------------------------------------------- the check itself
def test_the_inside_check_catches_a_title_off_the_edge():
    fig = plots.new_figure(5.5, 5)
    fig.add_subplot()
    fig.suptitle(_title(table_meta()).replace("\n", ": "), fontsize=10)  # the old one-line title
    assert outside(fig)


# --------------------------------------------------------------------------- pareto
def test_pareto_labels_both_accuracies_the_budgets_and_the_supernet():
    results = demo_results()
    fig, clamped = plots.pareto_figure(results, *random_subnets(), title=SPACE)

    assert outside(fig) == [] and overlapping(fig, labelled(fig)) == []
    assert clamped == 0
    labels = legend_labels(fig)
    assert "2000 random subnets: predicted held-out top-1 vs predicted latency" in labels
    assert "chosen: predicted held-out top-1 vs predicted latency" in labels
    assert "chosen: measured test top-1 vs measured latency" in labels
    assert not any("extrapolation" in label for label in labels)
    (ax,) = fig.axes
    assert sorted(t.get_text() for t in ax.texts) == ["budget 4 ms", "budget 5 ms", "budget 6 ms"]
    assert fig._suptitle.get_text() == SPACE
    # each chosen subnet: a line from its prediction to its measurement
    joins = [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    assert sorted((tuple(j.get_xdata()), tuple(j.get_ydata())) for j in joins) == sorted(
        ((r.predicted_ms, r.measured_ms), (r.predicted_top1, r.top1)) for r in results
    )
    predicted, measured = (c for c in ax.collections if c.get_label().startswith("chosen"))
    assert predicted.get_facecolor().size == 0 or predicted.get_facecolor()[0, 3] == 0  # hollow
    assert measured.get_facecolor()[0, 3] == 1  # filled
    assert measured.get_offsets().tolist() == [[r.measured_ms, r.top1] for r in results]


def test_pareto_with_fine_tuning_plots_the_fine_tuned_accuracy():
    results = demo_results()
    results[1].finetuned_top1 = 93.9
    fig, _ = plots.pareto_figure(results, *random_subnets())
    measured = next(c for c in fig.axes[0].collections if c.get_label().startswith("chosen: measured"))
    assert "(after fine-tuning)" in measured.get_label()
    assert measured.get_offsets()[1].tolist() == [5.02, 93.9]


def test_pareto_clamps_extrapolated_predictions_and_counts_them():
    ms, top1 = random_subnets()
    top1[:5] = torch.tensor([100.4, 101.0, 100.01, 103.2, 100.9], dtype=torch.float64)
    results = demo_results()
    results[2].predicted_top1 = 100.6
    fig, clamped = plots.pareto_figure(results, ms, top1, title=SPACE)

    assert clamped == 6
    assert "6 predicted > 100 %: extrapolation, drawn at 100 %" in legend_labels(fig)
    ax = fig.axes[0]
    assert all(c.get_offsets()[:, 1].max() <= 100 for c in ax.collections)
    flagged = next(c for c in ax.collections if "extrapolation" in c.get_label())
    assert len(flagged.get_offsets()) == 6 and set(flagged.get_offsets()[:, 1].tolist()) == {100.0}
    assert outside(fig) == []


def test_plot_pareto_samples_the_space_and_writes_a_png(tmp_path: Path):
    space = SimpleNamespace(sample=lambda n, g: torch.rand(n, 2, generator=g))
    latency = lambda population: 2 + 6 * population[:, 0]  # noqa: E731
    predict = lambda population: 0.9 + 0.11 * population[:, 1]  # above 1 for a tenth of them # noqa: E731
    expected = int((predict(space.sample(500, torch.Generator().manual_seed(3))) > 1).sum())

    plot = plots.plot_pareto(demo_results(), space, predict, latency, tmp_path / "p.png", 3, n=500)

    assert plot.path == tmp_path / "p.png" and plot.path.read_bytes()[:8] == PNG
    assert plot.clamped == expected > 0
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # the temporary file was renamed


def test_report_flags_predictions_above_100_percent():
    table = table_meta("AMD EPYC")
    plain = report(demo_results(), table, SPACE)
    assert plain.startswith(f"# Specialized subnets of `{SPACE}`\n")
    assert report(demo_results(), table, SPACE, SPACE) == plain  # an official id is its space's name
    assert "extrapolation" not in plain and "†" not in plain
    assert "| 4 | 3.93 | 4.21 | **no: +0.21 ms** | 1 | 93.76 | 92.86 |" in plain  # 4.21 ms is over 4

    results = demo_results()
    results[2].predicted_top1 = 100.62
    flagged = report(results, table, SPACE, clamped=7)
    assert "| 100.62† |" in flagged
    assert "† predicted > 100 % or < 0 %: extrapolation" in flagged
    assert "In pareto.png, 7 predicted top-1 outside 0–100 %" in flagged


# --------------------------------------------------------------------------- validation
def validation_report() -> ValidationReport:
    g = torch.Generator().manual_seed(1)
    predicted = (6 + 4 * torch.rand(40, generator=g, dtype=torch.float64)).tolist()
    measured = [p * (1 + 0.25 * float(torch.randn(1, generator=g, dtype=torch.float64))) for p in predicted]
    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    return ValidationReport(
        n=40,
        within_10=sum(e <= 0.1 for e in errors) / 40,
        mape=100 * sum(errors) / 40,
        spearman=0.55,
        max_error=100 * max(errors),
        measured_ms=measured,
        predicted_ms=predicted,
        archs=[],
    )


def test_validation_title_fits_a_long_device_name_and_everything_is_labelled():
    fig = plots.validation_figure(validation_report(), title=_title(table_meta()))

    assert outside(fig) == [] and overlapping(fig, labelled(fig)) == []
    title = fig._suptitle
    assert title.get_fontsize() >= 8 and title.get_text().count("\n") > 2  # wrapped, not shrunk away
    assert "1\N{NO-BREAK SPACE}thread(s)" in title.get_text()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted latency (ms)" and ax.get_ylabel() == "measured latency (ms)"
    labels = legend_labels(fig)
    assert "y = x: measured = predicted" in labels
    assert any(label.startswith("±10 % band") for label in labels)


def test_validation_band_is_where_within_10_counts_a_subnet():
    report_ = validation_report()
    fig = plots.validation_figure(report_)
    ax = fig.axes[0]
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    path = band.get_paths()[0]
    inside = [path.contains_point((p, m)) for p, m in zip(report_.predicted_ms, report_.measured_ms)]
    assert 0 < sum(inside) < report_.n
    assert sum(inside) / report_.n == pytest.approx(report_.within_10)


def test_plot_validation_writes_a_png(tmp_path: Path):
    path = plots.plot_validation(validation_report(), tmp_path / "v" / "v.png", title="t")
    assert path.read_bytes()[:8] == PNG


# --------------------------------------------------------------------------- NSGA-II fronts
def front(objectives: dict[str, torch.Tensor], accuracy: torch.Tensor) -> ParetoResult:
    return ParetoResult(
        space=SimpleNamespace(name=SPACE),
        population=torch.zeros(len(accuracy), 3, dtype=torch.long),
        accuracy=accuracy,
        objectives=objectives,
        hypervolume=7.488,
        ref_point=[0.0, 9.0],
        history=[],
        seconds=1.0,
        evaluated=100,
    )


def test_one_objective_front_is_a_sorted_step_line():
    latency = torch.tensor([7.0, 5.5, 6.2, 8.1, 5.9])
    accuracy = torch.tensor([0.934, 0.918, 0.929, 0.936, 0.925])
    fig = plots.front_figure(front({"latency_ms": latency}, accuracy))

    (step,) = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1]
    assert step.get_drawstyle() == "steps-post"
    assert step.get_xdata().tolist() == sorted(latency.tolist())
    assert step.get_ydata().tolist() == pytest.approx([91.8, 92.5, 92.9, 93.4, 93.6])
    assert fig.axes[0].get_xlabel() == "predicted latency (ms)"
    assert outside(fig) == []


def test_three_objective_front_is_coloured_points_never_a_line():
    g = torch.Generator().manual_seed(0)
    latency = 5 + 4 * torch.rand(60, generator=g)
    macs = 6e6 + 1e7 * torch.rand(60, generator=g)
    params = 1.2e6 + 3e5 * torch.rand(60, generator=g)
    accuracy = 0.91 + 0.003 * latency / 9 + 0.01 * torch.rand(60, generator=g)
    fig = plots.front_figure(front({"latency_ms": latency, "macs": macs, "params": params}, accuracy))

    ax, colorbar = fig.axes
    assert [line for line in ax.get_lines() if len(line.get_xdata()) > 1] == []
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert points.get_offsets()[:, 0].tolist() == pytest.approx(latency.tolist())
    assert points.get_array().tolist() == pytest.approx((macs / 1e6).tolist())  # colour: second objective
    assert colorbar.get_ylabel() == "MACs (M)"
    assert "also minimised, not drawn: params (M)" in legend_labels(fig)
    assert SPACE in fig._suptitle.get_text() and "7.488" in fig._suptitle.get_text()
    assert outside(fig) == [] and overlapping(fig, labelled(fig)) == []


def test_front_flags_extrapolated_accuracy_and_writes_a_png(tmp_path: Path):
    result = front({"latency_ms": torch.tensor([5.0, 6.0, 7.0])}, torch.tensor([0.95, 0.99, 1.02]))
    fig = plots.front_figure(result, title="mine")
    assert fig._suptitle.get_text() == "mine"
    assert "1 predicted > 100 %: extrapolation, drawn at 100 %" in legend_labels(fig)
    assert plots.plot_front(result, tmp_path / "f.png").read_bytes()[:8] == PNG
