"""Figures of a comparison report, drawn with matplotlib (Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def plot_comparison(report: dict, path: str | Path) -> Path:
    """Draw global against siloed welfare, the gap by layer, and the attribution by price."""
    attribution = report.get("attribution")
    panels = 3 if attribution else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), constrained_layout=True)

    axes[0].bar(["global", "siloed"], [report["global_welfare"], report["siloed_welfare"]],
                color=["#2b6cb0", "#c05621"])
    axes[0].set_title("Welfare")
    axes[0].set_ylabel("USD per period")

    layers = list(report["gap_by_layer"])
    gaps = [report["gap_by_layer"][layer] for layer in layers]
    axes[1].barh(layers, gaps, color=["#c05621" if gap > 0 else "#2b6cb0" for gap in gaps])
    axes[1].axvline(0, color="black", linewidth=0.8)
    axes[1].set_title(f"Gap by layer (total {report['gap']:,.0f})")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
    axes[1].set_xlabel("global minus siloed, USD per period")

    if attribution:
        prices = attribution["prices"]
        shares = [attribution["shapley"][price] for price in prices]
        axes[2].barh(prices, shares, color="#2f855a")
        axes[2].axvline(0, color="black", linewidth=0.8)
        axes[2].set_title("Priced gap attributed to hidden prices")
        axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
        axes[2].set_xlabel("Shapley share, USD per period")

    path = Path(path)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
