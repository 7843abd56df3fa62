"""The mixed-integer form in Pyomo, solved with HiGHS, and its prices.

:func:`build_pyomo` turns a :class:`~tokenomy.solvers.mip_form.LinearForm`
into a Pyomo model with one ``Block`` per layer (router, agent, serving,
capital) and the markets as linking constraints on the parent model. Every
component is indexed and built from the form's sparse arrays.

:func:`solve_mip` solves the model with HiGHS (through Pyomo's APPSI
interface), then fixes every integer variable at its value and solves the
remaining LP. Prices are that LP's duals: ``price_basis`` is
``"fixed-integer LP"``. A MIP has no duals of its own, and the fixed-integer
LP's duals are the derivatives of its optimal welfare with respect to the
right-hand sides, with the discrete decisions held where the MIP put them.
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
from .mip_form import LAYERS, LinearForm, RowBlock
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
    ``mip_gap`` the relative gap HiGHS proved, ``mip_gap_limit`` the gap it was
    asked for, and ``schedule`` the published autonomy schedule.
    """

    price_basis: str = PRICE_BASIS
    mip_gap: float | None = None
    mip_gap_limit: float = DEFAULT_MIP_GAP
    values: np.ndarray | None = None
    schedule: list[dict] = field(default_factory=list)


def build_pyomo(form: LinearForm) -> pyo.ConcreteModel:
    """Return the Pyomo model of a form: one block per layer, markets on the parent."""
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
    # A plain attribute, not a Reference component: writers would list a column twice.
    model.form_columns = columns

    for rows in form.rows:
        getattr(model, rows.owner).add_component(_component(rows.name), _constraint(rows, columns))
    for name, rows in form.market_rows.items():
        model.add_component(f"market_{_component(name)}", _constraint(rows, columns))
    nonzero = np.flatnonzero(form.objective)
    model.welfare = pyo.Objective(expr=LinearExpression(
        constant=0.0, linear_coefs=form.objective[nonzero].tolist(),
        linear_vars=[columns[j] for j in nonzero]), sense=pyo.maximize)
    return model


def _component(name: str) -> str:
    return name.split(".", 1)[-1].replace("-", "_")


def _constraint(rows: RowBlock, columns: list) -> pyo.Constraint:
    matrix = rows.matrix

    def rule(_, i):
        start, stop = matrix.indptr[i], matrix.indptr[i + 1]
        if start == stop:
            return pyo.Constraint.Skip
        expression = LinearExpression(
            constant=0.0, linear_coefs=matrix.data[start:stop].tolist(),
            linear_vars=[columns[j] for j in matrix.indices[start:stop]])
        lower, upper = rows.lower[i], rows.upper[i]
        if lower == upper:
            return expression == float(upper)
        return (None if np.isinf(lower) else float(lower), expression,
                None if np.isinf(upper) else float(upper))

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
        Column values (``MipResult.values`` of an earlier solve). Their integer
        entries are fixed before solving, so only the fixed-integer LP is
        solved. Finite-difference checks use this to re-price after a change
        of right-hand sides.

    Returns
    -------
    MipResult
        Prices are reported when the MIP is solved to ``mip_gap`` and the
        fixed-integer LP to optimality; otherwise each carries ``None`` and a reason.
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
    if time_limit is not None:
        solver.config.time_limit = float(time_limit)
    label = f"HiGHS {_version()} via Pyomo {metadata.version('pyomo')}"

    columns = model.form_columns
    integer = np.concatenate([block.integer for block in form.variables.values()])
    if fix_integers is not None:
        for j in np.flatnonzero(integer):
            columns[j].fix(round(fix_integers[j]))
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
        return result

    scale = form.welfare_scale
    bound = outcome.best_objective_bound
    result.bound = None if bound is None or not np.isfinite(bound) else float(bound) * scale
    outcome.solution_loader.load_vars()
    mip_values = _column_values(columns)

    # The fixed-integer LP: every integer column held at its rounded MIP value.
    for j in np.flatnonzero(integer):
        columns[j].domain = pyo.Reals
        columns[j].fix(round(mip_values[j]))
    solver.config.time_limit = None
    started = time.perf_counter()
    lp = solver.solve(model)
    lp_seconds = time.perf_counter() - started
    timings.solve += lp_seconds
    attempts.append({"solver": "HiGHS", "stage": PRICE_BASIS,
                     "status": lp.termination_condition.name, "seconds": round(lp_seconds, 4)})
    if lp.termination_condition is not TerminationCondition.optimal:
        result.welfare = float(incumbent) * scale
        result.values = mip_values
        result.mip_gap = result.gap
        result.status = SolutionStatus.FEASIBLE
        result.message = (f"the fixed-integer LP stopped with {lp.termination_condition.name}; "
                          "prices are withheld")
        result.prices = read_prices(form, model, mip_values, None, result.message)
        return result
    lp.solution_loader.load_vars()
    values = _column_values(columns)
    duals = lp.solution_loader.get_duals()

    result.welfare = float(incumbent) * scale
    result.values = values
    result.mip_gap = result.gap
    reason = None
    if status is not SolutionStatus.OPTIMAL:
        reason = (f"HiGHS stopped with {outcome.termination_condition.name} before proving the "
                  f"gap of {mip_gap:g}; raise --time-limit or --mip-gap")
        result.message = reason
    result.prices = read_prices(form, model, values, duals, reason)
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


def read_prices(form: LinearForm, model, values: np.ndarray, duals: dict | None,
                reason: str | None) -> list[Price]:
    """Return one :class:`Price` per market row, converting fixed-integer LP duals to USD per unit.

    A row's price is its dual times the welfare scale over the row scale, times
    the market's report factor. Exogenous prices are copied. Rows with no
    variable in them (a market no layer contributes to) get price 0.
    """
    prices = []
    for spec in form.markets:
        usage_rows = form.usage[spec.name] @ values
        if spec.mode == "price":
            for i, label in enumerate(spec.labels):
                prices.append(Price(spec.name, label, spec.kind, spec.mode, float(spec.price[i]),
                                    spec.price_unit, None, None, float(usage_rows[i]), None, None))
            continue
        component = model.component(f"market_{_component(spec.name)}")
        dual = np.zeros(len(spec.rows))
        if duals is not None:
            for i in range(len(spec.rows)):
                if i in component:
                    dual[i] = DUAL_SIGN * duals.get(component[i], 0.0)
        price = dual * form.welfare_scale / spec.scale * spec.report_factor
        slack = spec.rhs - usage_rows
        for i, label in enumerate(spec.labels):
            binding = spec.mode == "equality" or abs(slack[i]) <= BINDING_TOLERANCE * max(1.0, spec.scale[i])
            prices.append(Price(
                spec.name, label, spec.kind, spec.mode,
                float(price[i]) + 0.0 if duals is not None and reason is None else None,
                spec.price_unit, bool(binding), float(slack[i]), float(usage_rows[i]),
                float(spec.rhs[i]) if spec.rhs_paths[i] else None, spec.rhs_paths[i], reason))
    return prices


def welfare_parts(form: LinearForm, values: np.ndarray) -> dict[str, float]:
    """Return each welfare part and each priced market's charge, in USD per period."""
    parts = {}
    for name in sorted(form.builder.quantities):
        if name.startswith("welfare."):
            matrix = form.quantity_matrix(name, 1)
            parts[name.removeprefix("welfare.")] = float((matrix @ values)[0])
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


def mip_report(form: LinearForm, result: MipResult) -> dict:
    """Return the report of a mixed-integer solve as JSON-ready data."""
    data = form.data
    report: dict = {
        "instance": form.instance.name,
        "backend": "pyomo",
        "solver": result.solver,
        "status": result.status.value,
        "termination": result.termination.value,
        "message": result.message,
        "welfare": result.welfare,
        "bound": result.bound,
        "mip_gap": result.mip_gap,
        "mip_gap_limit": result.mip_gap_limit,
        "time_limit": result.time_limit,
        "price_basis": result.price_basis,
        "welfare_parts": result.welfare_parts,
        "approximation": form.approximation,
        "timings": {"build": result.timings.build, "solve": result.timings.solve},
        "attempts": result.attempts,
        "units": {"welfare": "USD per period", "routing.requests": "requests per period",
                  "gpus": "GPUs", "autonomy.expected_loss": "USD per period",
                  "autonomy.review_minutes": "minutes per period",
                  "autonomy.oversight_cost": "USD per period"},
    }
    if result.values is None:
        return report

    values = result.values
    requests = values[form.column_slice("requests")]
    report["routing"] = [
        {"task": data.option_label(k)[0], "model": data.option_label(k)[1],
         "requests": float(requests[k])}
        for k in range(data.option_count)]
    deferred = values[form.column_slice("deferred")]
    report["deferred"] = {task: float(deferred[x]) for x, task in enumerate(data.tasks)}

    if data.pools:
        prefill = values[form.column_slice("gpus_prefill")]
        decode = values[form.column_slice("gpus_decode")]
        report["gpus"] = [{"pool": pool, "prefill": float(prefill[p]), "decode": float(decode[p])}
                          for p, pool in enumerate(data.pools)]

    investments = {}
    if "cache_on" in form.variables:
        enabled = values[form.column_slice("cache_on")]
        investments["cache"] = {pool: bool(enabled[c] > 0.5)
                                for c, pool in enumerate(form.instance.capital.cache)}
    if "training_run" in form.variables:
        investments["training"] = bool(values[form.column_slice("training_run")][0] > 0.5)
    report["investments"] = investments

    report["autonomy"] = result.schedule
    report["prices"] = [price.as_dict() for price in result.prices]
    return report
