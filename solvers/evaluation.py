"""Token-aware evaluation: what each task's allocation is worth and what it costs.

Each task gets a vector in USD per period, valued at the equilibrium prices of
the joint optimum:

* ``value``: expected value of the task's successes, plus the surplus of
  deferred requests, minus the quality a shared cache costs it.
* ``compute_cost``: list-price spend on its prompt context and tokens, net of
  prefix-cache savings, plus the compute market's price times that spend.
* ``latency_cost``: its latency usage at the latency price (mean seconds per
  request under an SLA, times the SLA's price).
* ``risk_cost``: its expected loss from wrong irreversible actions, at the
  risk price.
* ``serving_cost``: its prefill, decode and KV-cache tokens at their prices,
  which cover the GPUs that serve them and the queueing delay they add.
* ``review_cost``: review wages, plus review minutes at the oversight price.
* ``other_cost``: usage of resource markets (energy, for example) at their prices.
* ``net``: value minus every cost.

Two rows that no task owns complete the account. ``shared`` contains what the
serving and capital layers earn and spend: queueing delay, GPUs, cache
investment, training and its capability gain, and the capacity that serving
supplies, credited at its prices. ``budgets`` contains each budget and capacity
right-hand side at its price, as a negative cost.

Summed over every row, each column equals the welfare parts it covers minus
its markets' slack at their prices, and ``net`` adds up to the priced
welfare: welfare plus every constraint's slack valued at its price. At the
optimum complementary slackness makes each slack term zero, so the rows add
up to the welfare and welfare parts of the solve. ``welfare`` is the same
split with only what welfare itself charges (no budget at its price); it adds
up to welfare at any allocation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from ..model.economy import Economy
from ..model.layers.base import WELFARE
from ..model.markets import MarketSpec
from .result import Result

logger = logging.getLogger(__name__)

VALUE_COLUMN = "value"
COST_COLUMNS = ("compute_cost", "latency_cost", "risk_cost", "serving_cost", "review_cost",
                "other_cost")
COLUMNS = (VALUE_COLUMN, *COST_COLUMNS)

PART_COLUMNS = {
    "value": VALUE_COLUMN, "defer": VALUE_COLUMN, "cache_quality": VALUE_COLUMN,
    "capability": VALUE_COLUMN, "compute": "compute_cost", "waiting": "serving_cost",
    "cache": "serving_cost", "review": "review_cost",
}
"""Welfare part (``welfare.<part>``) to the column it enters; others enter ``other_cost``."""

KIND_COLUMNS = {
    "compute": "compute_cost", "latency": "latency_cost", "risk": "risk_cost",
    "prefill": "serving_cost", "decode": "serving_cost", "kv": "serving_cost",
    "gpu": "serving_cost", "oversight": "review_cost", "resource": "other_cost",
}
"""Market kind to the cost column its charge enters; other kinds enter ``other_cost``."""

SHARED, BUDGETS = "shared", "budgets"
OPTIMUM = "joint optimum"


def evaluate_solve(economy: Economy, result: Result) -> dict:
    """Return the evaluation of a plain solve, whose realised allocation is the optimum.

    The gap columns are zero by construction, but the table still shows the
    vector of each task. Without certified prices the table is empty and
    ``reason`` gives the cause.
    """
    if result.welfare is None:
        return {"reason": "the solve returned no allocation", "rows": []}
    if not result.certified:
        return {"reason": "the evaluation values each task at the solve's prices, which are "
                          "not certified", "rows": []}
    prices = {price.row: price.price for price in result.prices}
    variables = {name: np.asarray(var.value) for name, var in economy.builder.variables.items()
                 if var.value is not None}
    return evaluation_table(economy, variables, variables, prices, OPTIMUM)


def evaluation_table(economy: Economy, realized: Mapping[str, np.ndarray],
                     optimal: Mapping[str, np.ndarray], prices: Mapping[str, float | None],
                     realized_label: str) -> dict:
    """Return per-task vectors of ``realized`` and their gap to ``optimal``.

    Parameters
    ----------
    economy:
        The economy whose program both allocations belong to.
    realized, optimal:
        Variable values by name, as in ``economy.builder.variables``.
    prices:
        Price per market row label (``compute``, ``gpu[pool-a]``), in the
        units of the price table; the joint optimum's prices.
    realized_label:
        What the realised allocation is, e.g. ``"siloed run"``.

    Returns
    -------
    dict
        ``rows`` has one row per task, then ``shared`` and ``budgets``. Each
        row has the columns of the module docstring, ``net``, ``welfare``,
        and the optimum's ``optimal_net`` and ``optimal_welfare``. ``gap``
        and ``welfare_gap`` are the optimum's figure minus the realised one.
        ``totals`` sums each column over the rows.
    """
    realized_rows = allocation_accounts(economy, realized, prices)
    optimal_rows = allocation_accounts(economy, optimal, prices)
    rows = []
    for row, best in zip(realized_rows, optimal_rows, strict=True):
        row = dict(row)
        row["optimal_net"] = best["net"]
        row["optimal_welfare"] = best["welfare"]
        row["gap"] = best["net"] - row["net"]
        row["welfare_gap"] = best["welfare"] - row["welfare"]
        rows.append(row)
    numeric = [key for key in rows[0] if key not in ("task", "row")]
    totals = {key: float(sum(row[key] for row in rows)) for key in numeric}
    return {"realized": realized_label, "optimal": OPTIMUM,
            "prices": "equilibrium prices of the joint optimum", "unit": "USD per period",
            "rows": rows, "totals": totals}


def allocation_accounts(economy: Economy, variables: Mapping[str, np.ndarray],
                        prices: Mapping[str, float | None]) -> list[dict]:
    """Return the value and cost columns of one allocation, per task, ``shared`` and ``budgets``.

    ``net`` values every budget and balance market at ``prices``; ``welfare``
    counts only what the objective charges. A price that is missing or
    ``None`` counts as zero.
    """
    data = economy.data
    owners = _entry_tasks(economy)
    size = len(data.tasks) + 2          # tasks, then shared, then budgets
    shared, budgets = len(data.tasks), len(data.tasks) + 1
    columns = {name: np.zeros(size) for name in COLUMNS}
    charged = np.zeros(size)            # what welfare charges, for the ``welfare`` column

    for name, quantity in economy.builder.quantities.items():
        if not name.startswith(WELFARE):
            continue
        part = name.removeprefix(WELFARE)
        column = PART_COLUMNS.get(part, "other_cost")
        sign = 1.0 if column == VALUE_COLUMN else -1.0
        for contribution in quantity.contributions:
            amounts = _entry_amounts(contribution, variables)
            if amounts is None:
                continue
            by_row = _by_owner(owners, contribution.variable, amounts, shared, size)
            columns[column] += sign * by_row
            if column != VALUE_COLUMN:
                charged += sign * by_row

    for spec in economy.markets:
        if spec.mode == "equality" or spec.quantity not in economy.builder.quantities:
            continue
        column = KIND_COLUMNS.get(spec.kind, "other_cost")
        row_prices = _row_prices(economy, spec, prices)
        for contribution in economy.builder.quantities[spec.quantity].contributions:
            amounts = _entry_amounts(contribution, variables)
            if amounts is None:
                continue
            per_entry = (row_prices @ contribution.aggregate) * amounts
            by_row = _by_owner(owners, contribution.variable, per_entry, shared, size)
            columns[column] += by_row
            if spec.mode == "price":
                charged += by_row
        if spec.mode in ("budget", "balance"):
            columns[column][budgets] -= float(np.sum(row_prices[spec.rows] * spec.rhs))

    costs = sum(columns[name] for name in COST_COLUMNS)
    net = columns[VALUE_COLUMN] - costs
    welfare = columns[VALUE_COLUMN] - charged
    welfare[budgets] = 0.0
    labels = [(task, "task") for task in data.tasks] + [(None, SHARED), (None, BUDGETS)]
    rows = []
    for i, (task, kind) in enumerate(labels):
        row = {"task": task, "row": kind}
        row.update({name: float(columns[name][i]) for name in COLUMNS})
        row["net"] = float(net[i])
        row["welfare"] = float(welfare[i])
        rows.append(row)
    return rows


def _row_prices(economy: Economy, spec: MarketSpec, prices: Mapping[str, float | None]) -> np.ndarray:
    """Return USD per unit of usage for each row of the market's quantity (zero off its rows)."""
    size = economy.builder.quantities[spec.quantity].size
    row_prices = np.zeros(size)
    if spec.mode == "price":
        row_prices[spec.rows] = spec.price * spec.weight
    else:
        row_prices[spec.rows] = [prices.get(label) or 0.0 for label in spec.labels]
    return row_prices


def _entry_amounts(contribution, variables: Mapping[str, np.ndarray]) -> np.ndarray | None:
    value = variables.get(contribution.variable)
    if value is None:
        return None
    return contribution.coefficient * np.asarray(value, dtype=float).ravel()


def _by_owner(owners: Mapping[str, np.ndarray], variable: str, amounts: np.ndarray,
              shared: int, size: int) -> np.ndarray:
    """Sum ``amounts`` per owning task; entries no task owns go to the ``shared`` row."""
    owner = owners.get(variable)
    if owner is None:
        owner = np.full(len(amounts), shared)
    else:
        owner = np.where(owner >= 0, owner, shared)
    return np.bincount(owner, weights=amounts, minlength=size)


def _entry_tasks(economy: Economy) -> dict[str, np.ndarray]:
    """Return, per variable that belongs to tasks, the task index of each entry.

    Variables missing here (pool loads, GPUs, queueing delay, cache size,
    training) belong to the ``shared`` row.
    """
    # NOTE: this map follows the variable layout of the router, agent and
    # capital layers; a new per-task variable counts as shared until it is added.
    data = economy.data
    owners = {"route": data.option_task, "defer": np.arange(len(data.tasks))}
    agent = economy.layer("agent")
    index = getattr(agent, "index", None)
    if index is not None:
        options = np.asarray(index.variable_options, dtype=int)
        owners["effort"] = owners["shortfall"] = data.option_task[options]
        owners["tokens"] = data.option_task[index.pair_option]
        risk = np.asarray(index.risk_options, dtype=int)
        owners["exposure"] = data.option_task[risk]
        owners["review"] = np.repeat(data.option_task[risk], len(data.reviews))
    cache_index = getattr(economy.layer("capital"), "cache_index", None)
    if cache_index is not None:
        owners["cached"] = data.option_task[cache_index[0]]
    return owners
