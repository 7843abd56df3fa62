"""Figure of a decomposition run: bounds, prices and each layer's distance from its final allocation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..plots import PALETTE, figure_style  # noqa: E402

MAX_PRICE_LINES = 8


def plot_trajectory(run: dict, path: str | Path) -> Path:
    """Draw a run's bounds, its largest prices (relative to their final value) and layer distances.

    ``run`` is :meth:`DecompositionResult.as_dict` output.
    """
    with figure_style():
        return _plot_trajectory(run, path)


def _plot_trajectory(run: dict, path: str | Path) -> Path:
    iterations = run["iterations"]
    steps = [item["iteration"] for item in iterations]
    figure, axes = plt.subplots(1, 3, figsize=(13.5, 3.9), constrained_layout=True)

    upper = [item["dual_bound"] for item in iterations]
    lower = [item["primal_bound"] if item["primal_bound"] is not None else np.nan for item in iterations]
    axes[0].plot(steps, upper, color=PALETTE[1], label="dual (upper) bound")
    axes[0].plot(steps, lower, color=PALETTE[0], label="primal (lower) bound")
    finite = [value for value in lower if np.isfinite(value)]
    if finite:
        low, high = min(finite), max(upper)
        margin = 0.05 * max(high - low, 1e-9)
        axes[0].set_ylim(max(low, max(finite) - 20 * (high - max(finite) + 1e-9)) - margin, high + margin)
    axes[0].set_title(f"Bounds ({run['method']}, stopped: {run['termination']})")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("welfare, USD per period")
    axes[0].legend(loc="lower right", fontsize=8)

    final = run.get("final_prices") or iterations[-1]["prices"]
    largest = sorted(final, key=lambda label: -abs(final[label]))[:MAX_PRICE_LINES]
    for label in largest:
        if final[label] == 0:
            continue
        series = [item["prices"].get(label, np.nan) / final[label] for item in iterations]
        axes[1].plot(steps, series, label=label, linewidth=1.2)
    axes[1].axhline(1.0, color="black", linewidth=0.6)
    axes[1].set_title("Prices relative to the best dual point")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("price / price at the best dual point")
    axes[1].set_ylim(-0.1, 2.0)
    axes[1].legend(loc="lower right", fontsize=7)

    layers = sorted({layer for item in iterations for layer in item["distance"]})
    for layer in layers:
        axes[2].plot(steps, [item["distance"].get(layer, np.nan) for item in iterations], label=layer)
    axes[2].set_yscale("symlog", linthresh=1e-3)
    axes[2].set_title("Each layer's distance from its final allocation")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("relative distance (norm)")
    if layers:
        axes[2].legend(loc="upper right", fontsize=8)

    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
