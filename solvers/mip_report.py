"""The report of a mixed-integer solve and its tables.

The tables have the columns of the convex backend's report
(:mod:`tokenomy.solvers.report`), so ``--out`` writes the same CSV files for
every backend: ``routing``, ``tokens``, ``pools``, ``prices`` and
``equimarginal``. The equimarginal table here is the fixed-integer LP's own:
each row splits a column's reduced cost into what raises welfare (benefit)
and what lowers it (cost), at that LP's prices and with its tangent cuts.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .mip import PRICE_BASIS, MipResult
from .mip_form import USED, LinearForm, realised_effort_error
from .report import PHASES, pool_row

UNITS = {
    "welfare": "USD per period", "routing.requests": "requests per period",
    "routing.share": "share of the task's requests",
    "tokens.per_request": "tokens (or review minutes) per routed request",
    "equimarginal": "USD per token (token, training), per review minute (review), "
                    "per request (route, defer)",
    "pools.load": "tokens per second", "pools.waiting": "seconds per token",
    "gpus": "GPUs", "autonomy.expected_loss": "USD per period",
    "autonomy.review_minutes": "minutes per period", "autonomy.oversight_cost": "USD per period",
}


def mip_report(form: LinearForm, result: MipResult, backend: str = "pyomo") -> dict:
    """Return the report of a mixed-integer solve as JSON-ready data."""
    report: dict = {
        "instance": form.instance.name,
        "backend": backend,
        "solver": result.solver,
        "status": result.status.value,
        "termination": result.termination.value,
        "message": result.message,
        "diagnosis": result.diagnosis,
        "welfare": result.welfare,
        "bound": result.bound,
        "mip_gap": result.mip_gap,
        "mip_gap_limit": result.mip_gap_limit,
        "time_limit": result.time_limit,
        "price_basis": result.price_basis,
        "routing_margins": result.margins,
        "welfare_parts": result.welfare_parts,
        "approximation": dict(form.approximation),
        "timings": {"build": result.timings.build, "solve": result.timings.solve},
        "attempts": result.attempts,
        "units": UNITS,
    }
    if result.values is None:
        report.update(routing=[], tokens=[], pools=[], equimarginal=[], prices=[])
        return _clean(report)

    values = result.values
    report["approximation"]["effort_realised"] = realised_effort_error(form, values)
    report["routing"] = routing_table(form, values)
    report["tokens"] = token_table(form, values)
    report["pools"] = pool_table(form, values)
    report["gpus"] = [{"pool": row["pool"], "prefill": row["gpus_prefill"],
                       "decode": row["gpus_decode"]} for row in report["pools"]]
    report["investments"] = _investments(form, values)
    report["autonomy"] = result.schedule
    report["prices"] = [price.as_dict() for price in result.prices]
    report["equimarginal"] = equimarginal_table(form, result)
    return _clean(report)


def routing_table(form: LinearForm, values: np.ndarray) -> list[dict]:
    """Return requests and shares per option, then per deferred task."""
    data = form.data
    route = values[form.column_slice("route")]
    requests = values[form.column_slice("requests")]
    rows = [{"task": task, "model": model, "share": float(route[k]), "requests": float(requests[k])}
            for k in range(data.option_count) for task, model in [data.option_label(k)]]
    defer = values[form.column_slice("defer")]
    deferred = values[form.column_slice("deferred")]
    rows += [{"task": task, "model": "defer", "share": float(defer[x]),
              "requests": float(deferred[x])}
             for x, task in enumerate(data.tasks) if data.defer_enabled[x]]
    return rows


def token_table(form: LinearForm, values: np.ndarray) -> list[dict]:
    """Return tokens and review minutes per routed request of every option in use."""
    data, index = form.data, form.layers["agent"].index
    route = values[form.column_slice("route")]
    tokens = values[form.column_slice("tokens")]
    rows = []
    for j, (k, a) in enumerate(zip(index.pair_option, index.pair_use, strict=True)):
        if route[k] > USED:
            task, model = data.option_label(int(k))
            rows.append({"task": task, "model": model, "use": data.uses[a], "unit": "tokens",
                         "per_request": float(tokens[j] * data.scale[k, a] / route[k])})
    if "review" in form.variables:
        review = values[form.column_slice("review")].reshape(-1, len(data.reviews))
        for i, k in enumerate(index.risk_options):
            if route[k] <= USED:
                continue
            task, model = data.option_label(int(k))
            for h, use in enumerate(data.reviews):
                minutes = review[i, h] * data.review_risk_scale[h] / route[k]
                if minutes > 0:
                    rows.append({"task": task, "model": model, "use": use, "unit": "minutes",
                                 "per_request": float(minutes)})
    return rows


def pool_table(form: LinearForm, values: np.ndarray) -> list[dict]:
    """Return GPUs, load, utilisation and the smooth curve's delay per pool and phase."""
    data = form.data
    rows = []
    for p, name in enumerate(data.pools):
        rows.append(pool_row(
            name, form.instance.pools[name],
            {phase: float(values[form.column_slice(f"gpus_{phase}")][p]) for phase in PHASES},
            {phase: float(values[form.column_slice(f"load_{phase}")][p]) for phase in PHASES}))
    return rows


def equimarginal_table(form: LinearForm, result: MipResult) -> list[dict]:
    """Return the fixed-integer LP's marginal benefit and cost of each continuous decision.

    For a column j, every row i contributes ``-dual_i * A_ij`` to its reduced
    cost and the objective contributes ``c_j``. Positive contributions are
    the benefit and negative ones the cost, so ``residual = benefit - cost``
    is the reduced cost: about zero for a decision in use, at most zero for
    one at zero. Route and defer rows leave out the row that ties the share
    to its fixed request count, so they compare one more request sent to the
    option, with its total tokens held, against the routing price. They are
    zero for the margin option.
    Rows are in USD per unit of the ``equimarginal`` entry of the units.
    Empty when prices are withheld.
    """
    if result.row_duals is None or result.prices_reason is not None or result.values is None:
        return []
    data, index = form.data, form.layers["agent"].index
    values, scale = result.values, form.welfare_scale
    benefit, cost = _split_reduced_costs(form, result.row_duals)
    route = values[form.column_slice("route")]
    rows: list[dict] = []

    def add(kind, variable, entry, per_unit, task, model, use, amount, **extra):
        j = form.start[variable] + entry
        gain, loss = benefit[j] * scale / per_unit, cost[j] * scale / per_unit
        rows.append({"kind": kind, "task": task, "model": model, "use": use,
                     "amount": float(amount), "marginal_benefit": float(gain),
                     "marginal_cost": float(loss), "residual": float(gain - loss),
                     "used": bool(amount > USED), **extra})

    tokens = values[form.column_slice("tokens")]
    for j, (k, a) in enumerate(zip(index.pair_option, index.pair_use, strict=True)):
        if route[k] <= USED or np.isfinite(data.fixed_tokens[k, a]):
            continue
        task, model = data.option_label(int(k))
        volume = data.volume[data.option_task[k]]
        add("token", "tokens", j, volume * data.scale[k, a], task, model, data.uses[a],
            tokens[j] * data.scale[k, a] / route[k], share=float(route[k]))
    if "review" in form.variables:
        review = values[form.column_slice("review")]
        reviews = len(data.reviews)
        for i, k in enumerate(index.risk_options):
            if route[k] <= USED:
                continue
            task, model = data.option_label(int(k))
            volume = data.volume[data.option_task[k]]
            for h, use in enumerate(data.reviews):
                entry = i * reviews + h
                add("review", "review", entry, volume * data.review_risk_scale[h], task, model, use,
                    review[entry] * data.review_risk_scale[h] / route[k], share=float(route[k]))
    for k in range(data.option_count):
        task, model = data.option_label(k)
        add("route", "route", k, data.volume[data.option_task[k]], task, model, None, route[k],
            evaluated_at=PRICE_BASIS)
    defer = values[form.column_slice("defer")]
    for x, task in enumerate(data.tasks):
        if data.defer_enabled[x]:
            add("defer", "defer", x, data.volume[x], task, None, None, defer[x])
    if "training" in form.variables:
        capital = form.layers["capital"]
        inputs, scales = capital.training_inputs
        amount = values[form.column_slice("training")]
        for i, name in enumerate(inputs):
            add("training", "training", i, scales[i], None, None, name, amount[i] * scales[i])
    return rows


def _split_reduced_costs(form: LinearForm, row_duals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per column the sum of positive and of negative reduced-cost contributions.

    Both are in the form's scaled units, and the second is returned as a
    non-negative cost. The count rows (``router.count_requests`` and
    ``router.count_deferred``) are left out, as :func:`equimarginal_table` explains.
    """
    matrix, _, _ = form.stacked()
    duals = row_duals.copy()
    position = 0
    for block in form.rows:
        size = block.matrix.shape[0]
        if block.name in ("router.count_requests", "router.count_deferred"):
            duals[position:position + size] = 0.0
        position += size
    terms = sp.csc_matrix(-(sp.diags(duals) @ matrix))
    positive, negative = terms.copy(), terms.copy()
    positive.data = np.maximum(positive.data, 0.0)
    negative.data = np.minimum(negative.data, 0.0)
    benefit = np.asarray(positive.sum(axis=0)).ravel() + np.maximum(form.objective, 0.0)
    cost = -np.asarray(negative.sum(axis=0)).ravel() - np.minimum(form.objective, 0.0)
    return benefit, cost


def _investments(form: LinearForm, values: np.ndarray) -> dict:
    investments: dict = {}
    if "cache_on" in form.variables and form.variables["cache_on"].size:
        enabled = values[form.column_slice("cache_on")]
        investments["cache"] = {pool: bool(enabled[c] > 0.5)
                                for c, pool in enumerate(form.instance.capital.cache)}
    if "training_run" in form.variables:
        investments["training"] = bool(values[form.column_slice("training_run")][0] > 0.5)
    return investments


def _clean(value):
    """Replace NaN and infinity by None and numpy scalars by Python ones, for strict JSON."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
