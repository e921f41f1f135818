"""The run report's figures, drawn from a run's ``results.json`` data as PNG bytes.

Each figure is drawn on its own :class:`matplotlib.figure.Figure` with an Agg canvas: pyplot and
matplotlib's global backend are never touched, so drawing a report does not change the plotting
state of the program that asked for it. The PNGs are small (6 x 3.5 inches at 100 dpi) and
reproducible: the same data gives the same bytes (no software/date stamp in the file).

matplotlib is optional (``pip install prunekit[plots]``); :func:`available` says whether it can be
imported, and :func:`draw_all` raises :class:`ImportError` without it.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT, DPI = 6.0, 3.5, 100
INSTALL_HINT = "pip install prunekit[plots]"
NAMES = ("accuracy", "histograms", "sensitivity", "ratios", "layers", "kernels")
_MAX_LEGEND = 10  # more lines than this: no legend (it would cover the plot)
_MAX_TICK_LABELS = 40  # more bars than this: bars are numbered, not named


@dataclass(frozen=True)
class DrawnFigure:
    """One figure of the report: ``png`` holds its bytes, or ``error`` says why it could not be drawn."""

    name: str
    title: str
    alt: str
    png: bytes | None = None
    error: str | None = None


def available() -> bool:
    """Whether matplotlib (the ``plots`` extra) can be imported."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- reading the results defensively


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


def _num(x: Any) -> float:
    """A plottable float: numbers as they are, anything else (None, text) as NaN (a gap in the line)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return math.nan


def _finite(values: list[float]) -> bool:
    return any(math.isfinite(v) for v in values)


# ---------------------------------------------------------------- what is drawn, from which data


def _epochs(rows: list) -> tuple[list[float], list[float]]:
    rows = [r for r in rows if isinstance(r, dict)]
    xs = [_num(r.get("epoch")) for r in rows]
    if not _finite(xs):
        xs = [float(i + 1) for i in range(len(rows))]
    return xs, [_num(r.get("top1")) * 100 for r in rows]


def _accuracy_data(results: dict) -> tuple[list, list] | None:
    training = _dict(results.get("training"))
    dense, recovery = _epochs(_list(training.get("dense"))), _epochs(_list(training.get("recovery")))
    if not _finite(dense[1]) and not _finite(recovery[1]):
        return None
    return dense, recovery


def _histogram_data(results: dict) -> dict[str, tuple[list[float], list[float]]] | None:
    out = {}
    for key in ("before", "after"):
        h = _dict(_dict(results.get("histograms")).get(key))
        edges, counts = [_num(e) for e in _list(h.get("edges"))], [_num(c) for c in _list(h.get("counts"))]
        if counts and len(edges) == len(counts) + 1 and _finite(counts) and all(map(math.isfinite, edges)):
            out[key] = (edges, counts)
    return out or None


def _sensitivity_data(results: dict) -> tuple[list[float], dict[str, list[float]], float] | None:
    search = _dict(results.get("search"))
    xs = [_num(r) for r in _list(search.get("ratios_tested"))]
    curves = {}
    for name, ys in _dict(search.get("curves")).items():
        ys = [_num(y) for y in _list(ys)][: len(xs)]
        if _finite(ys):
            curves[str(name)] = ys
    if not xs or not curves:
        return None
    return xs, curves, _num(search.get("baseline"))


def _bars(mapping: list[tuple[Any, Any]]) -> tuple[list[str], list[float]] | None:
    names, values = [], []
    for name, value in mapping:
        names.append(str(name))
        values.append(_num(value))
    return (names, values) if _finite(values) else None


def _ratios_data(results: dict) -> tuple[list[str], list[float]] | None:
    return _bars(list(_dict(_dict(results.get("search")).get("ratios")).items()))


def _layers_data(results: dict) -> tuple[list[str], list[float]] | None:
    layers = [r for r in _list(results.get("layers")) if isinstance(r, dict)]
    return _bars([(r.get("name", f"#{i}"), r.get("sparsity")) for i, r in enumerate(layers)])


def _kernels_data(results: dict) -> tuple[str, dict[str, tuple[list[float], list[float]]]] | None:
    """A kernel recipe's ratios as lines: x = sparsity (or input zeros, or batch: the first that varies),
    one line per other combination."""
    rows = [r for r in _list(_dict(results.get("kernels")).get("rows")) if isinstance(r, dict)]
    if not rows:
        return None
    axis = next((k for k in ("sparsity", "input_zeros", "batch_size") if len({str(r.get(k)) for r in rows}) > 1),
                "sparsity")
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        parts = [str(r.get("kernel"))]
        parts += [f"{k[0]} {r.get(k)}" for k in ("batch_size", "threads") if k != axis]
        if r.get("regime") not in (None, "warm"):
            parts.append(str(r.get("regime")))
        if axis != "input_zeros" and _num(r.get("input_zeros")) > 0:
            parts.append(f"zeros {_num(r.get('input_zeros')):.0%}")
        xs, ys = lines.setdefault(", ".join(parts), ([], []))
        xs.append(_num(r.get(axis)))
        ys.append(_num(r.get("ratio")))
    if not all(_finite(ys) and _finite(xs) for xs, ys in lines.values()):
        return None
    return axis, lines


# ---------------------------------------------------------------- drawing


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _draw_accuracy(fig, data) -> None:
    (dx, dy), (rx, ry) = data
    ax = fig.add_subplot()
    offset = 0.0
    if _finite(dy):
        ax.plot(dx, dy, marker="o", markersize=3, label="dense training")
        offset = max(x for x in dx if math.isfinite(x))
    if _finite(ry):
        rx = [x + offset for x in rx]
        ax.plot(rx, ry, marker="o", markersize=3, label="recovery (pruned)")
        if offset:
            ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Top-1 accuracy per epoch")
    ax.set_xlabel("epoch (recovery continues after dense training)" if offset and _finite(ry) else "epoch")
    ax.set_ylabel("top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def _draw_histograms(fig, data) -> None:
    ax = fig.add_subplot()
    styles = {"before": ("tab:blue", "before pruning"), "after": ("tab:orange", "after pruning")}
    for key, (edges, counts) in data.items():
        color, label = styles[key]
        ax.stairs(counts, edges, color=color, label=label, linewidth=1.5)
    positive = [c for _, counts in data.values() for c in counts if c > 0]
    if positive:  # log counts: the zero bin of pruned weights dwarfs the rest; empty bins are left out
        ax.set_yscale("log", nonpositive="clip")
        ax.set_ylim(min(positive) / 2, max(positive) * 3)
    ax.set_title("Weight histograms before and after pruning")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")


def _draw_sensitivity(fig, data, metric: str) -> None:
    xs, curves, baseline = data
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ax.plot(xs[: len(ys)], ys, marker="o", markersize=2.5, linewidth=1, label=name)
    if math.isfinite(baseline):
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="unpruned")
    ax.set_title(f"Sensitivity: each layer pruned alone ({len(curves)} layers)")
    ax.set_xlabel("pruning ratio of the layer")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if len(curves) <= _MAX_LEGEND:
        ax.legend(fontsize="x-small", ncol=2 if len(curves) > 5 else 1)


def _draw_kernels(fig, data) -> None:
    axis, lines = data
    ax = fig.add_subplot()
    scale = 100 if axis != "batch_size" else 1
    for name, (xs, ys) in lines.items():
        ax.plot([x * scale for x in xs], ys, marker="o", markersize=3, linewidth=1, label=name)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="dense")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax.set_title("Sparse / dense time (below 1: faster than dense)")
    ax.set_xlabel({"sparsity": "weight sparsity (%)", "input_zeros": "input zeros (%)",
                   "batch_size": "batch size"}[axis])
    ax.set_ylabel("sparse / dense time")
    ax.grid(True, alpha=0.3)
    if len(lines) <= _MAX_LEGEND:
        ax.legend(fontsize="x-small", ncol=2 if len(lines) > 5 else 1)


def _draw_bars(fig, data, title: str, ylabel: str, color: str) -> None:
    names, values = data
    ax = fig.add_subplot()
    positions = list(range(len(names)))
    ax.bar(positions, [v * 100 if math.isfinite(v) else 0.0 for v in values], color=color)
    if len(names) <= _MAX_TICK_LABELS:
        upright = len(names) <= 6 and max(map(len, names)) <= 12
        ax.set_xticks(positions, names, rotation=0 if upright else 90, fontsize=6 if len(names) > 15 else 8)
    else:
        ax.set_xlabel("layer (in model order)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)


def _figure_specs(results: dict) -> list[tuple[str, str, str, Any, Callable[[Any, Any], None]]]:
    """(name, title, alt text, data, draw) for each figure the results have data for, in report order."""
    metric = str(_dict(results.get("search")).get("metric") or "metric")
    specs = []
    if (acc := _accuracy_data(results)) is not None:
        specs.append(("accuracy", "Top-1 accuracy per epoch",
                      "Top-1 accuracy per epoch of dense training and of recovery after pruning", acc,
                      _draw_accuracy))
    if (hist := _histogram_data(results)) is not None:
        specs.append(("histograms", "Weight histograms",
                      "Histograms of the weights before and after pruning, log-scale counts", hist,
                      _draw_histograms))
    if (sens := _sensitivity_data(results)) is not None:
        specs.append(("sensitivity", "Sensitivity curves",
                      f"Sensitivity curves: {metric} against each layer's pruning ratio", sens,
                      lambda fig, d: _draw_sensitivity(fig, d, metric)))
    if (ratios := _ratios_data(results)) is not None:
        specs.append(("ratios", "Per-layer ratios from the search",
                      "Bar chart of the per-layer pruning ratios chosen by the search", ratios,
                      lambda fig, d: _draw_bars(fig, d, "Per-layer ratios chosen by the search",
                                                "ratio (%)", "tab:purple")))
    if (layers := _layers_data(results)) is not None:
        specs.append(("layers", "Per-layer sparsity", "Bar chart of each layer's sparsity after pruning",
                      layers, lambda fig, d: _draw_bars(fig, d, "Sparsity per layer", "sparsity (%)",
                                                        "tab:green")))
    if (kern := _kernels_data(results)) is not None:
        specs.append(("kernels", "Sparse kernels against dense",
                      "Sparse / dense time of each kernel, log scale, against the grid's varying value", kern,
                      _draw_kernels))
    return specs


def planned(results: dict) -> list[str]:
    """The names of the figures ``results`` has data for, in report order (no matplotlib needed).

    >>> planned({"layers": [{"name": "fc", "sparsity": 0.5}]})
    ['layers']
    """
    return [spec[0] for spec in _figure_specs(results)]


def draw_all(results: dict) -> list[DrawnFigure]:
    """Draw every figure ``results`` has data for; raises ImportError without matplotlib.

    A figure whose data cannot be drawn (malformed values) comes back with ``error`` set and no PNG,
    so one bad section does not cost the whole report.
    """
    if not available():
        raise ImportError(f"the report's figures need matplotlib: {INSTALL_HINT}")
    drawn = []
    for name, title, alt, data, draw in _figure_specs(results):
        fig = _new_figure()
        try:
            draw(fig, data)
            with warnings.catch_warnings():  # "tight layout not applied" for crowded labels: draw anyway
                warnings.simplefilter("ignore")
                fig.tight_layout()
            drawn.append(DrawnFigure(name, title, alt, png=_png(fig)))
        except (ValueError, TypeError, OverflowError) as exc:
            drawn.append(DrawnFigure(name, title, alt, error=f"{type(exc).__name__}: {exc}"))
    return drawn
