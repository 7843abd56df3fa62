"""Price/budget duality: feeding the budgeted duals back as prices reproduces the allocation."""

import numpy as np
import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.analysis import tokens_per_request
from tokenomy.solvers.joint import solve

from conftest import CODING_AGENT, WORKED_EXAMPLE

ALLOCATION_ATOL = 2e-3
"""Routing shares agree to this absolute tolerance."""
TOKEN_RTOL = 5e-3
"""Tokens per request agree to this relative tolerance (a flat direction, see test_closed_form)."""
GPU_RTOL = 3e-2
"""GPU splits and market usages agree to this relative tolerance. The small pool
runs at under 10% utilisation, so welfare is nearly flat in its GPU split and
an interior-point optimum pins that split only loosely. Welfare itself agrees
to 1e-5."""

PRICED_KINDS = ("compute", "risk", "oversight", "latency", "gpu")


def priced_version(path):
    """Solve ``path`` budgeted, then re-solve with every budget replaced by its price."""
    budgeted = Economy(load_instance(path))
    first = solve(budgeted)
    assert first.certified

    overrides, row_prices, charge = [], {}, 0.0
    for market in budgeted.markets:
        if market.kind not in PRICED_KINDS or market.mode != "budget":
            continue
        prices = np.array([first.price(label) for label in market.labels])
        charge += float(np.sum(prices * market.rhs))
        if market.kind == "latency":
            row_prices[market.name] = prices / budgeted.data.volume[market.rows]
        else:
            row_prices[market.name] = prices
        if market.name in budgeted.instance.markets:
            overrides += [f"markets.{market.name}.budget=null", f"markets.{market.name}.price=0"]
        else:
            overrides += [f"markets.{market.name}={{kind: {market.kind}, price: 0}}"]
    priced = Economy(load_instance(path, overrides), prices=row_prices)
    second = solve(priced)
    assert second.certified
    return budgeted, first, priced, second, charge


@pytest.fixture(scope="module")
def coding_agent_pair():
    return priced_version(CODING_AGENT)


def test_priced_markets_replace_budgets(coding_agent_pair):
    _, _, priced, _, _ = coding_agent_pair
    modes = {market.kind: market.mode for market in priced.markets}
    for kind in PRICED_KINDS:
        assert modes[kind] == "price", kind


def test_same_routing(coding_agent_pair):
    budgeted, _, priced, _, _ = coding_agent_pair
    first = budgeted.builder.variables["route"].value
    second = priced.builder.variables["route"].value
    np.testing.assert_allclose(second, first, atol=ALLOCATION_ATOL)


def test_same_tokens(coding_agent_pair):
    budgeted, _, priced, _, _ = coding_agent_pair
    first, second = tokens_per_request(budgeted), tokens_per_request(priced)
    used = np.isfinite(first) & (first > 1.0)
    np.testing.assert_allclose(second[used], first[used], rtol=TOKEN_RTOL)


def test_same_gpu_split(coding_agent_pair):
    budgeted, _, priced, _, _ = coding_agent_pair
    for name in ("gpus_prefill", "gpus_decode"):
        np.testing.assert_allclose(priced.builder.variables[name].value,
                                   budgeted.builder.variables[name].value, rtol=GPU_RTOL, atol=1e-3)


def test_welfare_equals_lagrangian(coding_agent_pair):
    """Priced welfare equals budgeted welfare minus the price of every budget."""
    _, first, _, second, charge = coding_agent_pair
    assert second.welfare == pytest.approx(first.welfare - charge, rel=1e-5)


def test_budgets_are_met_at_priced_optimum(coding_agent_pair):
    budgeted, first, priced, second, _ = coding_agent_pair
    usage = {p.row: p.usage for p in second.prices}
    for price in first.prices:
        if price.kind in PRICED_KINDS and price.mode == "budget" and price.binding:
            assert usage[price.row] == pytest.approx(price.rhs, rel=GPU_RTOL), price.row


def test_worked_example_risk_budget_round_trip():
    """At V = 10 a risk budget between the two models' losses is priced at 50.

    Without a risk price cheap wins (6 > 4). A budget of 0.03 expected loss
    forces a half-and-half mix, and the price that makes the router
    indifferent is (6 - 4) / (0.05 - 0.01) = 50, the crossover risk price.
    """
    budgeted = Economy(load_instance(WORKED_EXAMPLE, [
        "tasks.request.value=10", "markets.risk.price=null", "markets.risk.budget=0.03"]))
    result = solve(budgeted)
    assert result.price("risk") == pytest.approx(50.0, rel=1e-5)
    shares = budgeted.builder.variables["route"].value
    np.testing.assert_allclose(shares, [0.5, 0.5], atol=1e-6)
