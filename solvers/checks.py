"""Optimality checks run after every solve.

A solver's ``optimal`` status means its own residuals are small in its own
scaling. These checks restate optimality in the economy's terms: market rows
are feasible, every price times its slack is about zero, and the
equimarginal residuals vanish for options in use and are non-positive for
the others (see :mod:`tokenomy.solvers.analysis`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np

from ..model.economy import Economy
from .analysis import equimarginal
from .result import Result


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of the optimality checks.

    Attributes
    ----------
    feasibility:
        Largest violation of a market row or layer constraint, as a share of
        the row's scale (the solver's view).
    min_share:
        Token, review and route rows of options in use that carry a smaller
        share of their task's requests are not checked: their tokens per
        request are a ratio of two tiny numbers.
    slackness:
        Largest ``|price * slack|`` as a share of ``max(|welfare|, 1)``.
    residual_relative, residual_absolute:
        An equimarginal residual counts as zero within
        ``relative * |marginal cost| + absolute[kind]``.
    """

    feasibility: float = 1e-5
    min_share: float = 1e-4
    slackness: float = 1e-5
    residual_relative: float = 2e-3
    residual_absolute: dict[str, float] = field(default_factory=lambda: {
        "token": 1e-9, "review": 1e-6, "training": 1e-9, "route": 1e-3, "defer": 1e-3})


@dataclass
class CheckReport:
    """Outcome of the optimality checks on one solution."""

    passed: bool
    feasibility: float
    slackness: float
    residual: float
    violations: list[str]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "max_infeasibility": self.feasibility,
                "max_slackness": self.slackness, "max_residual_excess": self.residual,
                "violations": self.violations}


def check_solution(economy: Economy, result: Result, tolerances: Tolerances | None = None) -> CheckReport:
    """Check feasibility, complementary slackness and equimarginal residuals.

    ``residual`` is the largest excess of a residual over its tolerance
    (negative when every residual is within tolerance).
    """
    tolerances = tolerances or Tolerances()
    violations: list[str] = []

    feasibility = 0.0
    for constraint, name in zip(economy.problem.constraints, _constraint_names(economy), strict=True):
        violation = _violation(constraint)
        feasibility = max(feasibility, violation)
        if violation > tolerances.feasibility:
            violations.append(f"constraint {name} is violated by {violation:.3g} (scaled)")

    slackness = 0.0
    scale = max(abs(result.welfare or 0.0), 1.0)
    for price in result.prices:
        if price.mode in ("budget", "balance") and price.price is not None and price.slack is not None:
            share = abs(price.price * price.slack) / scale
            slackness = max(slackness, share)
            if share > tolerances.slackness:
                violations.append(f"{price.row}: price {price.price:.4g} times slack "
                                  f"{price.slack:.4g} is {share:.3g} of welfare")

    worst = -np.inf
    # NOTE: the equimarginal formulas know the default layers, market kinds and
    # curve families only. With an extension in the economy, equimarginal()
    # returns no rows, so only feasibility and complementary slackness are checked.
    rows = equimarginal(economy, result)
    for row in rows:
        share = row["amount"] if row["kind"] == "route" and row["used"] else row.get("share", 1.0)
        if share < tolerances.min_share:
            continue
        allowed = (tolerances.residual_relative * abs(row["marginal_cost"])
                   + tolerances.residual_absolute.get(row["kind"], 1e-6))
        excess = (abs(row["residual"]) if row["used"] else row["residual"]) - allowed
        worst = max(worst, excess)
        if excess > 0:
            violations.append(f"equimarginal {row['kind']} {row['task']}/{row['model']}/{row['use']}: "
                              f"residual {row['residual']:.4g} exceeds {allowed:.3g}")

    residual = float(worst) if np.isfinite(worst) else 0.0
    return CheckReport(not violations, feasibility, slackness, residual, violations[:20])


def _violation(constraint: cp.Constraint) -> float:
    """Return a constraint's largest violation, with closed forms for the cones.

    CVXPY (1.9) measures a power-cone residual by solving a projection
    problem, which takes minutes on large programs. The closed forms below
    measure how far each cone inequality fails instead.
    """
    if isinstance(constraint, cp.constraints.PowCone3D):
        x, y, z = (np.asarray(arg.value, dtype=float) for arg in constraint.args[:3])
        alpha = np.asarray(constraint.alpha.value, dtype=float)
        mean = np.maximum(x, 0.0) ** alpha * np.maximum(y, 0.0) ** (1 - alpha)
        gap = np.maximum.reduce([np.abs(z) - mean, -x, -y])
    elif isinstance(constraint, cp.constraints.ExpCone):
        x, y, z = (np.asarray(arg.value, dtype=float) for arg in constraint.args)
        # y * exp(x / y) <= z with y > 0; at y = 0 the cone needs x <= 0 <= z.
        positive = y > 1e-12
        bound = np.where(positive, y * np.exp(np.minimum(x / np.where(positive, y, 1.0), 700.0)), 0.0)
        gap = np.where(positive, bound - z, np.maximum(x, -z))
        gap = np.maximum(gap, -y)
    elif isinstance(constraint, cp.constraints.SOC):
        t = np.atleast_1d(np.asarray(constraint.args[0].value, dtype=float))
        matrix = np.asarray(constraint.args[1].value, dtype=float)
        norms = np.linalg.norm(matrix, axis=constraint.axis) if matrix.ndim > 1 else np.abs(matrix)
        gap = norms - t
    else:
        return float(np.max(np.atleast_1d(constraint.violation()), initial=0.0))
    return float(np.max(np.atleast_1d(gap), initial=0.0))


def _constraint_names(economy: Economy) -> list[str]:
    names = list(economy.builder.constraint_names)
    names += [f"market {name}" for name in economy.market_constraints]
    return names
