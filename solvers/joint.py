"""Solve the joint conic program and read certified prices from its duals."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from importlib import metadata

import cvxpy as cp
import numpy as np

from ..model.economy import Economy
from ..model.errors import SolveError
from .checks import CheckReport, Tolerances, check_solution
from .diagnose import diagnose_infeasibility, unbounded_directions
from .result import Price, Result, SolutionStatus, TerminationReason, Timings

logger = logging.getLogger(__name__)

FALLBACK_ORDER: tuple[str, ...] = ("CLARABEL", "ECOS", "SCS")
"""Solvers tried in turn until one returns a certified optimum."""

SOLVER_SETTINGS: dict[str, dict] = {
    "CLARABEL": {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 1000},
    "ECOS": {"abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9, "max_iters": 500},
    "SCS": {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 200_000},
}
"""Accuracy settings per solver; tight, because prices are differences of optima."""

TIME_LIMIT_OPTION = {"CLARABEL": "time_limit", "SCS": "time_limit_secs"}

BINDING_TOLERANCE = 1e-6
"""Relative slack below which a constraint counts as binding."""

# One table from CVXPY status to (termination reason, solution status).
STATUS_TABLE: dict[str, tuple[TerminationReason, SolutionStatus]] = {
    cp.OPTIMAL: (TerminationReason.OPTIMAL, SolutionStatus.OPTIMAL),
    cp.OPTIMAL_INACCURATE: (TerminationReason.NUMERICAL_ERROR, SolutionStatus.FEASIBLE),
    cp.INFEASIBLE: (TerminationReason.INFEASIBLE, SolutionStatus.NO_SOLUTION),
    cp.INFEASIBLE_INACCURATE: (TerminationReason.INFEASIBLE, SolutionStatus.NO_SOLUTION),
    cp.UNBOUNDED: (TerminationReason.UNBOUNDED, SolutionStatus.NO_SOLUTION),
    cp.UNBOUNDED_INACCURATE: (TerminationReason.UNBOUNDED, SolutionStatus.NO_SOLUTION),
    cp.USER_LIMIT: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    cp.SOLVER_ERROR: (TerminationReason.ERROR, SolutionStatus.NO_SOLUTION),
}


def solve(
    economy: Economy,
    solvers: Sequence[str] | None = None,
    time_limit: float | None = None,
    check: bool = True,
    tolerances: Tolerances | None = None,
) -> Result:
    """Solve the joint program, falling back through ``solvers`` until one certifies.

    Parameters
    ----------
    economy:
        The compiled program.
    solvers:
        CVXPY solver names in the order to try; default :data:`FALLBACK_ORDER`.
    time_limit:
        Seconds allowed for the whole fallback sequence. Each solver that takes
        a limit (Clarabel, SCS) gets what is left; ECOS takes none, and no
        solver is started once the time is used up.
    check:
        Run :func:`~tokenomy.solvers.checks.check_solution` after an optimal
        status and move to the next solver when it fails.
    tolerances:
        Tolerances of those checks.

    Returns
    -------
    Result
        Prices are certified when the status is ``optimal``; otherwise each
        carries ``None`` and a reason. An infeasible or unbounded result
        carries a :class:`~tokenomy.solvers.diagnose.Diagnosis`.
    """
    order = [name.upper() for name in (solvers or FALLBACK_ORDER)]
    installed = set(cp.installed_solvers())
    attempts: list[dict] = []
    timings = Timings(build=getattr(economy, "build_seconds", 0.0))
    last: tuple[str, TerminationReason, SolutionStatus] | None = None
    unchecked: tuple[str, CheckReport] | None = None

    deadline = None if time_limit is None else time.perf_counter() + time_limit
    for name in order:
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and remaining <= 0:
            attempts.append({"solver": name, "status": "not started: time limit reached"})
            break
        if name not in installed:
            attempts.append({"solver": name, "status": "not installed"})
            logger.warning("solver %s is not installed; trying the next one", name)
            continue
        termination, status = _run(economy, name, remaining, attempts, timings)
        last = (name, termination, status)
        if status is SolutionStatus.OPTIMAL:
            result = _result(economy, name, termination, status, attempts, timings, time_limit)
            if not check:
                return result
            report = check_solution(economy, result, tolerances)
            attempts[-1]["checks"] = "passed" if report.passed else "failed"
            result.checks = report.as_dict()
            if report.passed:
                return result
            logger.warning("solver %s: optimality checks failed (%s); trying the next solver",
                           name, report.violations[0])
            unchecked = unchecked or (name, report)
            continue
        if attempts[-1]["status"] in (cp.INFEASIBLE, cp.UNBOUNDED):
            break  # a proof from one solver is not overturned by the next
        logger.warning("solver %s returned %s; trying the next solver", name, attempts[-1]["status"])

    if unchecked is not None:
        return _unchecked_result(economy, unchecked, attempts, timings, time_limit)
    if last is None:
        raise SolveError("no solver could be run; installed: " + ", ".join(sorted(installed)))
    name, termination, status = last
    result = _result(economy, name, termination, status, attempts, timings, time_limit)
    if termination is TerminationReason.INFEASIBLE:
        result.diagnosis = diagnose_infeasibility(economy).as_dict()
        result.message = result.diagnosis["message"]
    elif termination in (TerminationReason.UNBOUNDED, TerminationReason.NUMERICAL_ERROR):
        directions = unbounded_directions(economy)
        if directions:
            result.diagnosis = {"kind": "unbounded", "message": "; ".join(directions),
                                "directions": directions}
            result.message = "welfare has no attained optimum: " + "; ".join(directions)
    return result


def _run(economy, name, time_limit, attempts, timings) -> tuple[TerminationReason, SolutionStatus]:
    """Run one solver and record the attempt; return its translated status."""
    options = dict(SOLVER_SETTINGS.get(name, {}))
    if time_limit is not None:
        if name in TIME_LIMIT_OPTION:
            options[TIME_LIMIT_OPTION[name]] = float(time_limit)
        else:
            logger.warning("solver %s takes no time limit; its iteration limit applies", name)

    started = time.perf_counter()
    failed = False
    try:
        with warnings.catch_warnings():
            # An inaccurate status is handled below; CVXPY's own warning would repeat it.
            warnings.simplefilter("ignore", UserWarning)
            economy.problem.solve(solver=name, **options)
        raw = economy.problem.status
    except cp.SolverError as error:
        raw, failed = cp.SOLVER_ERROR, True
        logger.warning("solver %s failed: %s", name, error)

    elapsed = time.perf_counter() - started
    if failed:
        # The problem's statistics still describe the previous attempt.
        timings.solve += elapsed
    else:
        stats = economy.problem.solver_stats
        solve_time = stats.solve_time if stats is not None and stats.solve_time else None
        compile_time = economy.problem.compilation_time or 0.0
        timings.compile += compile_time
        timings.solve += solve_time if solve_time is not None else max(elapsed - compile_time, 0.0)

    if raw not in STATUS_TABLE:
        logger.warning("solver %s returned unknown status %r", name, raw)
    termination, status = STATUS_TABLE.get(raw, (TerminationReason.UNKNOWN, SolutionStatus.NO_SOLUTION))
    if time_limit is not None and status is not SolutionStatus.OPTIMAL and elapsed >= 0.9 * time_limit:
        termination = TerminationReason.LIMIT

    attempts.append({"solver": name, "status": raw, "seconds": round(elapsed, 4)})
    return termination, status


def _unchecked_result(economy, unchecked, attempts, timings, time_limit) -> Result:
    """Re-solve with the first solver that reached optimal status though its checks failed."""
    name, report = unchecked
    if attempts[-1]["solver"] != name or attempts[-1].get("checks") != "failed":
        _run(economy, name, time_limit, attempts, timings)
    reason = (f"every solver failed the optimality checks; the allocation is {name}'s, whose "
              f"status was optimal, but its prices are not certified. First violation: "
              f"{report.violations[0]}")
    result = _result(economy, name, TerminationReason.NUMERICAL_ERROR, SolutionStatus.FEASIBLE,
                     attempts, timings, time_limit)
    result.prices = read_prices(economy, certified=False, reason=reason)
    result.checks = report.as_dict()
    result.message = reason
    logger.warning(reason)
    return result


def _result(economy, name, termination, status, attempts, timings, time_limit=None) -> Result:
    label = f"{name} {_version(name)}".strip()
    if status is SolutionStatus.NO_SOLUTION:
        return Result(termination, status, None, None, label, timings=timings, attempts=attempts,
                      time_limit=time_limit, message=f"{name} reported {attempts[-1]['status']}")
    scale = economy.welfare_scale
    welfare = float(economy.problem.value) * scale
    parts = {
        quantity.removeprefix("welfare."): float(economy.builder.evaluate(quantity)[0])
        for quantity in sorted(economy.builder.quantities) if quantity.startswith("welfare.")
    }
    for spec in economy.markets:
        if spec.mode == "price" and spec.quantity in economy.builder.quantities:
            usage = economy.builder.evaluate(spec.quantity)[spec.rows]
            parts[f"market.{spec.name}"] = -float(np.sum(spec.price * spec.weight * usage))
    reason = None if status is SolutionStatus.OPTIMAL else (
        f"{name} returned an uncertified solution ({attempts[-1]['status']}); "
        "raise --time-limit, tighten the solver tolerances or try another solver with --solver")
    prices = read_prices(economy, certified=reason is None, reason=reason)
    bound = welfare if status is SolutionStatus.OPTIMAL else None
    message = reason or ""
    if termination is TerminationReason.LIMIT:
        limit = f"the time limit of {time_limit:g} s" if time_limit is not None else "an iteration limit"
        message = f"stopped at {limit}; " + message
    return Result(termination, status, welfare, bound, label, prices=prices,
                  welfare_parts=parts, timings=timings, attempts=attempts,
                  time_limit=time_limit, message=message)


def read_prices(economy: Economy, certified: bool = True, reason: str | None = None) -> list[Price]:
    """Return one :class:`Price` per market row, converting duals to USD per unit.

    A constraint row's price is its dual times the welfare scale over the row
    scale, times the market's report factor; exogenous prices are copied.
    """
    prices = []
    for spec in economy.markets:
        usage_all = economy.builder.evaluate(spec.quantity) if spec.quantity in economy.builder.quantities \
            else np.zeros(int(spec.rows.max(initial=-1)) + 1)
        usage_rows = usage_all[spec.rows]
        if spec.mode == "price":
            for i, label in enumerate(spec.labels):
                prices.append(Price(spec.name, label, spec.kind, spec.mode, float(spec.price[i]),
                                    spec.price_unit, None, None, float(usage_rows[i]), None, None))
            continue
        constraint = economy.market_constraints[spec.name]
        dual = constraint.dual_value
        if certified and dual is None:
            certified, reason = False, "the solver returned no dual values"
        dual = np.zeros(len(spec.rows)) if dual is None else np.atleast_1d(dual)
        values = dual * economy.welfare_scale / spec.scale * spec.report_factor
        # Report right-hand sides in instance units (a routing row's share of 1 is the volume).
        unit_factor = 1.0 / np.where(spec.report_factor > 0, spec.report_factor, 1.0)
        rhs = spec.rhs + (spec.offset if len(spec.offset) else 0.0)
        slack = (rhs - usage_rows) * unit_factor
        usage_rows = usage_rows * unit_factor
        for i, label in enumerate(spec.labels):
            binding = spec.mode == "equality" or abs(slack[i]) <= BINDING_TOLERANCE * max(1.0, spec.scale[i])
            prices.append(Price(
                spec.name, label, spec.kind, spec.mode,
                float(values[i]) if certified else None, spec.price_unit,
                bool(binding), float(slack[i]), float(usage_rows[i]),
                float(rhs[i] * unit_factor[i]) if spec.rhs_paths[i] else None, spec.rhs_paths[i],
                None if certified else reason,
            ))
    return prices


def _version(name: str) -> str:
    package = {"CLARABEL": "clarabel", "ECOS": "ecos", "SCS": "scs", "HIGHS": "highspy"}.get(name)
    if package is None:
        return ""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
