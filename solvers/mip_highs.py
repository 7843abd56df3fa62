"""The mixed-integer form passed to highspy directly, in one ``passModel`` call.

This path skips Pyomo: the form's sparse rows are stacked into one CSC
matrix and handed to HiGHS with the column bounds, integrality and costs.
Prices come from the same fixed-integer LP as in :mod:`tokenomy.solvers.mip`.
"""

from __future__ import annotations

import logging
import time
from importlib import metadata

import highspy
import numpy as np
import scipy.sparse as sp

from .mip import DEFAULT_MIP_GAP, PRICE_BASIS, MipResult, autonomy_schedule, welfare_parts
from .mip_form import LinearForm
from .result import Price, SolutionStatus, TerminationReason, Timings

logger = logging.getLogger(__name__)

HIGHS_DUAL_SIGN = 1.0
"""highspy 1.16 reports row duals of a maximisation as d objective / d rhs already.

Checked against the Pyomo path in ``tests/test_mip.py``.
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


def stacked_rows(form: LinearForm) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Return the rows of the form as one CSC matrix with bounds, and each market's first row."""
    blocks = list(form.rows) + list(form.market_rows.values())
    matrix = sp.vstack([block.matrix for block in blocks], format="csc")
    lower = np.concatenate([block.lower for block in blocks])
    upper = np.concatenate([block.upper for block in blocks])
    offsets, position = [], sum(block.matrix.shape[0] for block in form.rows)
    for name, block in form.market_rows.items():
        offsets.append((name, position))
        position += block.matrix.shape[0]
    return matrix, lower, upper, offsets


def highs_model(form: LinearForm, integer: np.ndarray | None = None) -> highspy.HighsLp:
    """Return the form as a ``HighsLp`` (maximisation) ready for ``passModel``."""
    matrix, lower, upper, _ = stacked_rows(form)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = matrix.shape[1], matrix.shape[0]
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = form.objective
    lp.col_lower_ = np.concatenate([b.lower for b in form.variables.values()])
    lp.col_upper_ = np.concatenate([b.upper for b in form.variables.values()])
    lp.row_lower_, lp.row_upper_ = lower, upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    if integer is not None and integer.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
                           for flag in integer]
    return lp


def irreducible_infeasible_subset(form: LinearForm, lp: highspy.HighsLp) -> list[dict]:
    """Return the rows of an irreducible infeasible subset of the LP relaxation.

    HiGHS computes the subset from the LP with integrality dropped. Each row
    is mapped back to its market row and instance field, or to the layer
    constraint it belongs to. Returns an empty list when the LP relaxation is
    feasible (the integrality alone makes the instance infeasible).
    """
    relaxed = highspy.Highs()
    relaxed.setOptionValue("output_flag", False)
    relaxed.setOptionValue("iis_strategy", 2)  # compute the subset from the LP
    lp.integrality_ = []
    relaxed.passModel(lp)
    relaxed.run()
    if relaxed.getModelStatus() != highspy.HighsModelStatus.kInfeasible:
        return []
    status, iis = relaxed.getIis()
    if status != highspy.HighsStatus.kOk or not iis.valid_:
        logger.warning("HiGHS could not compute an irreducible infeasible subset")
        return []
    owners = []
    for block in form.rows:
        owners += [(block.name, None, None)] * block.matrix.shape[0]
    for name, block in form.market_rows.items():
        spec = next(spec for spec in form.markets if spec.name == name)
        owners += [(name, spec.labels[i], spec.rhs_paths[i]) for i in range(block.matrix.shape[0])]
    subset = []
    for row in iis.row_index_:
        name, label, path = owners[row]
        subset.append({"row": int(row), "market": name if label else None,
                       "label": label or f"{name} (layer constraint)", "rhs_path": path})
    return subset


def solve_highs(form: LinearForm, time_limit: float | None = None,
                mip_gap: float = DEFAULT_MIP_GAP) -> MipResult:
    """Solve the mixed-integer form with highspy, then its fixed-integer LP for the prices."""
    timings = Timings()
    started = time.perf_counter()
    integer = np.concatenate([block.integer for block in form.variables.values()])
    lp = highs_model(form, integer)
    timings.build = time.perf_counter() - started
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("mip_rel_gap", float(mip_gap))
    if time_limit is not None:
        highs.setOptionValue("time_limit", float(time_limit))
    label = f"HiGHS {metadata.version('highspy')} via highspy"

    started = time.perf_counter()
    highs.passModel(lp)
    highs.run()
    timings.solve = time.perf_counter() - started
    status = highs.getModelStatus()
    info = highs.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    termination, solution = STATUS_TABLE.get(
        status, (TerminationReason.UNKNOWN, SolutionStatus.NO_SOLUTION))
    if solution is SolutionStatus.FEASIBLE and not has_solution:
        solution = SolutionStatus.NO_SOLUTION
    attempts = [{"solver": "HiGHS", "stage": "MIP", "status": highs.modelStatusToString(status),
                 "seconds": round(timings.solve, 4)}]
    result = MipResult(termination, solution, None, None, label, timings=timings,
                       attempts=attempts, time_limit=time_limit, mip_gap_limit=mip_gap)
    if solution is SolutionStatus.NO_SOLUTION:
        result.message = f"HiGHS stopped with {highs.modelStatusToString(status)} and no solution"
        if termination is TerminationReason.INFEASIBLE:
            subset = irreducible_infeasible_subset(form, lp)
            if subset:
                result.diagnosis = {
                    "kind": "infeasible", "basis": "irreducible infeasible subset of the LP relaxation",
                    "rows": subset,
                    "message": "infeasible: these constraints cannot all hold (an irreducible "
                               "infeasible subset found by HiGHS): "
                               + "; ".join(row["label"] for row in subset),
                }
                result.message = result.diagnosis["message"]
            else:
                result.diagnosis = {
                    "kind": "infeasible", "basis": "integrality", "rows": [],
                    "message": "infeasible only with whole requests and GPUs: the LP relaxation is "
                               "feasible; run the convex backend (without --backend) for the "
                               "budgets that bind, or relax a budget",
                }
                result.message = result.diagnosis["message"]
        return result
    scale = form.welfare_scale
    result.welfare = info.objective_function_value * scale
    result.bound = info.mip_dual_bound * scale if integer.any() else result.welfare
    result.mip_gap = result.gap
    mip_values = np.array(highs.getSolution().col_value)

    # The fixed-integer LP: integer columns fixed, integrality dropped.
    lower, upper = np.array(lp.col_lower_), np.array(lp.col_upper_)
    lower[integer] = upper[integer] = np.round(mip_values[integer])
    lp.col_lower_, lp.col_upper_ = lower, upper
    lp.integrality_ = []
    pricing = highspy.Highs()
    pricing.setOptionValue("output_flag", False)
    started = time.perf_counter()
    pricing.passModel(lp)
    pricing.run()
    seconds = time.perf_counter() - started
    timings.solve += seconds
    lp_status = pricing.getModelStatus()
    attempts.append({"solver": "HiGHS", "stage": PRICE_BASIS,
                     "status": pricing.modelStatusToString(lp_status), "seconds": round(seconds, 4)})
    solution_values = pricing.getSolution()
    values = np.array(solution_values.col_value) if lp_status == highspy.HighsModelStatus.kOptimal \
        else mip_values
    reason = None
    if lp_status != highspy.HighsModelStatus.kOptimal:
        reason = f"the fixed-integer LP stopped with {pricing.modelStatusToString(lp_status)}"
        result.status = SolutionStatus.FEASIBLE
    elif solution is not SolutionStatus.OPTIMAL:
        reason = (f"HiGHS stopped with {highs.modelStatusToString(status)} before proving the gap "
                  f"of {mip_gap:g}; raise --time-limit or --mip-gap")
    result.message = reason or ""
    result.values = values
    duals = HIGHS_DUAL_SIGN * np.array(solution_values.row_dual) if reason is None else None
    result.prices = _prices(form, values, duals, reason)
    result.welfare_parts = welfare_parts(form, values)
    result.schedule = autonomy_schedule(form, values, result.prices)
    return result


def _prices(form: LinearForm, values: np.ndarray, duals: np.ndarray | None,
            reason: str | None) -> list[Price]:
    from .joint import BINDING_TOLERANCE

    _, _, _, offsets = stacked_rows(form)
    first = dict(offsets)
    prices = []
    for spec in form.markets:
        usage_rows = form.usage[spec.name] @ values
        if spec.mode == "price":
            prices += [Price(spec.name, label, spec.kind, spec.mode, float(spec.price[i]),
                             spec.price_unit, None, None, float(usage_rows[i]), None, None)
                       for i, label in enumerate(spec.labels)]
            continue
        dual = np.zeros(len(spec.rows)) if duals is None else \
            duals[first[spec.name]:first[spec.name] + len(spec.rows)]
        price = dual * form.welfare_scale / spec.scale * spec.report_factor
        slack = spec.rhs - usage_rows
        for i, label in enumerate(spec.labels):
            binding = spec.mode == "equality" or abs(slack[i]) <= BINDING_TOLERANCE * max(1.0, spec.scale[i])
            prices.append(Price(
                spec.name, label, spec.kind, spec.mode, None if reason else float(price[i]) + 0.0,
                spec.price_unit, bool(binding), float(slack[i]), float(usage_rows[i]),
                float(spec.rhs[i]) if spec.rhs_paths[i] else None, spec.rhs_paths[i], reason))
    return prices
