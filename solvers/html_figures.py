"""Figures of the HTML report, drawn in the shared style of :mod:`tokenomy.solvers.plots`.

Each function takes parts of a JSON report and returns a matplotlib figure,
or ``None`` when the report has nothing to draw. :func:`data_uri` turns a
figure into a ``data:`` URI, so the HTML file needs nothing beyond itself.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import matplotlib.ticker
from matplotlib.figure import Figure

from .plots import OPTIMUM_COLOR, PALETTE, SILOED_COLOR, figure_style

LABEL_CHARACTERS = 42
"""Maximum length of a tick label, in characters; longer labels end in an ellipsis."""

WIDTH = 7.5
"""Figure width in inches: the text width of an A4 or US-letter page."""

ROW_HEIGHT = 0.24
"""Inches per bar or marker row of a horizontal chart."""

MAX_ROWS = 40
"""Maximum bars or marker rows in one panel; the tables of the page list every row."""

MAX_PRICE_PANELS = 12
"""Most prices drawn in the decomposition's price panels; the table lists every price."""

EQUIMARGINAL_PANELS = (
    ("token", "Tokens: one more token per routed request", "USD per token"),
    ("bundle", "Leontief bundles: one more unit of effort", "USD per unit of effort"),
    ("review", "Review: one more review minute per routed request", "USD per review minute"),
    ("route", "Routing: one more request to the option", "USD per request"),
    ("training", "Training: one more training token", "USD per token"),
)
"""Panels of the equimarginal chart: row group, title, unit of the x axis."""


def data_uri(figure: Figure, image_format: str = "svg") -> str:
    """Render ``figure`` (``svg`` or ``png``) into a base64 ``data:`` URI and close it."""
    buffer = io.BytesIO()
    metadata = {"Date": None} if image_format == "svg" else {}
    with figure_style():
        figure.savefig(buffer, format=image_format, metadata=metadata)
    mime = "image/svg+xml" if image_format == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def save(figure: Figure, path, image_format: str = "png") -> None:
    """Write ``figure`` to ``path`` in the shared style."""
    with figure_style():
        figure.savefig(path, format=image_format)


def shorten(label: str, limit: int = LABEL_CHARACTERS) -> str:
    """Return ``label``, cut to ``limit`` characters with an ellipsis when longer."""
    return label if len(label) <= limit else label[:limit - 1] + "…"


# -- solve report -------------------------------------------------------------


def equimarginal_figure(rows: Sequence[dict]) -> Figure | None:
    """Draw marginal benefit against full marginal cost, one panel per kind of row."""
    groups = {key: [] for key, _, _ in EQUIMARGINAL_PANELS}
    for row in rows:
        groups[_equimarginal_group(row)].append(row)
    panels = []
    for key, title, unit in EQUIMARGINAL_PANELS:
        if not groups[key]:
            continue
        if len(groups[key]) > MAX_ROWS:
            title = f"{title} ({MAX_ROWS} of {len(groups[key])} rows)"
            groups[key] = _largest_residuals(groups[key])
        panels.append((key, title, unit))
    if not panels:
        return None
    with figure_style():
        heights = [len(groups[key]) + 2.2 for key, _, _ in panels]
        figure = Figure(figsize=(WIDTH, ROW_HEIGHT * sum(heights) + 0.6), layout="constrained")
        axes = figure.subplots(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
        for axis, (key, title, unit) in zip(axes, panels, strict=True):
            _equimarginal_panel(axis, groups[key], title, unit)
        figure.legend(handles=_equimarginal_legend(), loc="outside upper center", ncol=3)
    return figure


def _largest_residuals(rows: list[dict]) -> list[dict]:
    """Return the MAX_ROWS rows furthest from balance, relative to their cost, in their order."""
    def relative(row: dict) -> float:
        return abs(row["residual"]) / max(abs(row["marginal_cost"]), 1e-300)

    keep = set(sorted(range(len(rows)), key=lambda i: -relative(rows[i]))[:MAX_ROWS])
    return [row for i, row in enumerate(rows) if i in keep]


def _equimarginal_group(row: dict) -> str:
    if row.get("kind") == "token" and row.get("use") == "bundle":
        return "bundle"
    if row.get("kind") in ("route", "defer"):
        return "route"
    return row.get("kind") if row.get("kind") in ("token", "review", "training") else "route"


def _equimarginal_label(row: dict) -> str:
    if row.get("kind") == "training":
        return f"training · {row.get('use')}"
    if row.get("kind") == "defer":
        return f"{row.get('task')} · defer"
    parts = [row.get("task"), row.get("model"), row.get("use")]
    return " · ".join(str(part) for part in parts if part)


def _equimarginal_panel(axis, rows: list[dict], title: str, unit: str) -> None:
    rows = list(reversed(rows))           # first row at the top
    benefit = [row["marginal_benefit"] for row in rows]
    cost = [row["marginal_cost"] for row in rows]
    used = [bool(row.get("used")) for row in rows]
    positions = range(len(rows))
    for y, low, high in zip(positions, benefit, cost, strict=True):
        axis.plot([low, high], [y, y], color="#9a9a9a", linewidth=1.0, zorder=1)
    axis.scatter(cost, positions, marker="|", s=140, linewidths=2.0, color=SILOED_COLOR, zorder=3)
    axis.scatter(benefit, positions, marker="o", s=30, zorder=4,
                 facecolors=[OPTIMUM_COLOR if flag else "white" for flag in used],
                 edgecolors=OPTIMUM_COLOR, linewidths=1.2)
    axis.set_yticks(list(positions), [shorten(_equimarginal_label(row)) for row in rows])
    axis.set_ylim(-0.7, len(rows) - 0.3)
    values = [value for value in benefit + cost if value is not None]
    if values and min(values) > 0 and max(values) / min(values) > 50:
        axis.set_xscale("log")
    else:
        # A linear axis keeps zero in view, so near-equal values do not look far apart.
        axis.set_xlim(*_padded_range(values + [0.0]))
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6))
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick_number))
    axis.grid(axis="y", visible=False)
    axis.set_title(title, loc="left")
    axis.set_xlabel(unit)


def _equimarginal_legend() -> list:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], marker="o", linestyle="", color=OPTIMUM_COLOR, label="marginal benefit (in use)"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="white", color=OPTIMUM_COLOR,
               label="marginal benefit (not in use)"),
        Line2D([], [], marker="|", linestyle="", markersize=10, markeredgewidth=2.0,
               color=SILOED_COLOR, label="full marginal cost"),
    ]


def token_figure(tokens: Sequence[dict]) -> Figure | None:
    """Draw tokens per routed request as one stacked bar per (task, model), split by use."""
    token_rows = [row for row in tokens if row.get("unit") == "tokens"]
    if not token_rows:
        return None
    bars = list(dict.fromkeys((row["task"], row["model"]) for row in token_rows))
    uses = list(dict.fromkeys(row["use"] for row in token_rows))
    amount = {(row["task"], row["model"], row["use"]): row["per_request"] for row in token_rows}
    title = "Tokens per routed request by use"
    if len(bars) > MAX_ROWS:
        totals = {bar: sum(amount.get((*bar, use)) or 0.0 for use in uses) for bar in bars}
        largest = set(sorted(bars, key=lambda bar: -totals[bar])[:MAX_ROWS])
        title += f" ({MAX_ROWS} of {len(bars)} pairs)"
        bars = [bar for bar in bars if bar in largest]
    with figure_style():
        figure = Figure(figsize=(WIDTH, ROW_HEIGHT * len(bars) * 1.6 + 1.4), layout="constrained")
        axis = figure.subplots()
        positions = list(range(len(bars)))[::-1]
        left = [0.0] * len(bars)
        for i, use in enumerate(uses):
            widths = [amount.get((task, model, use)) or 0.0 for task, model in bars]
            axis.barh(positions, widths, left=left, height=0.6, label=use,
                      color=PALETTE[i % len(PALETTE)], edgecolor="white", linewidth=0.5)
            left = [start + width for start, width in zip(left, widths, strict=True)]
        axis.set_yticks(positions, [shorten(f"{task} · {model}") for task, model in bars])
        axis.grid(axis="y", visible=False)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick_number))
        axis.set_xlabel("tokens per routed request")
        axis.set_title(title, loc="left")
        axis.legend(loc="lower left", bbox_to_anchor=(0.0, 1.06), ncol=min(len(uses), 6))
    return figure


# -- comparison report --------------------------------------------------------


def gap_figure(report: dict) -> Figure | None:
    """Draw the gap by layer, the priced gap by task and, when present, the attribution."""
    panels = []
    if report.get("gap_by_layer"):
        panels.append(("Gap by layer (welfare)", report["gap_by_layer"],
                       "global minus siloed welfare, USD per period"))
    evaluation = report.get("evaluation") or {}
    by_task = {row["task"] or row["row"]: row["gap"] for row in evaluation.get("rows") or []
               if row.get("row") != "budgets"}
    title = "Priced gap by task"
    if len(by_task) > MAX_ROWS:
        largest = set(sorted(by_task, key=lambda name: -abs(by_task[name]))[:MAX_ROWS])
        title += f" ({MAX_ROWS} of {len(by_task)} rows)"
        by_task = {name: gap for name, gap in by_task.items() if name in largest}
    if by_task:
        panels.append((title, by_task,
                       "optimal minus siloed net at equilibrium prices, USD per period"))
    attribution = report.get("attribution")
    if attribution and attribution.get("shapley"):
        panels.append(("Priced gap attributed to hidden prices", attribution["shapley"],
                       "Shapley share, USD per period"))
    if not panels:
        return None
    with figure_style():
        heights = [len(values) + 2.4 for _, values, _ in panels]
        figure = Figure(figsize=(WIDTH, ROW_HEIGHT * sum(heights) + 0.4), layout="constrained")
        axes = figure.subplots(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
        for axis, (title, values, label) in zip(axes, panels, strict=True):
            _signed_bars(axis, values, title, label)
    return figure


def _signed_bars(axis, values: dict, title: str, label: str) -> None:
    names = list(values)[::-1]
    numbers = [values[name] or 0.0 for name in names]
    axis.barh(range(len(names)), numbers, height=0.6,
              color=[SILOED_COLOR if number > 0 else OPTIMUM_COLOR for number in numbers])
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(names)), [shorten(str(name)) for name in names])
    axis.set_ylim(-0.7, len(names) - 0.3)
    axis.grid(axis="y", visible=False)
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6))
    axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick_number))
    axis.set_title(title, loc="left")
    axis.set_xlabel(label)


# -- decomposition trajectory -------------------------------------------------


def bounds_figure(iterations: Sequence[dict]) -> Figure | None:
    """Draw the dual and primal bounds, the relative gap and each layer's distance per iteration."""
    if not iterations:
        return None
    steps = [row["iteration"] for row in iterations]
    gaps = [row.get("gap") for row in iterations]
    layers = list(dict.fromkeys(layer for row in iterations for layer in row.get("distance") or {}))
    panels = ["bounds"]
    if _positive(gaps):
        panels.append("gap")
    if layers:
        panels.append("distance")
    with figure_style():
        figure = Figure(figsize=(WIDTH, 2.3 * len(panels) + 0.3), layout="constrained")
        axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        panel = dict(zip(panels, axes, strict=True))

        axis = panel["bounds"]
        for key, label, color, marker in (("dual_bound", "dual bound", OPTIMUM_COLOR, "o"),
                                          ("primal_bound", "primal bound", SILOED_COLOR, "s")):
            x, y = _series(steps, [row.get(key) for row in iterations])
            if x:
                axis.plot(x, y, marker=marker, color=color, label=label)
        axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick_number))
        axis.set_ylabel("welfare, USD per period")
        axis.set_title("Bounds on welfare", loc="left")
        if axis.lines:
            axis.legend(loc="best")

        if "gap" in panel:
            axis = panel["gap"]
            x, y = _series(steps, gaps, positive=True)
            axis.plot(x, y, marker="o", color=PALETTE[2])
            axis.set_yscale("log")
            axis.set_ylabel("relative gap")
            axis.set_title("Duality gap", loc="left")

        if "distance" in panel:
            axis = panel["distance"]
            for i, layer in enumerate(layers):
                x, y = _series(steps, [(row.get("distance") or {}).get(layer) for row in iterations],
                               positive=True)
                if x:
                    axis.plot(x, y, marker="o", color=PALETTE[i % len(PALETTE)], label=layer)
            if axis.lines:
                axis.set_yscale("log")
                axis.legend(loc="best", ncol=min(len(layers), 4))
            axis.set_ylabel("distance from final allocation")
            axis.set_title("Distance of each layer's allocation from its final value (zeros not drawn)",
                           loc="left")
        axes[-1].set_xlabel("iteration")
        axes[-1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return figure


def price_figure(iterations: Sequence[dict], units: dict[str, str] | None = None) -> Figure | None:
    """Draw each price over the iterations, one small panel per price with its own scale.

    At most :data:`MAX_PRICE_PANELS` prices are drawn: those largest in
    absolute value at the last iteration.
    """
    labels = list(dict.fromkeys(label for row in iterations for label in row.get("prices") or {}))
    if not labels:
        return None
    last = iterations[-1].get("prices") or {}
    labels = sorted(labels, key=lambda label: -abs(last.get(label) or 0.0))[:MAX_PRICE_PANELS]
    labels.sort()
    columns = min(3, len(labels))
    rows = math.ceil(len(labels) / columns)
    steps = [row["iteration"] for row in iterations]
    with figure_style():
        figure = Figure(figsize=(WIDTH, 1.9 * rows + 0.3), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for axis, label in zip(axes, labels, strict=False):
            x, y = _series(steps, [(row.get("prices") or {}).get(label) for row in iterations])
            axis.plot(x, y, marker="o", markersize=3, color=OPTIMUM_COLOR)
            axis.set_title(shorten(label, 30), loc="left", fontsize=9)
            unit = (units or {}).get(label)
            axis.set_ylabel(shorten(unit, 28) if unit else "price", fontsize=8)
            axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=4))
            axis.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
            axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick_number))
            axis.set_xlabel("iteration", fontsize=8)
        for axis in axes[len(labels):]:
            axis.set_visible(False)
    return figure


def _series(steps, values, positive: bool = False) -> tuple[list, list]:
    """Return the (step, value) pairs whose value is a finite number (and positive if asked)."""
    pairs = [(step, value) for step, value in zip(steps, values, strict=True)
             if isinstance(value, (int, float)) and math.isfinite(value)
             and (value > 0 or not positive)]
    return [step for step, _ in pairs], [value for _, value in pairs]


def _positive(values) -> bool:
    return any(isinstance(value, (int, float)) and value > 0 for value in values)


def _padded_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = 0.05 * (high - low) or 1.0
    return low - pad, high + pad


def _tick_number(value: float, _position=None) -> str:
    """Format a tick: thousands separators from 1,000, three significant digits below."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"
