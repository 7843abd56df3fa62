"""Why the mixed-integer form has no solution: an irreducible infeasible subset.

Both backends build their model from the same
:class:`~tokenomy.solvers.mip_form.LinearForm`, row for row, so one
diagnosis serves both. HiGHS computes the subset on the LP relaxation (the
form's rows and column bounds, integrality dropped), and each of its rows is
mapped back to the market and instance field, or to the layer constraint,
that it came from. The Pyomo component that contains the row is named too, as
in the files that ``tokenomy export`` writes.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import highspy
import numpy as np

from .mip_form import LinearForm

logger = logging.getLogger(__name__)


@contextmanager
def _stdout_closed():
    """Send file descriptor 1 to the null device while the block runs.

    highspy 1.16 prints its banner from C++ when the first ``Highs`` object
    of a process is created, whatever the value of ``output_flag``. The banner would
    corrupt ``--json`` output, so construction runs with stdout closed, as
    Pyomo's APPSI interface does.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def new_highs() -> highspy.Highs:
    """Return a ``Highs`` object that writes nothing to the console."""
    with _stdout_closed():
        highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    return highs


def pass_form(highs: highspy.Highs, form: LinearForm, integer: np.ndarray | None = None) -> None:
    """Pass the form to HiGHS as a maximisation, integrality only where ``integer`` is true.

    This uses the ``passModel`` overload that takes numpy arrays: filling a
    ``HighsLp`` attribute by attribute copies each array into a C++ vector
    first, which took 0.36 s for 823,000 rows (measured with highspy 1.16).
    """
    matrix, lower, upper = form.stacked()
    column_lower, column_upper = form.column_bounds()
    # One entry per column even for an LP: highspy 1.16 reads entry 0 of an empty array.
    integrality = np.zeros(matrix.shape[1], dtype=np.int32) if integer is None \
        else integer.astype(np.int32)
    status = highs.passModel(
        matrix.shape[1], matrix.shape[0], matrix.nnz, int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMaximize), 0.0, form.objective, column_lower, column_upper,
        lower, upper, matrix.indptr.astype(np.int32, copy=False),
        matrix.indices.astype(np.int32, copy=False), matrix.data, integrality)
    if status == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the mixed-integer form in passModel")


def component_name(block: str, row: int) -> str:
    """Return the Pyomo name of a row, such as ``market_compute[0]`` or ``router.count_requests[3]``."""
    if "." in block:
        layer, name = block.split(".", 1)
        return f"{layer}.{name.replace('-', '_')}[{row}]"
    return f"market_{block.replace('-', '_')}[{row}]"


def irreducible_infeasible_subset(form: LinearForm) -> tuple[str, list[dict]]:
    """Return the status of the LP relaxation and, if infeasible, the rows of an IIS.

    The status is ``"infeasible"``, ``"unbounded"``, ``"feasible"`` or
    ``"unknown"``. Each row names its market (``None`` for a layer row), a
    label, the instance field of its right-hand side, and its Pyomo component.
    """
    relaxed = new_highs()
    relaxed.setOptionValue("iis_strategy", 2)  # compute the subset from the LP
    pass_form(relaxed, form)
    relaxed.run()
    status = relaxed.getModelStatus()
    if status in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit):
        return "feasible", []
    if status == highspy.HighsModelStatus.kUnbounded:
        return "unbounded", []
    if status != highspy.HighsModelStatus.kInfeasible:
        return "unknown", []
    outcome, iis = relaxed.getIis()
    if outcome != highspy.HighsStatus.kOk or not iis.valid_:
        logger.warning("HiGHS could not compute an irreducible infeasible subset (%s)", outcome)
        return "infeasible", []

    owners = form.row_owners()
    specs = {spec.name: spec for spec in form.markets}
    subset = []
    for row in np.asarray(iis.row_index_, dtype=int):
        block, position = owners[row]
        spec = specs.get(block) if block in form.market_rows else None
        component = component_name(block, position)
        subset.append({
            "row": int(row),
            "market": spec.name if spec else None,
            "label": spec.labels[position] if spec else f"{component} (layer constraint)",
            "rhs_path": spec.rhs_paths[position] if spec else None,
            "component": component,
        })
    return "infeasible", subset


def infeasibility_diagnosis(form: LinearForm) -> dict:
    """Return the diagnosis of a form that HiGHS reported infeasible.

    The keys are those of the convex backend's diagnosis: ``kind``, ``basis``,
    ``rows`` and ``message``. When the LP relaxation is feasible, only the
    whole requests and GPUs make the form infeasible, and the message states that.
    """
    status, subset = irreducible_infeasible_subset(form)
    if subset:
        fields = [f"{row['label']} ({row['rhs_path']})" if row["rhs_path"] else row["label"]
                  for row in subset]
        return {
            "kind": "infeasible", "basis": "irreducible infeasible subset of the LP relaxation",
            "rows": subset,
            "message": "infeasible: these constraints cannot all hold (an irreducible "
                       "infeasible subset found by HiGHS): " + "; ".join(fields),
        }
    if status == "feasible":
        return {
            "kind": "infeasible", "basis": "integrality", "rows": [],
            "message": "infeasible only with whole requests and GPUs: the LP relaxation is "
                       "feasible; run the convex backend (without --backend) for the "
                       "budgets that bind, or relax a budget",
        }
    if status == "unbounded":
        return {
            "kind": "unbounded", "basis": "LP relaxation", "rows": [],
            "message": "unbounded: the LP relaxation is unbounded, so some decision raises "
                       "welfare without limit; run `tokenomy validate` and check prices and "
                       "values for a missing cost",
        }
    return {
        "kind": "infeasible", "basis": "none", "rows": [],
        "message": "infeasible: HiGHS found no irreducible infeasible subset of the LP relaxation",
    }
