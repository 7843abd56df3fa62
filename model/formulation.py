"""The builder that layers write into.

Layers declare variables, their own (conic) constraints, and *linear
contributions* of their variables to named quantities: parts of welfare and
the usage of markets. The core turns each market's usage into a constraint
(budgeted) or a charge in the objective (priced). Because every market usage
and welfare part is linear in the variables, and all nonlinearity sits in
the layers' cone constraints, duals of market rows are exactly the prices.

What may change between solves without recompiling is held in CVXPY
Parameters: uniform market prices and the right-hand sides of markets with
few rows (see ``Economy``). Everything else is a constant registered by
name, so a changed value is detected. Parameter vectors are kept short on
purpose: CVXPY (1.9) stores the DPP tensor of a parameter vector with
memory that grows with its length times the problem size.

A builder created with ``reuse=`` an earlier builder reuses that builder's
variables and parameters, assigning new values, and raises
:class:`StructureChanged` when a constant or a shape differs. This is how
:meth:`Economy.update` re-parameterises a compiled problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import scipy.sparse as sp


class StructureChanged(Exception):
    """Raised in reuse mode when new data needs a different problem structure."""


@dataclass
class Contribution:
    """A linear contribution ``aggregate @ (coefficient * variable)`` to a quantity.

    ``coefficient`` is in the quantity's unit per unit of the variable, before
    scaling; ``aggregate`` maps variable entries to the quantity's rows.
    ``tasks`` is the task index each variable entry serves (-1 for none),
    or ``None`` when the layer did not say; quantities split by tenant read it.
    """

    layer: str
    variable: str
    coefficient: np.ndarray
    aggregate: sp.csr_matrix
    label: str
    tasks: np.ndarray | None = None


@dataclass
class Quantity:
    """A named linear quantity: a welfare part (USD per period) or a market usage."""

    name: str
    size: int
    unit: str
    contributions: list[Contribution] = field(default_factory=list)


class Builder:
    """Collects variables, layer constraints and linear quantities."""

    def __init__(self, reuse: Builder | None = None):
        self.variables: dict[str, cp.Variable] = {}
        self.parameters: dict[str, cp.Parameter] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.constraints: list[cp.Constraint] = []
        self.constraint_names: list[str] = []
        self.quantities: dict[str, Quantity] = {}
        self._reuse = reuse

    # -- declarations -----------------------------------------------------

    def variable(self, name: str, size: int, *, nonneg: bool = True) -> cp.Variable:
        """Declare (or, in reuse mode, fetch) a flat variable of ``size`` entries."""
        if name in self.variables:
            raise ValueError(f"variable {name!r} is declared twice")
        if self._reuse is not None:
            old = self._reuse.variables.get(name)
            if old is None or old.size != size:
                raise StructureChanged(f"variable {name}")
            self.variables[name] = old
            return old
        var = cp.Variable(size, nonneg=nonneg, name=name)
        self.variables[name] = var
        return var

    def parameter(self, name: str, value: np.ndarray | float, *, nonneg: bool = False) -> cp.Parameter:
        """Declare (or, in reuse mode, update) a parameter holding ``value``."""
        array = np.atleast_1d(np.asarray(value, dtype=float))
        if name in self.parameters:
            raise ValueError(f"parameter {name!r} is declared twice")
        if self._reuse is not None:
            old = self._reuse.parameters.get(name)
            if old is None or old.shape != array.shape:
                raise StructureChanged(f"parameter {name}")
            old.value = array
            self.parameters[name] = old
            return old
        param = cp.Parameter(array.shape, nonneg=nonneg, name=name, value=array)
        self.parameters[name] = param
        return param

    def constant(self, name: str, value: np.ndarray | float) -> np.ndarray:
        """Declare a data array; in reuse mode it must equal the earlier value."""
        array = np.asarray(value, dtype=float)
        if name in self.constants:
            raise ValueError(f"constant {name!r} is declared twice")
        if self._reuse is not None:
            old = self._reuse.constants.get(name)
            if old is None or old.shape != array.shape or not np.array_equal(old, array):
                raise StructureChanged(f"data of {name}")
        self.constants[name] = array
        return array

    def constrain(self, name: str, constraints: Sequence[cp.Constraint]) -> None:
        """Add a layer's own constraints (cones, bounds), labelled for diagnostics."""
        for item in constraints:
            self.constraints.append(item)
            self.constraint_names.append(name)

    def quantity(self, name: str, size: int, unit: str) -> Quantity:
        """Return the quantity ``name``, creating it with ``size`` rows if new."""
        existing = self.quantities.get(name)
        if existing is None:
            existing = Quantity(name, size, unit)
            self.quantities[name] = existing
        elif existing.size != size:
            raise ValueError(f"quantity {name!r} has {existing.size} rows, not {size}")
        return existing

    def contribute(
        self,
        quantity: str,
        layer: str,
        variable: str,
        coefficient: np.ndarray,
        rows: np.ndarray | None = None,
        *,
        size: int = 1,
        unit: str = "USD",
        label: str = "",
        tasks: np.ndarray | None = None,
    ) -> None:
        """Add ``sum over entries of coefficient * variable`` to rows of a quantity.

        Parameters
        ----------
        quantity:
            Quantity name, e.g. ``"welfare.value"`` or ``"usage.compute"``.
        layer:
            Contributing layer (an edge of the layer-market graph).
        variable:
            Name of a declared variable.
        coefficient:
            Quantity units per unit of each variable entry, shape ``(variable.size,)``.
        rows:
            Row of the quantity each entry adds to; all zeros for a scalar quantity.
        tasks:
            Task index each entry serves, -1 for an entry that serves no task
            (training). Markets with ``scope: tenant`` need it to split the
            usage by the tenants that own the tasks.
        """
        var = self.variables[variable]
        coefficient = np.broadcast_to(np.asarray(coefficient, dtype=float), (var.size,)).copy()
        rows = np.zeros(var.size, dtype=int) if rows is None else np.asarray(rows, dtype=int)
        target = self.quantity(quantity, size, unit)
        keep = rows >= 0
        aggregate = sp.csr_matrix(
            (np.ones(int(keep.sum())), (rows[keep], np.flatnonzero(keep))),
            shape=(target.size, var.size),
        )
        coefficient = np.where(keep, coefficient, 0.0)
        if tasks is not None:
            tasks = np.broadcast_to(np.asarray(tasks, dtype=int), (var.size,)).copy()
        target.contributions.append(Contribution(layer, variable, coefficient, aggregate, label, tasks))

    def derive_weighted(self, target: str, source: str, weights: np.ndarray, *,
                        unit: str = "") -> None:
        """Add ``sum over rows r of weights[r] * source[r]`` to the one-row quantity ``target``.

        Each contribution to ``source`` is copied with its layer, variable and
        tasks, so the graph and tenant splits see the layers that cause the
        usage. Call it after the layers have declared, e.g. from a market
        kind's meter. Does nothing when ``source`` has no contributions.
        """
        origin = self.quantities.get(source)
        if origin is None:
            return
        weights = np.broadcast_to(np.asarray(weights, dtype=float), (origin.size,))
        for part in list(origin.contributions):
            entry_rows = _entry_rows(part.aggregate)
            coefficient = part.coefficient * np.where(entry_rows >= 0, weights[entry_rows], 0.0)
            self.contribute(target, part.layer, part.variable, coefficient,
                            np.where(entry_rows >= 0, 0, -1), unit=unit or origin.unit,
                            label=part.label, tasks=part.tasks)

    def derive_by_task(self, target: str, source: str, task_rows: np.ndarray, size: int) -> list[str]:
        """Add each entry of ``source`` to row ``task_rows[task]`` of ``target``, by the task it serves.

        Entries of contributions that carry no tasks, and tasks mapped to -1,
        add to no row. Returns the layers whose contributions carried no tasks.
        """
        origin = self.quantities.get(source)
        if origin is None:
            return []
        task_rows = np.asarray(task_rows, dtype=int)
        unknown = []
        for part in list(origin.contributions):
            if part.tasks is None:
                unknown.append(part.layer)
                continue
            entry_rows = _entry_rows(part.aggregate)
            served = (entry_rows >= 0) & (part.tasks >= 0)
            rows = np.where(served, task_rows[np.where(served, part.tasks, 0)], -1)
            self.contribute(target, part.layer, part.variable, part.coefficient, rows, size=size,
                            unit=origin.unit, label=part.label, tasks=part.tasks)
        return list(dict.fromkeys(unknown))

    # -- assembly ---------------------------------------------------------

    def expression(self, quantity: str, row_scale: np.ndarray | float) -> cp.Expression:
        """Build the constant-coefficient expression ``quantity / row_scale``."""
        target = self.quantities[quantity]
        row_scale = np.broadcast_to(np.asarray(row_scale, dtype=float), (target.size,))
        terms = []
        for index, part in enumerate(target.contributions):
            matrix = sp.diags(1.0 / row_scale) @ part.aggregate @ sp.diags(part.coefficient)
            matrix = sp.csr_matrix(matrix)
            self.constant(f"{quantity}#{index}", np.concatenate(
                [matrix.data, matrix.indices, matrix.indptr]))
            terms.append(matrix @ self.variables[part.variable])
        if not terms:
            return cp.Constant(np.zeros(target.size))
        return terms[0] if len(terms) == 1 else cp.sum(terms)

    def objective_term(self, quantity: str, scale: float) -> cp.Expression:
        """Build ``quantity / scale`` for a one-row quantity with constant coefficients."""
        target = self.quantities[quantity]
        if target.size != 1:
            raise ValueError(f"objective quantity {quantity!r} must have one row")
        terms = []
        for index, part in enumerate(target.contributions):
            coefficient = self.constant(f"{quantity}#{index}", part.coefficient / scale)
            terms.append(coefficient @ self.variables[part.variable])
        if not terms:
            return cp.Constant(0.0)
        return terms[0] if len(terms) == 1 else cp.sum(cp.hstack(terms))

    def linear(self, quantity: str, scale: np.ndarray | float = 1.0,
               layers: set[str] | None = None) -> cp.Expression:
        """Return ``quantity / scale`` as a constant-coefficient expression, registering nothing.

        ``layers`` keeps only the contributions of those layers.
        """
        target = self.quantities[quantity]
        row_scale = np.broadcast_to(np.asarray(scale, dtype=float), (target.size,))
        terms = [sp.csr_matrix(sp.diags(1.0 / row_scale) @ part.aggregate @ sp.diags(part.coefficient))
                 @ self.variables[part.variable]
                 for part in target.contributions if layers is None or part.layer in layers]
        if not terms:
            return cp.Constant(np.zeros(target.size))
        return terms[0] if len(terms) == 1 else cp.sum(terms)

    def evaluate(self, quantity: str) -> np.ndarray:
        """Return the unscaled value of a quantity at the current variable values."""
        target = self.quantities[quantity]
        total = np.zeros(target.size)
        for part in target.contributions:
            value = self.variables[part.variable].value
            if value is not None:
                total += part.aggregate @ (part.coefficient * value)
        return total

    def evaluate_by_layer(self, quantity: str) -> dict[str, np.ndarray]:
        """Return the unscaled value of a quantity split by contributing layer."""
        target = self.quantities[quantity]
        totals: dict[str, np.ndarray] = {}
        for part in target.contributions:
            value = self.variables[part.variable].value
            if value is not None:
                share = part.aggregate @ (part.coefficient * value)
                totals[part.layer] = totals.get(part.layer, np.zeros(target.size)) + share
        return totals

    def layers_of(self, quantity: str) -> list[str]:
        """Return the layers that contribute to a quantity, in declaration order."""
        target = self.quantities.get(quantity)
        if target is None:
            return []
        return list(dict.fromkeys(part.layer for part in target.contributions))


def _entry_rows(aggregate: sp.csr_matrix) -> np.ndarray:
    """Return the row each variable entry adds to (-1 for none); each column has at most one."""
    columns = sp.csc_matrix(aggregate)
    rows = np.full(columns.shape[1], -1)
    filled = np.diff(columns.indptr) > 0
    rows[filled] = columns.indices[columns.indptr[:-1][filled]]
    return rows


def geometric_mean_constraints(
    builder: Builder, name: str, inputs: list[cp.Expression], weights: np.ndarray,
    bound: cp.Expression,
) -> list[cp.Constraint]:
    """Return cones stating ``bound <= prod_i inputs[i] ** weights[i]`` elementwise.

    ``weights`` has one row per input and one column per entry and sums to one
    over rows. The product is folded into a chain of 3-D power cones, because
    CVXPY (1.9) fails to stuff N-D power cones of different heights into one
    problem.
    """
    # Registered so that Economy.update rebuilds when a weight changes.
    weights = builder.constant(f"{name}.weights", weights)
    accumulated, total = inputs[0], weights[0]
    constraints: list[cp.Constraint] = []
    for i in range(1, len(inputs)):
        last = i == len(inputs) - 1
        target = bound if last else builder.variable(f"{name}.mean{i}", weights.shape[1])
        share = total / (total + weights[i])
        constraints.append(cp.constraints.PowCone3D(accumulated, inputs[i], target, share))
        accumulated, total = target, total + weights[i]
    return constraints
