"""Finite-difference checks: every reported price is dW/d(right-hand side)."""

import numpy as np
import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.joint import solve

from conftest import CODING_AGENT, WORKED_EXAMPLE

STEP = 1e-3
"""Perturbation as a share of each row's scale."""
RTOL, ATOL_SHARE = 2e-2, 1e-4
"""A price matches when within 2% or 1e-4 of the largest price of its market."""


def perturbed_welfare(economy, market, row, step):
    offsets = np.zeros(len(market.rows))
    offsets[row] = step
    economy.update(offsets={market.name: offsets})
    result = solve(economy)
    assert result.certified, (market.labels[row], result.attempts)
    return result.welfare


def central_difference(economy, market, row):
    step = STEP * market.scale[row]
    if market.mode == "budget":
        step = min(step, 0.5 * market.rhs[row]) if market.rhs[row] > 0 else step
    upper = perturbed_welfare(economy, market, row, step)
    lower = perturbed_welfare(economy, market, row, -step)
    economy.update(offsets={})
    return (upper - lower) / (2 * step) * market.report_factor[row]


@pytest.fixture(scope="module")
def solved_coding_agent():
    economy = Economy(load_instance(CODING_AGENT))
    result = solve(economy)
    assert result.certified
    return economy, {price.row: price.price for price in result.prices}


def constraint_rows(path):
    economy = Economy(load_instance(path))
    return [(market.name, row, market.labels[row])
            for market in economy.markets if market.is_constraint
            for row in range(len(market.rows))]


@pytest.mark.parametrize(("name", "row", "label"), constraint_rows(CODING_AGENT),
                         ids=[item[2] for item in constraint_rows(CODING_AGENT)])
def test_price_matches_finite_difference(solved_coding_agent, name, row, label):
    economy, prices = solved_coding_agent
    market = economy.market(name)
    estimate = central_difference(economy, market, row)
    largest = max(abs(prices[item]) for item in market.labels)
    assert prices[label] == pytest.approx(estimate, rel=RTOL, abs=ATOL_SHARE * max(largest, 1.0)), label


def test_every_price_kind_is_checked():
    kinds = {Economy(load_instance(CODING_AGENT)).market(name).kind
             for name, _, _ in constraint_rows(CODING_AGENT)}
    assert {"routing", "prefill", "decode", "kv", "compute", "latency", "risk",
            "oversight", "gpu"} <= kinds


@pytest.mark.parametrize(("path", "delta"), [
    ("markets.compute.budget", 5.0),
    ("markets.risk.budget", 10.0),
    ("markets.oversight.budget", 2.0),
    ("tasks.fix-failing-test.latency_sla", 1.0),
    ("pools.pool-large.gpus", 0.05),
])
def test_price_matches_instance_field_change(solved_coding_agent, path, delta):
    """Changing the instance field named by rhs_path moves welfare by price * delta."""
    economy, prices = solved_coding_agent
    price = next(p for p in solve(economy).prices if p.rhs_path == path and p.binding)
    welfare = {}
    for sign in (1, -1):
        instance = load_instance(CODING_AGENT, [f"{path}={price.rhs + sign * delta}"])
        assert economy.update(instance), "the compiled problem should be reused"
        welfare[sign] = solve(economy).welfare
    economy.update(load_instance(CODING_AGENT))
    estimate = (welfare[1] - welfare[-1]) / (2 * delta)
    assert price.price == pytest.approx(estimate, rel=RTOL), path


def test_resource_budget_price(solved_coding_agent):
    """A resource market switched from priced to budgeted gets a checked price."""
    economy, _ = solved_coding_agent
    usage = next(p.usage for p in solve(economy).prices if p.kind == "resource")
    instance = load_instance(CODING_AGENT, ["markets.energy.price=null",
                                           f"markets.energy.budget={0.9 * usage}"])
    budgeted = Economy(instance)
    result = solve(budgeted)
    price = next(p for p in result.prices if p.kind == "resource")
    assert price.binding and price.price > 0
    estimate = central_difference(budgeted, budgeted.market("energy"), 0)
    assert price.price == pytest.approx(estimate, rel=RTOL)


def test_routing_price_of_worked_example():
    economy = Economy(load_instance(WORKED_EXAMPLE, ["markets.risk.price=50"]))
    result = solve(economy)
    estimate = central_difference(economy, economy.market("routing"), 0)
    assert result.price("routing[request]") == pytest.approx(estimate, rel=1e-4)
    assert result.price("routing[request]") == pytest.approx(8.0, abs=1e-5)


def test_uncertified_solve_reports_no_prices():
    """An inaccurate solve (iteration limit hit) reports prices as None with a reason."""
    from tokenomy.solvers import joint

    economy = Economy(load_instance(CODING_AGENT))
    saved = joint.SOLVER_SETTINGS["SCS"]
    joint.SOLVER_SETTINGS["SCS"] = {"max_iters": 5}
    try:
        result = solve(economy, solvers=["SCS"])
    finally:
        joint.SOLVER_SETTINGS["SCS"] = saved
    assert not result.certified
    constrained = [p for p in result.prices if p.mode != "price"]
    assert constrained
    assert all(p.price is None for p in constrained)
    assert all(p.reason for p in constrained)
