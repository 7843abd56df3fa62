"""Figures of a comparison report, drawn with matplotlib (Agg backend, no display).

:data:`STYLE` is the one style of every tokenomy figure, here and in the HTML
report: sizes readable in print, light grids, no top or right spine, and the
colour-blind-safe Okabe-Ito palette.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
"""Okabe-Ito colours, distinguishable with the common forms of colour blindness."""

OPTIMUM_COLOR, SILOED_COLOR, GAIN_COLOR = PALETTE[0], PALETTE[1], PALETTE[2]

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "svg.fonttype": "path",
    "svg.hashsalt": "tokenomy",
}
"""Matplotlib settings shared by every tokenomy figure (apply with :func:`figure_style`)."""


@contextmanager
def figure_style() -> Iterator[None]:
    """Apply :data:`STYLE` to the figures drawn inside the ``with`` block."""
    with plt.rc_context(STYLE):
        yield


def plot_comparison(report: dict, path: str | Path) -> Path:
    """Draw global against siloed welfare, the gap by layer, and the attribution by price."""
    with figure_style():
        return _plot_comparison(report, path)


def _plot_comparison(report: dict, path: str | Path) -> Path:
    attribution = report.get("attribution")
    panels = 3 if attribution else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), constrained_layout=True)

    axes[0].bar(["global", "siloed"], [report["global_welfare"], report["siloed_welfare"]],
                color=[OPTIMUM_COLOR, SILOED_COLOR])
    axes[0].grid(axis="x", visible=False)
    axes[0].set_title("Welfare")
    axes[0].set_ylabel("USD per period")

    layers = list(report["gap_by_layer"])
    gaps = [report["gap_by_layer"][layer] for layer in layers]
    axes[1].barh(layers, gaps, color=[SILOED_COLOR if gap > 0 else OPTIMUM_COLOR for gap in gaps])
    axes[1].axvline(0, color="black", linewidth=0.8)
    axes[1].grid(axis="y", visible=False)
    axes[1].set_title(f"Gap by layer (total {report['gap']:,.0f})")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
    axes[1].set_xlabel("global minus siloed, USD per period")

    if attribution:
        prices = attribution["prices"]
        shares = [attribution["shapley"][price] for price in prices]
        axes[2].barh(prices, shares, color=GAIN_COLOR)
        axes[2].axvline(0, color="black", linewidth=0.8)
        axes[2].grid(axis="y", visible=False)
        axes[2].set_title("Priced gap attributed to hidden prices")
        axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
        axes[2].set_xlabel("Shapley share, USD per period")

    path = Path(path)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
