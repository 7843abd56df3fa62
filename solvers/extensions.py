"""Report sections for tenants and for layers registered by extensions.

``tenants`` reads the solve as a competitive equilibrium between tenants.
Each tenant pays the list prices times one plus the price of its own compute
budget, plus the price of a shared total budget if there is one. Every
tenant pays the same shared prices for serving capacity (prefill, decode,
KV, GPUs) and for the other shared markets.
"""

from __future__ import annotations

import numpy as np

from ..model.economy import Economy
from ..model.layers.base import usage
from ..model.views import LAYER_ORDER
from .result import Result

TENANT_ROW_KINDS = frozenset({"routing", "latency"})
"""Kinds whose rows belong to one task, hence to one tenant, rather than being shared."""


def extension_sections(economy: Economy, result: Result) -> dict:
    """Return the ``tenants`` and ``layers`` sections of the solve report."""
    return {"tenants": tenant_summary(economy, result),
            "layers": {layer.name: layer_table(economy, layer) for layer in economy.layers
                       if layer.name not in LAYER_ORDER}}


def layer_table(economy: Economy, layer) -> list[dict]:
    """Return the rows a layer reports about its decisions at the current variable values.

    A layer with a method ``report_rows(economy)`` chooses its rows. For any
    other layer, each decision variable is one row with its values.
    """
    report_rows = getattr(layer, "report_rows", None)
    if callable(report_rows):
        return list(report_rows(economy))
    variables = economy.builder.variables
    return [{"variable": name, "values": np.asarray(variables[name].value, dtype=float).tolist()}
            for name in layer.decisions if name in variables and variables[name].value is not None]


def tenant_summary(economy: Economy, result: Result) -> dict:
    """Return per-tenant spend and budget prices, and the prices all tenants share.

    ``tenants`` has one row per tenant. A row gives the tenant's tasks, its
    list-price compute spend (USD per period) and each ``scope: tenant``
    market row that budgets or prices it. Its ``compute_dollar_value`` is the
    welfare that one USD of the tenant's list-price spend costs at these
    prices: 1 plus its compute prices. ``shared`` lists the rows of every
    other market except routing and latency, whose rows belong to single
    tasks. Both lists are empty for an instance without tenants.
    """
    data = economy.data
    if not data.tenants:
        return {"tenants": [], "shared": []}
    by_row = {price.row: price for price in result.prices}
    spend = usage_by_tenant(economy, usage("compute"))
    total_compute = sum(by_row[spec.labels[0]].price or 0.0 for spec in economy.markets
                        if spec.kind == "compute" and spec.scope == "total" and spec.labels)
    rows = []
    for t, tenant in enumerate(data.tenants):
        budgets, own_compute = [], 0.0
        for spec in economy.markets:
            if spec.scope != "tenant" or t not in spec.rows:
                continue
            price = by_row[spec.labels[list(spec.rows).index(t)]]
            budgets.append(_price_row(price))
            if spec.kind == "compute":
                own_compute += price.price or 0.0
        rows.append({
            "tenant": tenant,
            "tasks": [task for x, task in enumerate(data.tasks) if data.task_tenant[x] == t],
            "compute_spend": float(spend[t]),
            "markets": budgets,
            "compute_dollar_value": 1.0 + total_compute + own_compute if result.certified else None,
        })
    shared = [_price_row(by_row[label]) for spec in economy.markets
              if spec.scope != "tenant" and spec.kind not in TENANT_ROW_KINDS for label in spec.labels]
    return {"tenants": rows, "shared": shared}


def usage_by_tenant(economy: Economy, quantity: str) -> np.ndarray:
    """Return a quantity's value split by the tenant of the task each contribution serves.

    Contributions that name no task, or tasks without a tenant, are left out.
    """
    data, builder = economy.data, economy.builder
    totals = np.zeros(len(data.tenants) + 1)  # the last entry collects "no tenant"
    target = builder.quantities.get(quantity)
    for part in target.contributions if target is not None else []:
        value = builder.variables[part.variable].value
        if part.tasks is None or value is None:
            continue
        amounts = part.coefficient * np.asarray(value, dtype=float)
        tenants = np.where(part.tasks >= 0, data.task_tenant[np.maximum(part.tasks, 0)], -1)
        np.add.at(totals, tenants, amounts)
    return totals[:-1]


def _price_row(price) -> dict:
    return {"market": price.row, "kind": price.kind, "mode": price.mode, "price": price.price,
            "unit": price.unit, "binding": price.binding, "slack": price.slack,
            "usage": price.usage, "rhs": price.rhs}
