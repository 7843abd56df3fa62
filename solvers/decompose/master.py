"""Columns of block responses, the restricted master that repairs them, and the cutting-plane model.

Every best response of a block is a *column*: its scaled welfare ``W`` and
scaled usage ``U`` of the linking rows. Two linear programs over the columns
give the certified bounds' companions:

* the **restricted master** (Dantzig-Wolfe) picks a convex combination of
  each block's columns that satisfies the linking rows and maximizes welfare.
  Its value is a feasible primal (lower) bound. A convex combination of a
  block's points is a point of the block (its constraints are convex). Its
  welfare is at least the combination of the columns' welfare (concavity),
  and its usage is exactly the combination of their usage (linearity).
* the **cutting-plane model** ``m(p) = p @ r + sum_b max_i (W_bi - p @ U_bi)``
  is below the dual function everywhere; minimizing it in a box around a
  centre gives the bundle method's next prices.

Both are solved by HiGHS through :func:`scipy.optimize.linprog`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from .lagrangian import Lagrangian

logger = logging.getLogger(__name__)


@dataclass
class ColumnPool:
    """The columns of every block, with the variable values that produced them."""

    blocks: int
    welfare: list[list[float]] = field(default_factory=list)
    usage: list[list[np.ndarray]] = field(default_factory=list)
    values: list[list[dict[str, np.ndarray]]] = field(default_factory=list)

    def __post_init__(self):
        self.welfare = [[] for _ in range(self.blocks)]
        self.usage = [[] for _ in range(self.blocks)]
        self.values = [[] for _ in range(self.blocks)]

    def add(self, block: int, welfare: float, usage: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self.welfare[block].append(float(welfare))
        self.usage[block].append(np.asarray(usage, dtype=float))
        self.values[block].append(values)

    @property
    def count(self) -> int:
        return sum(len(w) for w in self.welfare)


@dataclass
class MasterSolution:
    """A feasible combination of columns: its welfare bound, weights and the combined values."""

    welfare: float
    weights: list[np.ndarray]
    values: dict[str, np.ndarray]
    usage: np.ndarray


def solve_master(pool: ColumnPool, lagrangian: Lagrangian) -> MasterSolution | None:
    """Return the best feasible convex combination of the columns, or ``None`` if none exists."""
    sizes = [len(w) for w in pool.welfare]
    if min(sizes) == 0:
        return None
    welfare = np.concatenate([np.array(w) for w in pool.welfare])
    usage = np.column_stack([u for block in pool.usage for u in block])
    # One convexity row per block: its columns' weights sum to one.
    owner = np.repeat(np.arange(len(sizes)), sizes)
    convexity = (owner[None, :] == np.arange(len(sizes))[:, None]).astype(float)

    inequality = ~lagrangian.equality
    a_eq = np.vstack([convexity, usage[lagrangian.equality]])
    b_eq = np.concatenate([np.ones(len(sizes)), lagrangian.rhs[lagrangian.equality]])
    result = linprog(-welfare, A_ub=usage[inequality] if inequality.any() else None,
                     b_ub=lagrangian.rhs[inequality] if inequality.any() else None,
                     A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if result.status != 0:
        return None

    weights = np.maximum(result.x, 0.0)
    split = np.split(weights, np.cumsum(sizes)[:-1])
    values: dict[str, np.ndarray] = {}
    for b, block_weights in enumerate(split):
        for weight, column in zip(block_weights, pool.values[b], strict=True):
            if weight <= 0:
                continue
            for name, value in column.items():
                values[name] = values.get(name, 0.0) + weight * value
    return MasterSolution(float(welfare @ weights), split, values, usage @ weights)


def minimize_model(pool: ColumnPool, lagrangian: Lagrangian, center: np.ndarray,
                   radius: float) -> tuple[np.ndarray, float]:
    """Return the minimizer of the cutting-plane model in a box around ``center`` and its value."""
    size, blocks = lagrangian.size, pool.blocks
    # Variables: prices (size), then one epigraph value per block.
    cost = np.concatenate([lagrangian.rhs, np.ones(blocks)])
    rows, bounds_rhs = [], []
    for b in range(blocks):
        for welfare, usage in zip(pool.welfare[b], pool.usage[b], strict=True):
            row = np.zeros(size + blocks)
            row[:size] = -usage
            row[size + b] = -1.0
            rows.append(row)
            bounds_rhs.append(-welfare)
    low = np.where(lagrangian.equality, center - radius, np.maximum(center - radius, 0.0))
    bounds = [(low[i], center[i] + radius) for i in range(size)] + [(None, None)] * blocks
    result = linprog(cost, A_ub=np.array(rows), b_ub=np.array(bounds_rhs), bounds=bounds,
                     method="highs")
    if result.status != 0:
        logger.warning("the cutting-plane model could not be minimized (%s); keeping the centre",
                       result.message)
        return center.copy(), -np.inf
    return result.x[:size], float(result.fun)
