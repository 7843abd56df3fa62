"""The mixed-integer form in Pyomo, solved with HiGHS, and its prices.

:func:`build_pyomo` turns a :class:`~tokenomy.solvers.mip_form.LinearForm`
into a Pyomo model with one ``Block`` per layer (router, agent, serving,
capital) and the markets as linking constraints on the parent model. Every
component is indexed and built from the form's sparse arrays.

:func:`solve_mip` solves the model with HiGHS (through Pyomo's APPSI
interface), then fixes the integer variables at their values and solves the
remaining LP. Prices are that LP's duals: ``price_basis`` is
``"fixed-integer LP"``. A MIP has no duals of its own, and the fixed-integer
LP's duals are the derivatives of its optimal welfare with respect to the
right-hand sides, with the discrete decisions held where the MIP put them.
One request count per task, its margin, stays free, so that the routing
row keeps a price (see :func:`~tokenomy.solvers.mip_form.margin_columns`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.appsi.base import TerminationCondition
from pyomo.contrib.appsi.solvers import Highs
from pyomo.core.expr.numeric_expr import LinearExpression

from ..model.errors import SolveError
from .joint import BINDING_TOLERANCE
from .mip_diagnose import infeasibility_diagnosis
from .mip_form import LAYERS, LinearForm, RowBlock, fixed_integer_bounds, margin_columns
from .result import Price, Result, SolutionStatus, TerminationReason, Timings

logger = logging.getLogger(__name__)

PRICE_BASIS = "fixed-integer LP"

DEFAULT_MIP_GAP = 1e-6
"""Relative MIP gap at which HiGHS stops (HiGHS' own default is 1e-4)."""

DUAL_SIGN = 1.0
"""APPSI's HiGHS duals of a maximisation are already d objective / d right-hand side.

Checked by the known-answer and finite-difference tests in ``tests/test_mip.py``.
"""

# One table from APPSI's termination condition to (termination reason, solution status).
# A limit with an incumbent is FEASIBLE; without one it is NO_SOLUTION (see _translate).
STATUS_TABLE: dict[TerminationCondition, tuple[TerminationReason, SolutionStatus]] = {
    TerminationCondition.optimal: (TerminationReason.OPTIMAL, SolutionStatus.OPTIMAL),
    TerminationCondition.maxTimeLimit: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    TerminationCondition.maxIterations: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    TerminationCondition.objectiveLimit: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    TerminationCondition.interrupted: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    TerminationCondition.minStepLength: (TerminationReason.NUMERICAL_ERROR, SolutionStatus.NO_SOLUTION),
    TerminationCondition.infeasible: (TerminationReason.INFEASIBLE, SolutionStatus.NO_SOLUTION),
    TerminationCondition.unbounded: (TerminationReason.UNBOUNDED, SolutionStatus.NO_SOLUTION),
    TerminationCondition.infeasibleOrUnbounded: (TerminationReason.INFEASIBLE, SolutionStatus.NO_SOLUTION),
    TerminationCondition.licensingProblems: (TerminationReason.ERROR, SolutionStatus.NO_SOLUTION),
    TerminationCondition.error: (TerminationReason.ERROR, SolutionStatus.NO_SOLUTION),
    TerminationCondition.unknown: (TerminationReason.UNKNOWN, SolutionStatus.NO_SOLUTION),
}


@dataclass
class MipResult(Result):
    """Outcome of a mixed-integer solve.

    Besides the fields of :class:`~tokenomy.solvers.result.Result`:
    ``values`` contains every column of the form at the fixed-integer LP optimum,
    ``mip_gap`` the relative gap HiGHS proved, ``mip_gap_limit`` the gap
    requested, ``schedule`` the published autonomy schedule, ``margins`` the
    margin option of each task (a model name or ``"defer"``), ``row_duals``
    the fixed-integer LP's dual of every row of ``LinearForm.stacked()`` (d
    objective / d right-hand side, in the form's scaled units) and
    ``prices_reason`` why prices are withheld, if they are.
    """

    price_basis: str = PRICE_BASIS
    mip_gap: float | None = None
    mip_gap_limit: float = DEFAULT_MIP_GAP
    values: np.ndarray | None = None
    schedule: list[dict] = field(default_factory=list)
    margins: dict[str, str] = field(default_factory=dict)
    row_duals: np.ndarray | None = None
    prices_reason: str | None = None


def build_pyomo(form: LinearForm) -> pyo.ConcreteModel:
    """Return the Pyomo model of a form: one block per layer, markets on the parent.

    Besides the components, the model carries two plain attributes:
    ``form_columns`` (the variable of each form column) and ``form_rows``
    (the constraint of each row of ``form.stacked()``, ``None`` for an empty
    row, which is left out).
    """
    model = pyo.ConcreteModel(name=form.instance.name or "tokenomy")
    for layer in LAYERS:
        model.add_component(layer, pyo.Block())
    columns: list = []
    for block in form.variables.values():
        owner = getattr(model, block.layer)
        lower = np.where(np.isfinite(block.lower), block.lower, None)
        upper = np.where(np.isfinite(block.upper), block.upper, None)
        integer = block.integer
        variable = pyo.Var(
            range(block.size),
            domain=lambda _, i, integer=integer: pyo.Integers if integer[i] else pyo.Reals,
            bounds=lambda _, i, lower=lower, upper=upper: (lower[i], upper[i]),
        )
        owner.add_component(block.name, variable)
        columns.extend(variable[i] for i in range(block.size))
    # Plain attributes, not Reference components: writers would list a column twice.
    model.form_columns = columns

    rows: list = []
    for block in form.rows:
        component = _constraint(block, columns)
        getattr(model, block.owner).add_component(_component(block.name), component)
        rows += [component[i] if i in component else None for i in range(block.matrix.shape[0])]
    for name, block in form.market_rows.items():
        component = _constraint(block, columns)
        model.add_component(f"market_{_component(name)}", component)
        rows += [component[i] if i in component else None for i in range(block.matrix.shape[0])]
    model.form_rows = rows
    nonzero = np.flatnonzero(form.objective)
    model.welfare = pyo.Objective(expr=LinearExpression(
        constant=0.0, linear_coefs=form.objective[nonzero].tolist(),
        linear_vars=[columns[j] for j in nonzero]), sense=pyo.maximize)
    return model


def _component(name: str) -> str:
    return name.split(".", 1)[-1].replace("-", "_")


def _constraint(rows: RowBlock, columns: list) -> pyo.Constraint:
    matrix = rows.matrix
    pointers = matrix.indptr.tolist()
    indices, coefficients = matrix.indices.tolist(), matrix.data.tolist()
    lower, upper = rows.lower.tolist(), rows.upper.tolist()

    def rule(_, i):
        start, stop = pointers[i], pointers[i + 1]
        if start == stop:
            return pyo.Constraint.Skip
        expression = LinearExpression(
            constant=0.0, linear_coefs=coefficients[start:stop],
            linear_vars=[columns[j] for j in indices[start:stop]])
        if lower[i] == upper[i]:
            return expression == upper[i]
        return (None if np.isinf(lower[i]) else lower[i], expression,
                None if np.isinf(upper[i]) else upper[i])

    return pyo.Constraint(range(matrix.shape[0]), rule=rule)


def solve_mip(form: LinearForm, time_limit: float | None = None,
              mip_gap: float = DEFAULT_MIP_GAP, fix_integers: np.ndarray | None = None) -> MipResult:
    """Solve the mixed-integer form, then its fixed-integer LP for the prices.

    Parameters
    ----------
    form:
        The form from :func:`~tokenomy.solvers.mip_form.build_form`.
    time_limit:
        Seconds allowed to the MIP solve (the LP solve that follows is not limited).
    mip_gap:
        Relative gap between incumbent and bound at which HiGHS stops.
    fix_integers:
        Column values (``MipResult.values`` of an earlier solve). When given,
        the MIP is skipped: the integer columns are fixed at these values
        (with the same margins) and only the fixed-integer LP is solved.
        Finite-difference checks use this to re-price after a change of
        right-hand sides.

    Returns
    -------
    MipResult
        Prices are reported when the MIP is solved to ``mip_gap`` and the
        fixed-integer LP to optimality; otherwise each carries ``None`` and a
        reason. An infeasible form carries a ``diagnosis`` naming an
        irreducible infeasible subset of its LP relaxation.
    """
    if mip_gap < 0:
        raise SolveError(f"invalid --mip-gap {mip_gap}: give a relative gap of 0 or more")
    timings = Timings()
    started = time.perf_counter()
    model = build_pyomo(form)
    timings.build = time.perf_counter() - started
    solver = Highs()
    if not solver.available():
        raise SolveError("HiGHS is not available to Pyomo; install highspy (pip install highspy)")
    solver.config.load_solution = False
    solver.config.mip_gap = mip_gap
    label = f"HiGHS {_version()} via Pyomo {metadata.version('pyomo')}"
    if fix_integers is not None:
        result = MipResult(TerminationReason.OPTIMAL, SolutionStatus.OPTIMAL, None, None, label,
                           timings=timings, time_limit=time_limit, mip_gap_limit=mip_gap)
        return _price(form, model, solver, result, np.asarray(fix_integers, dtype=float), None)

    if time_limit is not None:
        solver.config.time_limit = float(time_limit)
    started = time.perf_counter()
    outcome = solver.solve(model)
    timings.solve = time.perf_counter() - started
    incumbent = outcome.best_feasible_objective
    termination, status = _translate(outcome.termination_condition, incumbent is not None)
    attempts = [{"solver": "HiGHS", "stage": "MIP", "status": outcome.termination_condition.name,
                 "seconds": round(timings.solve, 4)}]
    result = MipResult(termination, status, None, None, label, timings=timings, attempts=attempts,
                       time_limit=time_limit, mip_gap_limit=mip_gap)
    if status is SolutionStatus.NO_SOLUTION:
        result.message = f"HiGHS stopped with {outcome.termination_condition.name} and no solution"
        if termination in (TerminationReason.INFEASIBLE, TerminationReason.UNBOUNDED):
            result.diagnosis = infeasibility_diagnosis(form)
            result.message = result.diagnosis["message"]
        return result

    bound = outcome.best_objective_bound
    result.bound = None if bound is None or not np.isfinite(bound) else float(bound) * form.welfare_scale
    outcome.solution_loader.load_vars()
    _price(form, model, solver, result, _column_values(model.form_columns), float(incumbent))
    result.mip_gap = result.gap
    if status is not SolutionStatus.OPTIMAL and result.prices_reason is None:
        withhold_prices(form, result, result.values,
                        f"HiGHS stopped with {outcome.termination_condition.name} before "
                        f"proving the gap of {mip_gap:g}; raise --time-limit or --mip-gap")
    return result


def _price(form: LinearForm, model, solver, result: MipResult, mip_values: np.ndarray,
           incumbent: float | None) -> MipResult:
    """Fix every integer column except the margins, solve the LP, and fill in values and prices.

    ``incumbent`` is the MIP's scaled objective, reported as the welfare when
    the fixed LP fails. It is ``None`` when no MIP was solved.
    """
    margins = margin_columns(form, mip_values)
    lower, _ = fixed_integer_bounds(form, mip_values, margins)
    columns = model.form_columns
    free = {margin["column"] for margin in margins.values()}
    for j in np.flatnonzero(form.integer_mask()):
        columns[j].domain = pyo.Reals
        if j not in free:
            columns[j].fix(float(lower[j]))
    solver.config.time_limit = None
    started = time.perf_counter()
    lp = solver.solve(model)
    seconds = time.perf_counter() - started
    result.timings.solve += seconds
    result.attempts.append({"solver": "HiGHS", "stage": PRICE_BASIS,
                            "status": lp.termination_condition.name, "seconds": round(seconds, 4)})
    result.margins = {task: margin["model"] for task, margin in margins.items()}
    scale = form.welfare_scale

    if lp.termination_condition is not TerminationCondition.optimal:
        result.values = mip_values
        result.welfare = None if incumbent is None else incumbent * scale
        result.status = SolutionStatus.FEASIBLE if incumbent is not None \
            else SolutionStatus.NO_SOLUTION
        withhold_prices(form, result, mip_values, f"the fixed-integer LP stopped with "
                        f"{lp.termination_condition.name}; prices are withheld")
        return result

    lp.solution_loader.load_vars()
    values = _column_values(columns)
    duals = lp.solution_loader.get_duals()
    result.values = values
    # The fixed LP re-optimises the continuous columns, so its welfare is the
    # incumbent's or better (by at most the MIP tolerances) and matches the values.
    result.welfare = float(lp.best_feasible_objective) * scale
    result.row_duals = DUAL_SIGN * np.array(
        [0.0 if row is None else duals.get(row, 0.0) for row in model.form_rows])
    result.prices = market_prices(form, values, result.row_duals, None)
    result.welfare_parts = welfare_parts(form, values)
    result.schedule = autonomy_schedule(form, values, result.prices)
    return result


def _column_values(columns: list) -> np.ndarray:
    """Return column values; a column in no row or objective is left unset and reads 0.

    Such a column is a non-negative variable nothing uses (the exposure of a
    class without loss, say), so 0 is an optimal value for it.
    """
    values = [v.value for v in columns]
    return np.array([0.0 if value is None else float(value) for value in values])


def _translate(condition: TerminationCondition, has_solution: bool):
    termination, status = STATUS_TABLE.get(
        condition, (TerminationReason.UNKNOWN, SolutionStatus.NO_SOLUTION))
    if condition not in STATUS_TABLE:
        logger.warning("HiGHS returned unknown termination condition %r", condition)
    if status is SolutionStatus.FEASIBLE and not has_solution:
        status = SolutionStatus.NO_SOLUTION
    return termination, status


def withhold_prices(form: LinearForm, result: MipResult, values: np.ndarray, reason: str) -> None:
    """Record ``reason`` as the result's message and report every price as withheld."""
    result.prices_reason = reason
    result.message = reason
    result.prices = market_prices(form, values, None, reason)


def market_prices(form: LinearForm, values: np.ndarray, row_duals: np.ndarray | None,
                  reason: str | None) -> list[Price]:
    """Return one :class:`Price` per market row, converting fixed-integer LP duals to USD per unit.

    ``row_duals`` is indexed like ``form.stacked()``. A row's price is its
    dual times the welfare scale over the row scale, times the market's
    report factor. Exogenous prices are copied. Rows with no variable in them
    (a market no layer contributes to) get price 0. With ``row_duals`` or
    ``reason`` missing, every constraint price is ``None``.
    """
    offsets = form.market_offsets()
    prices = []
    for spec in form.markets:
        usage_rows = form.usage[spec.name] @ values
        if spec.mode == "price":
            prices += [Price(spec.name, label, spec.kind, spec.mode, float(spec.price[i]),
                             spec.price_unit, None, None, float(usage_rows[i]), None, None)
                       for i, label in enumerate(spec.labels)]
            continue
        first = offsets[spec.name]
        dual = np.zeros(len(spec.rows)) if row_duals is None else \
            row_duals[first:first + len(spec.rows)]
        price = dual * form.welfare_scale / spec.scale * spec.report_factor
        certified = row_duals is not None and reason is None
        slack = spec.rhs - usage_rows
        for i, label in enumerate(spec.labels):
            binding = spec.mode == "equality" or abs(slack[i]) <= BINDING_TOLERANCE * max(1.0, spec.scale[i])
            prices.append(Price(
                spec.name, label, spec.kind, spec.mode, float(price[i]) + 0.0 if certified else None,
                spec.price_unit, bool(binding), float(slack[i]), float(usage_rows[i]),
                float(spec.rhs[i]) if spec.rhs_paths[i] else None, spec.rhs_paths[i], reason))
    return prices


def welfare_parts(form: LinearForm, values: np.ndarray) -> dict[str, float]:
    """Return each welfare part and each priced market's charge, in USD per period."""
    parts = {name: float((row @ values)[0]) for name, row in form.welfare_rows.items()}
    for spec in form.markets:
        if spec.mode == "price":
            usage = form.usage[spec.name] @ values
            parts[f"market.{spec.name}"] = -float(np.sum(spec.price * spec.weight * usage))
    return parts


def autonomy_schedule(form: LinearForm, values: np.ndarray, prices: list[Price]) -> list[dict]:
    """Return the chosen level per action class, with what each level would cost.

    For every level the row gives the expected loss of the class's wrong
    actions at that level (USD per period), its review minutes and its
    oversight cost. Its ``total`` adds the loss at the risk price, the
    minutes at the oversight price and the oversight cost. The chosen level has the lowest
    total unless other markets bind.
    """
    instance, data = form.instance, form.data
    levels, count = form.levels, len(form.levels)
    chosen = values[form.column_slice("autonomy")].reshape(len(form.action_classes), count)
    routed = float(np.sum(data.volume[data.option_task] * values[form.column_slice("route")]))
    exposure = 0.0
    if "exposure" in form.variables:
        from .mip_form import _risk_options

        options = _risk_options(form)
        tasks = data.option_task[options]
        loss = data.volume[tasks] * data.loss[tasks] * data.wrong_action[options]
        exposure = float(loss @ values[form.column_slice("exposure")])
    risk_price = _first_price(prices, "risk")
    oversight_price = _first_price(prices, "oversight")
    schedule = []
    for c, action in enumerate(form.action_classes):
        share = instance.autonomy.loss_share.get(action, 1.0 if action == "irreversible" else 0.0)
        options = []
        for level in levels:
            setting = instance.autonomy.levels[level]
            loss = setting.risk_multiplier * share * exposure
            minutes = setting.review_minutes * routed
            cost = setting.cost * routed
            options.append({
                "level": level, "risk_multiplier": setting.risk_multiplier,
                "expected_loss": loss, "review_minutes": minutes, "oversight_cost": cost,
                "total": (risk_price or 0.0) * loss + (oversight_price or 0.0) * minutes + cost,
            })
        level = levels[int(np.argmax(chosen[c]))]
        schedule.append({"action": action, "level": level, "loss_share": share,
                         "risk_price": risk_price, "oversight_price": oversight_price,
                         "levels": options})
    return schedule


def _first_price(prices: list[Price], kind: str) -> float | None:
    for price in prices:
        if price.kind == kind:
            return price.price
    return None


def _version() -> str:
    try:
        return metadata.version("highspy")
    except metadata.PackageNotFoundError:
        return ""
