"""Tangent cuts of the convex form's curves, and the error they make.

The mixed-integer form replaces every cone of the convex form by tangent
cuts: linear inequalities that hold at every point of the true curve, so the
cut region contains the convex one (an outer approximation) and needs no
binary variables. Three families cover every cone:

* ``exp(-u)``, in perspective ``e >= y * exp(-u / y)``: success shortfall,
  wrong-action exposure, cache misses and training misses. The cut at ``t``
  is ``e >= exp(-t) * ((1 + t) * y - u)``.
* ``h(rho)`` per GPU, in perspective ``w >= g * h(L / g)``: queueing delay,
  with ``h = rho**2 / (1 - rho)`` (M/M/1) or ``h = rho**(k + 1)`` (polynomial).
* the weighted geometric mean ``G(z) = prod z_a ** beta_a``: concave and
  homogeneous of degree one, so ``G(z) <= grad G(d) . z`` for every direction
  ``d`` with no constant term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CutSettings:
    """Number and range of tangent cuts.

    Attributes
    ----------
    pieces:
        Tangent points per exponential curve, and per delay curve.
    exp_range:
        Largest exponent ``u`` with a tangent point; beyond it the cuts only
        bound ``exp(-u)`` by zero, an error of at most ``exp(-exp_range - 1)``.
    max_utilization:
        Load over GPUs allowed at a pool phase with an M/M/1 delay curve. The
        cuts cannot bound a delay that grows without limit, so this cap is a
        restriction of the convex form, not an outer approximation.
    directions:
        Multiplicative spreads of the geometric-mean tangent directions around
        the cost-minimising direction, one pair of directions per input and spread.
    """

    pieces: int = 32
    exp_range: float = 12.0
    max_utilization: float = 0.95
    directions: tuple[float, ...] = (1.5, 3.0, 8.0)

    def __post_init__(self) -> None:
        if self.pieces < 2:
            raise ValueError(f"pieces must be at least 2, got {self.pieces}")
        if not 0.0 < self.max_utilization < 1.0:
            raise ValueError(f"max_utilization must lie in (0, 1), got {self.max_utilization}")
        if self.exp_range <= 0:
            raise ValueError(f"exp_range must be positive, got {self.exp_range}")
        if any(spread <= 1.0 for spread in self.directions):
            raise ValueError(f"direction spreads must exceed 1, got {self.directions}")


def exp_points(settings: CutSettings) -> np.ndarray:
    """Return tangent points of ``exp(-u)`` on ``[0, exp_range]`` with equal maximum error.

    Between tangents at ``t`` and ``t + step`` the error is about
    ``exp(-t) * step**2 / 8``, so the step grows like ``exp(t / 2)``: the
    points are equally spaced in ``exp(-t / 2)``.
    """
    levels = np.linspace(1.0, np.exp(-settings.exp_range / 2), settings.pieces)
    return -2.0 * np.log(levels)


def exp_error(points: np.ndarray) -> float:
    """Return the maximum of ``exp(-u) - max(0, max_t cut_t(u))`` over ``u >= 0``."""
    value = np.exp(-points)
    errors = []
    for left, right in zip(points[:-1], points[1:], strict=True):
        # The tangents at left and right meet at u where their values agree.
        a, b = np.exp(-left), np.exp(-right)
        meet = (a * (1 + left) - b * (1 + right)) / (a - b)
        errors.append(np.exp(-meet) - a * (1 + left - meet))
    errors.append(value[-1] * np.exp(-1.0))  # the last tangent reaches zero at t + 1
    return float(max(errors))


def delay_function(curve: str, power: float):
    """Return ``(h, h')`` of a delay curve per GPU as functions of utilisation."""
    if curve == "mm1":
        return (lambda r: r**2 / (1 - r)), (lambda r: (2 * r - r**2) / (1 - r) ** 2)
    return (lambda r: r ** (power + 1)), (lambda r: (power + 1) * r**power)


def delay_points(curve: str, settings: CutSettings) -> np.ndarray:
    """Return tangent points in utilisation; M/M/1 points crowd towards the cap.

    The M/M/1 curvature grows like ``(1 - rho)**-3``, so steps shrink like
    ``(1 - rho)**1.5`` to keep the error between points about equal: the
    points are equally spaced in ``(1 - rho)**-0.5``.
    """
    if curve == "mm1":
        spread = np.linspace(1.0, (1.0 - settings.max_utilization) ** -0.5, settings.pieces)
        return 1.0 - spread**-2.0
    return np.linspace(0.0, 1.0, settings.pieces)


def delay_error(curve: str, power: float, points: np.ndarray) -> float:
    """Return the maximum of ``h(rho) - max_t cut_t(rho)`` between the tangent points."""
    h, slope = delay_function(curve, power)
    errors = [0.0]
    for left, right in zip(points[:-1], points[1:], strict=True):
        sl, sr = slope(left), slope(right)
        if sr - sl <= 0:
            continue
        meet = (h(right) - sr * right - h(left) + sl * left) / (sl - sr)
        errors.append(h(meet) - (h(left) + sl * (meet - left)))
    return float(max(errors))


def delay_cut(curve: str, power: float, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(load, gpus)`` coefficients of the cuts ``w >= a * L + b * g``."""
    h, slope = delay_function(curve, power)
    a = np.array([slope(r) for r in points])
    b = np.array([h(r) for r in points]) - points * a
    return a, b


def geometric_directions(weights: np.ndarray, costs: np.ndarray,
                         settings: CutSettings) -> np.ndarray:
    """Return tangent directions of a weighted geometric mean, one per row.

    The first is the direction that minimises ``costs . z`` at ``G(z) = 1``,
    ``z_a`` proportional to ``weights_a / costs_a``; the second is all ones;
    the others scale one input of the first up or down by each spread.
    Rows are normalised to ``G(d) = 1``.
    """
    weights = np.asarray(weights, dtype=float)
    costs = np.where(np.asarray(costs, dtype=float) > 0, costs, 1.0)
    base = weights / costs
    rows = [base, np.ones_like(base)]
    for a in range(len(base)):
        for spread in settings.directions:
            for factor in (spread, 1.0 / spread):
                row = base.copy()
                row[a] *= factor
                rows.append(row)
    directions = np.array(rows)
    mean = np.exp(np.log(directions) @ weights)
    return directions / mean[:, None]


def geometric_cut(weights: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Return the coefficients ``grad G(d)`` of the cuts ``g <= grad G(d) . z``, one row per direction.

    With ``G(d) = 1`` the gradient is ``weights / d``.
    """
    return np.asarray(weights, dtype=float)[None, :] / directions
