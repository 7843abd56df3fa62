"""Typed results: the termination reason, the solution status and the prices."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TerminationReason(StrEnum):
    """Reason the solver stopped."""

    OPTIMAL = "optimal"
    """Converged to the requested tolerances."""
    INFEASIBLE = "infeasible"
    """Proved that no allocation meets every budget and capacity."""
    UNBOUNDED = "unbounded"
    """Proved that welfare grows without limit."""
    LIMIT = "limit"
    """Stopped at an iteration or time limit."""
    NUMERICAL_ERROR = "numerical_error"
    """Stopped with an inaccurate solution or a numerical failure."""
    ERROR = "error"
    """The solver failed or is not installed."""
    UNKNOWN = "unknown"
    """A status this adapter does not recognise."""


class SolutionStatus(StrEnum):
    """Quality of the returned allocation."""

    OPTIMAL = "optimal"
    """Feasible and optimal within tolerances; prices are certified."""
    FEASIBLE = "feasible"
    """Returned but not certified optimal (inaccurate); prices are not reported."""
    NO_SOLUTION = "no_solution"
    """No allocation is available."""


@dataclass
class Price:
    """The price of one market row.

    ``price`` is ``d(optimal welfare) / d(rhs)`` in ``unit``; ``None`` when the
    solve did not certify it, and ``reason`` then gives the cause.
    """

    market: str
    row: str
    kind: str
    mode: str
    price: float | None
    unit: str
    binding: bool | None
    slack: float | None
    usage: float | None
    rhs: float | None
    rhs_path: str | None
    reason: str | None = None

    def as_dict(self) -> dict:
        return {
            "market": self.row, "market_name": self.market, "kind": self.kind, "mode": self.mode,
            "price": self.price, "unit": self.unit, "binding": self.binding,
            "slack": self.slack, "usage": self.usage, "rhs": self.rhs_path, "rhs_value": self.rhs,
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass
class Timings:
    """Wall-clock seconds of each phase."""

    build: float = 0.0
    compile: float = 0.0
    solve: float = 0.0

    @property
    def total(self) -> float:
        return self.build + self.compile + self.solve


@dataclass
class Result:
    """Outcome of one solve of the joint program.

    Attributes
    ----------
    termination:
        Why the solver stopped.
    status:
        How good the allocation is; prices are only reported for ``optimal``.
    welfare:
        Objective value in USD per period (``None`` without a solution).
    bound:
        Best proven upper bound on welfare (equal to ``welfare`` at a conic optimum).
    solver:
        Solver name and version that produced the numbers.
    attempts:
        Each solver tried, with its raw status, in order.
    time_limit:
        Seconds allowed to each solver, when a limit was set.
    checks:
        Outcome of the optimality checks run after the solve.
    diagnosis:
        For an infeasible or unbounded instance: the cause in the instance's terms.
    """

    termination: TerminationReason
    status: SolutionStatus
    welfare: float | None
    bound: float | None
    solver: str
    prices: list[Price] = field(default_factory=list)
    welfare_parts: dict[str, float] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    attempts: list[dict] = field(default_factory=list)
    message: str = ""
    time_limit: float | None = None
    checks: dict | None = None
    diagnosis: dict | None = None

    @property
    def gap(self) -> float | None:
        if self.welfare is None or self.bound is None:
            return None
        return abs(self.bound - self.welfare) / max(1.0, abs(self.welfare))

    @property
    def certified(self) -> bool:
        return self.status is SolutionStatus.OPTIMAL

    def price(self, row: str) -> float | None:
        """Return the price of a market row such as ``compute`` or ``gpu[pool-a]``."""
        for item in self.prices:
            if item.row == row:
                return item.price
        raise KeyError(f"no market row {row!r}; rows: {[p.row for p in self.prices]}")
