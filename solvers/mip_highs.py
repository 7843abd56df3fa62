"""The mixed-integer form passed to highspy directly, in one ``passModel`` call.

This path skips Pyomo: the form's sparse rows are stacked into one CSC
matrix and handed to HiGHS with the column bounds, integrality and costs.
Prices come from the same fixed-integer LP as in :mod:`tokenomy.solvers.mip`,
solved by the same ``Highs`` object after the MIP: the integer columns get
fixed bounds and lose their integrality, so the model is not passed twice.
"""

from __future__ import annotations

import logging
import time
from importlib import metadata

import highspy
import numpy as np

from .mip import (
    DEFAULT_MIP_GAP,
    PRICE_BASIS,
    MipResult,
    autonomy_schedule,
    market_prices,
    welfare_parts,
    withhold_prices,
)
from .mip_diagnose import infeasibility_diagnosis, new_highs, pass_form
from .mip_form import LinearForm, fixed_integer_bounds, margin_columns
from .result import SolutionStatus, TerminationReason, Timings

logger = logging.getLogger(__name__)

HIGHS_DUAL_SIGN = 1.0
"""highspy 1.16 reports row duals of a maximisation as d objective / d rhs already.

Checked against the Pyomo path and by finite differences in ``tests/test_mip.py``.
"""

# One table from highspy's model status to (termination reason, solution status).
STATUS_TABLE: dict[highspy.HighsModelStatus, tuple[TerminationReason, SolutionStatus]] = {
    highspy.HighsModelStatus.kOptimal: (TerminationReason.OPTIMAL, SolutionStatus.OPTIMAL),
    highspy.HighsModelStatus.kTimeLimit: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    highspy.HighsModelStatus.kIterationLimit: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    highspy.HighsModelStatus.kSolutionLimit: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    highspy.HighsModelStatus.kInterrupt: (TerminationReason.LIMIT, SolutionStatus.FEASIBLE),
    highspy.HighsModelStatus.kInfeasible: (TerminationReason.INFEASIBLE, SolutionStatus.NO_SOLUTION),
    highspy.HighsModelStatus.kUnbounded: (TerminationReason.UNBOUNDED, SolutionStatus.NO_SOLUTION),
    highspy.HighsModelStatus.kUnboundedOrInfeasible: (
        TerminationReason.INFEASIBLE, SolutionStatus.NO_SOLUTION),
    highspy.HighsModelStatus.kSolveError: (TerminationReason.ERROR, SolutionStatus.NO_SOLUTION),
}

SOLUTION_FEASIBLE = 2
"""``HighsInfo.primal_solution_status`` of a feasible point (kSolutionStatusFeasible)."""


def set_integrality(highs: highspy.Highs, integer: np.ndarray, flag: int) -> None:
    """Mark the columns where ``integer`` is true as integer (``flag`` 1) or continuous (0)."""
    columns = np.flatnonzero(integer).astype(np.int32)
    if len(columns):
        highs.changeColsIntegrality(len(columns), columns, np.full(len(columns), flag, np.uint8))


def solve_highs(form: LinearForm, time_limit: float | None = None,
                mip_gap: float = DEFAULT_MIP_GAP,
                fix_integers: np.ndarray | None = None) -> MipResult:
    """Solve the mixed-integer form with highspy, then its fixed-integer LP for the prices.

    Parameters and result are those of :func:`tokenomy.solvers.mip.solve_mip`.
    """
    timings = Timings()
    started = time.perf_counter()
    integer = form.integer_mask()
    highs = new_highs()
    highs.setOptionValue("mip_rel_gap", float(mip_gap))
    if time_limit is not None:
        highs.setOptionValue("time_limit", float(time_limit))
    label = f"HiGHS {metadata.version('highspy')} via highspy"
    pass_form(highs, form, None if fix_integers is not None else integer)
    timings.build = time.perf_counter() - started
    if fix_integers is not None:
        result = MipResult(TerminationReason.OPTIMAL, SolutionStatus.OPTIMAL, None, None, label,
                           timings=timings, time_limit=time_limit, mip_gap_limit=mip_gap)
        return _price(form, highs, result, np.asarray(fix_integers, dtype=float), integer,
                      objective=None)

    started = time.perf_counter()
    highs.run()
    timings.solve = time.perf_counter() - started
    status = highs.getModelStatus()
    info = highs.getInfo()
    termination, solution = STATUS_TABLE.get(
        status, (TerminationReason.UNKNOWN, SolutionStatus.NO_SOLUTION))
    if status not in STATUS_TABLE:
        logger.warning("HiGHS returned unknown model status %r", status)
    if solution is SolutionStatus.FEASIBLE and info.primal_solution_status != SOLUTION_FEASIBLE:
        solution = SolutionStatus.NO_SOLUTION
    attempts = [{"solver": "HiGHS", "stage": "MIP", "status": highs.modelStatusToString(status),
                 "seconds": round(timings.solve, 4), "nodes": int(info.mip_node_count),
                 "simplex_iterations": int(info.simplex_iteration_count)}]
    result = MipResult(termination, solution, None, None, label, timings=timings,
                       attempts=attempts, time_limit=time_limit, mip_gap_limit=mip_gap)
    if solution is SolutionStatus.NO_SOLUTION:
        result.message = f"HiGHS stopped with {highs.modelStatusToString(status)} and no solution"
        if termination in (TerminationReason.INFEASIBLE, TerminationReason.UNBOUNDED):
            result.diagnosis = infeasibility_diagnosis(form)
            result.message = result.diagnosis["message"]
        return result

    scale = form.welfare_scale
    result.bound = info.mip_dual_bound * scale if integer.any() else None
    mip_values = np.array(highs.getSolution().col_value)
    _price(form, highs, result, mip_values, integer, objective=info.objective_function_value)
    if result.bound is None and result.welfare is not None:
        result.bound = result.welfare
    result.mip_gap = result.gap
    if solution is not SolutionStatus.OPTIMAL and result.prices_reason is None:
        withhold_prices(form, result, result.values,
                        f"HiGHS stopped with {highs.modelStatusToString(status)} before "
                        f"proving the gap of {mip_gap:g}; raise --time-limit or --mip-gap")
    return result


def _price(form: LinearForm, highs: highspy.Highs, result: MipResult, mip_values: np.ndarray,
           integer: np.ndarray, objective: float | None) -> MipResult:
    """Solve the fixed-integer LP on the same ``Highs`` object and fill in values and prices.

    ``objective`` is the MIP incumbent's (scaled) objective, reported as the
    welfare when the fixed LP fails. It is ``None`` when no MIP was solved.
    """
    margins = margin_columns(form, mip_values)
    lower, upper = fixed_integer_bounds(form, mip_values, margins)
    started = time.perf_counter()
    columns = np.arange(form.columns, dtype=np.int32)
    highs.changeColsBounds(len(columns), columns, lower, upper)
    set_integrality(highs, integer, 0)
    highs.setOptionValue("time_limit", float("inf"))
    highs.run()
    seconds = time.perf_counter() - started
    result.timings.solve += seconds
    status = highs.getModelStatus()
    result.attempts.append({"solver": "HiGHS", "stage": PRICE_BASIS,
                            "status": highs.modelStatusToString(status),
                            "seconds": round(seconds, 4)})
    result.margins = {task: margin["model"] for task, margin in margins.items()}
    scale = form.welfare_scale

    if status != highspy.HighsModelStatus.kOptimal:
        result.values = mip_values
        result.welfare = None if objective is None else objective * scale
        result.status = SolutionStatus.FEASIBLE if objective is not None \
            else SolutionStatus.NO_SOLUTION
        withhold_prices(form, result, mip_values, f"the fixed-integer LP stopped with "
                        f"{highs.modelStatusToString(status)}; prices are withheld")
        return result

    solution = highs.getSolution()
    values = np.array(solution.col_value)
    result.values = values
    # The fixed LP re-optimises the continuous columns, so its welfare is the
    # incumbent's or better (by at most the MIP tolerances) and matches the values.
    result.welfare = highs.getInfo().objective_function_value * scale
    result.row_duals = HIGHS_DUAL_SIGN * np.array(solution.row_dual)
    result.prices = market_prices(form, values, result.row_duals, None)
    result.welfare_parts = welfare_parts(form, values)
    result.schedule = autonomy_schedule(form, values, result.prices)
    return result
