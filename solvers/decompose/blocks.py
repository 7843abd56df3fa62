"""Blocks of the decomposition and their best responses to prices.

A block is a set of variables whose own constraints mention no variable of
another block, so the linking rows of :mod:`.lagrangian` are the only coupling.
Blocks are the connected components of the graph joining variables that
share a constraint (networkx). The request block (router and agent) has a
vectorized best response (:mod:`.requests`). Every other block is solved as
a small CVXPY problem whose objective coefficients are Parameters, and so is
a layer added by a user that only declares its CVXPY formulation.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import cvxpy as cp
import networkx as nx
import numpy as np
import scipy.sparse as sp

from ...model.economy import Economy
from ...model.errors import SolveError
from .lagrangian import Lagrangian

logger = logging.getLogger(__name__)

DUALIZED_CONSTRAINTS = ("cache.hits",)
"""Layer constraints that :func:`build_lagrangian` turns into linking rows."""

BLOCK_SOLVERS = ("CLARABEL", "ECOS", "SCS")

LOCAL_BOUND_FACTOR = 2.0
"""A block's own usage of a row with non-negative coefficients stays below this many right-hand sides."""


@dataclass
class BlockSolution:
    """A block's response: scaled Lagrangian value, welfare and usage, and its variables."""

    value: float
    welfare: float
    usage: np.ndarray
    values: dict[str, np.ndarray]


def partition(economy: Economy) -> list[list[str]]:
    """Return the blocks as lists of variable names, the block with ``route`` first."""
    builder = economy.builder
    graph = nx.Graph()
    graph.add_nodes_from(builder.variables)
    for name, constraint in zip(builder.constraint_names, builder.constraints, strict=True):
        if name == DUALIZED_CONSTRAINTS[0] and _is_linear_hits(constraint):
            continue
        names = [variable.name() for variable in constraint.variables()]
        graph.add_edges_from(zip(names, names[1:], strict=False))
    routing = economy.market_constraints.get("routing")
    if routing is not None:
        names = [variable.name() for variable in routing.variables()]
        graph.add_edges_from(zip(names, names[1:], strict=False))
    components = [sorted(component) for component in nx.connected_components(graph)]
    components.sort(key=lambda names: ("route" not in names, names[0]))
    return components


def _is_linear_hits(constraint) -> bool:
    """Return whether a ``cache.hits`` constraint is the linear row (not the exponential cone)."""
    return not isinstance(constraint, cp.constraints.ExpCone)


def block_constraints(economy: Economy, variables: set[str]) -> list[cp.Constraint]:
    """Return the constraints that mention only ``variables``, routing included."""
    builder = economy.builder
    selected = []
    for name, constraint in zip(builder.constraint_names, builder.constraints, strict=True):
        if name == DUALIZED_CONSTRAINTS[0] and _is_linear_hits(constraint):
            continue
        names = {variable.name() for variable in constraint.variables()}
        if names <= variables:
            selected.append(constraint)
        elif names & variables:
            raise SolveError(f"constraint {name} links variables {sorted(names)} across blocks")
    routing = economy.market_constraints.get("routing")
    if routing is not None and {v.name() for v in routing.variables()} <= variables:
        selected.append(routing)
    return selected


class CvxpyBlock:
    """A block solved as a CVXPY problem with Parameter objective coefficients.

    Parameters
    ----------
    name:
        Block name for logs and reports.
    variables:
        Names of the block's variables.
    local_bounds:
        Add the local bounds described below (on by default).
    penalty:
        Add ``-(rho / 2) * ||usage - target||**2`` to the objective, with ``rho``
        and ``target`` Parameters (the ADMM step).

    Local bounds keep the block's best response finite: for every budget row
    whose usage coefficients are all non-negative (GPUs of a pool, say), no
    feasible point lets the block alone use more than the row allows, so the
    block gets the redundant constraint ``usage <= 2 * right-hand side``.
    """

    def __init__(self, name: str, economy: Economy, lagrangian: Lagrangian, variables: list[str],
                 penalty: bool = False, local_bounds: bool = True):
        self.name = name
        self.names = list(variables)
        self.lagrangian = lagrangian
        builder = economy.builder
        self.variables = {n: builder.variables[n] for n in self.names}
        self.coefficients = {n: cp.Parameter(v.size, name=f"coefficient.{n}")
                             for n, v in self.variables.items()}
        usage = sum((lagrangian.matrices[n] @ v for n, v in self.variables.items()
                     if lagrangian.matrices[n].nnz), start=cp.Constant(np.zeros(lagrangian.size)))
        constraints = block_constraints(economy, set(self.names))
        local = _locally_bounded_rows(lagrangian, self.names) if local_bounds else []
        if len(local):
            # Twice the right-hand side: a bound that binds at no feasible point, so it
            # keeps the response finite without taking over the linking row's price.
            constraints.append(usage[local] <= LOCAL_BOUND_FACTOR * np.maximum(lagrangian.rhs[local], 0.0))
        objective = sum((self.coefficients[n] @ v for n, v in self.variables.items()),
                        start=cp.Constant(0.0))
        self.rho = self.target = None
        uses_rows = any(lagrangian.matrices[n].nnz for n in self.names)
        if penalty and uses_rows:
            # Written as ||sqrt(rho) * usage - sqrt(rho) * target||**2 to stay DPP, so
            # changing rho or the target reuses the compiled problem.
            self.rho = cp.Parameter(nonneg=True, value=1.0, name=f"{name}.root_rho")
            self.target = cp.Parameter(lagrangian.size, value=np.zeros(lagrangian.size),
                                       name=f"{name}.scaled_target")
            objective = objective - 0.5 * cp.sum_squares(self.rho * usage - self.target)
        self.problem = cp.Problem(cp.Maximize(objective), constraints)

    def respond(self, prices: np.ndarray, rho: float | None = None,
                target: np.ndarray | None = None) -> BlockSolution:
        """Maximize the block's Lagrangian at ``prices`` (plus the ADMM penalty when given)."""
        coefficients = self.lagrangian.coefficients(prices, self.names)
        for n, parameter in self.coefficients.items():
            parameter.value = coefficients[n]
        if self.rho is not None:
            root = 0.0 if rho is None else float(np.sqrt(rho))
            self.rho.value = root
            self.target.value = root * (np.zeros(self.lagrangian.size) if target is None else target)
        self._solve()
        values = {n: np.asarray(v.value, dtype=float).ravel() for n, v in self.variables.items()}
        value = float(sum(coefficients[n] @ values[n] for n in self.names))
        usage = self.lagrangian.usage(values)
        return BlockSolution(value, self.lagrangian.objective(values), usage, values)

    def _solve(self) -> None:
        failures = []
        for solver in BLOCK_SOLVERS:
            if solver not in cp.installed_solvers():
                continue
            try:
                # An inaccurate solve is retried with the next solver, so CVXPY's warning
                # about it is logged instead of printed.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    self.problem.solve(solver=solver)
            except cp.error.SolverError as error:
                failures.append(f"{solver}: {error}")
                continue
            if self.problem.status == cp.OPTIMAL:
                return
            if self.problem.status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
                raise SolveError(
                    f"the {self.name} block is unbounded at these prices: its variables "
                    f"{self.names} need a budget, for example pools.*.gpus for GPUs")
            failures.append(f"{solver}: {self.problem.status}")
            logger.debug("the %s block: %s returned %s", self.name, solver, self.problem.status)
        raise SolveError(f"the {self.name} block could not be solved ({'; '.join(failures)})")


def _locally_bounded_rows(lagrangian: Lagrangian, names: list[str]) -> np.ndarray:
    """Return inequality rows whose every usage coefficient is non-negative and that ``names`` use."""
    rows = np.arange(lagrangian.size)
    nonnegative = ~lagrangian.equality
    used = np.zeros(lagrangian.size, dtype=bool)
    for name, matrix in lagrangian.matrices.items():
        if matrix.nnz:
            negative = np.asarray((sp.csr_matrix(matrix).minimum(0) != 0).sum(axis=1)).ravel() > 0
            nonnegative &= ~negative
        if name in names and matrix.nnz:
            used |= np.asarray((matrix != 0).sum(axis=1)).ravel() > 0
    return rows[nonnegative & used]
