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
* the weighted geometric mean ``G(x) = prod x_a ** beta_a``, written as a
  chain of two-input means ``w_j <= w_{j-1} ** (1 - gamma_j) * x_j ** gamma_j``
  (see :func:`geometric_error`). Each link is the perspective of ``r**gamma``
  and gets tangent cuts at equally spaced log ratios ``ln(x_j / w_{j-1})``.
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
    geometric_pieces:
        Tangent points per link of a geometric-mean chain.
    geometric_range:
        Largest absolute log ratio ``ln(x_j / w_{j-1})`` with a tangent point.
        The inputs are normalised so that the ratio is 0 at the mix that
        minimises list-price spend, so ``ln 30`` places points up to a 30-fold
        deviation from that mix.
    """

    pieces: int = 32
    exp_range: float = 12.0
    max_utilization: float = 0.95
    geometric_pieces: int = 17
    geometric_range: float = float(np.log(30.0))

    def __post_init__(self) -> None:
        if self.pieces < 2:
            raise ValueError(f"pieces must be at least 2, got {self.pieces}")
        if not 0.0 < self.max_utilization < 1.0:
            raise ValueError(f"max_utilization must lie in (0, 1), got {self.max_utilization}")
        if self.exp_range <= 0:
            raise ValueError(f"exp_range must be positive, got {self.exp_range}")
        if self.geometric_pieces < 2:
            raise ValueError(f"geometric_pieces must be at least 2, got {self.geometric_pieces}")
        if self.geometric_range <= 0:
            raise ValueError(f"geometric_range must be positive, got {self.geometric_range}")


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




@dataclass(frozen=True)
class GeometricBound:
    """A-priori bound of the tangent cuts of one weighted geometric mean.

    Attributes
    ----------
    relative_error:
        ``rho``: every effort the cuts allow is at most ``(1 + rho) * G(x)``
        while the mix is within ``mix_factor``.
    mix_factor:
        ``F``: the bound holds when, for every pair of inputs ``a`` and ``b``,
        ``x_a / x_b`` lies within a factor ``F`` of its value at the mix that
        minimises list-price spend.
    link_errors:
        Relative error of each link's cuts on its own, in chain order.
    """

    relative_error: float
    mix_factor: float
    link_errors: tuple[float, ...]


def ratio_points(settings: CutSettings) -> np.ndarray:
    """Return the tangent log ratios of one geometric-mean link, equally spaced."""
    return np.linspace(-settings.geometric_range, settings.geometric_range,
                       settings.geometric_pieces)


def chain_exponents(weights: np.ndarray) -> np.ndarray:
    """Return ``gamma_j = beta_j / (beta_0 + ... + beta_j)`` for links ``j = 1 .. m-1``.

    Link j combines the mean of inputs ``0 .. j-1`` with input j, so the
    last link's output is the mean of all inputs.
    """
    weights = np.asarray(weights, dtype=float)
    return weights[1:] / np.cumsum(weights)[1:]


def link_cut(gamma: float, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the coefficients of ``w_j <= a * w_{j-1} + b * x_j``, one cut per point.

    The cut at log ratio ``s`` is the tangent of ``w_{j-1}**(1-gamma) * x_j**gamma``
    along ``x_j = exp(s) * w_{j-1}``: ``a = (1 - gamma) * exp(gamma * s)`` and
    ``b = gamma * exp((gamma - 1) * s)``.
    """
    return (1.0 - gamma) * np.exp(gamma * points), gamma * np.exp((gamma - 1.0) * points)


def link_error(gamma: float, points: np.ndarray) -> float:
    """Return the maximum relative error of one link's cuts inside its range.

    At a log ratio ``delta`` away from the nearest tangent point the cut
    exceeds the mean by the factor ``((1 - gamma) + gamma * exp(delta)) *
    exp(-gamma * delta)``, which is convex in ``delta`` and 1 at 0. Within
    ``[points[0] - h/2, points[-1] + h/2]``, with ``h`` the widest gap, the
    nearest point is at most ``h/2`` away, so the maximum is at ``delta = ±h/2``.
    """
    half = float(np.max(np.diff(points))) / 2.0 if len(points) > 1 else 0.0
    factors = [((1.0 - gamma) + gamma * np.exp(delta)) * np.exp(-gamma * delta)
               for delta in (half, -half)]
    return float(max(factors) - 1.0)


def geometric_error(weights: np.ndarray, settings: CutSettings) -> GeometricBound:
    """Return the a-priori bound of the chain cuts of ``G(x) = prod x_a ** weights_a``.

    Notes
    -----
    Let ``W_0 = x_0`` and ``W_j = min_cuts(a * W_{j-1} + b * x_j)``: the largest
    values the cuts allow, since every cut increases in both arguments. With
    ``g_j(w, x) = w**(1 - gamma_j) * x**gamma_j`` the true chain is
    ``G_j = g_j(G_{j-1}, x_j)``. Suppose ``W_{j-1} <= (1 + r_{j-1}) G_{j-1}``
    and ``ln(x_j / W_{j-1})`` lies within the link's range. Then

        W_j <= (1 + e_j) g_j(W_{j-1}, x_j) <= (1 + e_j) (1 + r_{j-1})**(1 - gamma_j) G_j,

    because ``g_j`` is homogeneous of degree ``1 - gamma_j`` in its first
    argument. So ``1 + r_j = (1 + e_j) (1 + r_{j-1})**(1 - gamma_j)``, with
    ``e_j`` from :func:`link_error` and ``r_0 = 0``.

    The range condition holds when every pairwise ratio of normalised inputs
    is within a factor ``F``: then ``ln(x_j / G_{j-1})`` lies in ``[-ln F, ln F]``
    (``G_{j-1}`` is a mean of inputs within that factor of each other) and
    ``ln(x_j / W_{j-1})`` in ``[-ln F - ln(1 + r_{j-1}), ln F]``. Hence
    ``ln F = range + h/2 - ln(1 + r_{m-2})``.

    Outside that region the cuts still hold (effort is never understated), but
    the overstatement is not bounded relative to ``G``: near a face where one
    input is 0, ``G`` is 0 while every finite set of tangent planes stays positive.

    Raises
    ------
    ValueError
        When the range is too narrow for its own error (``F <= 1``).
    """
    gammas = chain_exponents(weights)
    points = ratio_points(settings)
    half = float(np.max(np.diff(points))) / 2.0
    links = tuple(link_error(float(gamma), points) for gamma in gammas)
    total, entering = 1.0, 1.0
    for gamma, error in zip(gammas, links, strict=True):
        entering = total
        total = (1.0 + error) * total ** (1.0 - gamma)
    reach = settings.geometric_range + half - np.log(entering)
    if reach <= 0:
        raise ValueError(
            f"geometric_range {settings.geometric_range:g} with {settings.geometric_pieces} pieces "
            "covers no mix; raise geometric_pieces or geometric_range")
    return GeometricBound(total - 1.0, float(np.exp(reach)), links)


def chain_effort(weights: np.ndarray, inputs: np.ndarray, settings: CutSettings) -> np.ndarray:
    """Return the largest effort the chain cuts allow, one value per row of ``inputs``.

    ``inputs`` contains normalised inputs, shape ``(n, m)``. Used to check the
    bound against the cuts themselves.
    """
    inputs = np.atleast_2d(np.asarray(inputs, dtype=float))
    points = ratio_points(settings)
    allowed = inputs[:, 0]
    for j, gamma in enumerate(chain_exponents(weights), start=1):
        on_mean, on_input = link_cut(float(gamma), points)
        allowed = np.min(on_mean[None, :] * allowed[:, None]
                         + on_input[None, :] * inputs[:, j:j + 1], axis=1)
    return allowed


def success_overstatement(relative_error: float) -> float:
    """Return the maximum of ``exp(-s) - exp(-(1 + rho) * s)`` over ``s >= 0``.

    The success curves are ``1 - exp(-rate * G)``. If the cuts allow an effort
    of at most ``(1 + rho) * G``, the success probability is overstated by at
    most this much. The maximum is at ``s = ln(1 + rho) / rho`` and equals
    ``rho * (1 + rho) ** (-1 - 1 / rho)``, about ``rho / e`` for small ``rho``.
    """
    if relative_error <= 0:
        return 0.0
    rho = float(relative_error)
    return rho * (1.0 + rho) ** (-1.0 - 1.0 / rho)
