"""Tenants: per-tenant compute budgets sharing one pool, their prices and their errors."""

import numpy as np
import pytest
from test_prices import ATOL_SHARE, RTOL, central_difference

from tokenomy.model.economy import Economy
from tokenomy.model.errors import InstanceError
from tokenomy.model.loader import load_instance
from tokenomy.solvers.analysis import equimarginal
from tokenomy.solvers.joint import solve
from tokenomy.solvers.report import build_report

from conftest import CODING_AGENT, INSTANCES

MULTI_TENANT = INSTANCES / "multi_tenant.yaml"


def solve_multi_tenant():
    economy = Economy(load_instance(MULTI_TENANT))
    result = solve(economy)
    assert result.certified, result.attempts
    return economy, result


@pytest.fixture(scope="module")
def solved():
    """The solved instance; tests read it and leave it as it is."""
    return solve_multi_tenant()


@pytest.fixture(scope="module")
def perturbed():
    """A solved instance of its own for the tests that re-solve with other budgets."""
    return solve_multi_tenant()


def tenant_price(result, tenant):
    return result.price(f"tenant-compute[{tenant}]")


def test_tenant_market_has_one_row_per_tenant(solved):
    economy, _ = solved
    market = economy.market("tenant-compute")
    assert market.scope == "tenant"
    assert market.labels == ["tenant-compute[analytics]", "tenant-compute[support]"]
    assert market.rhs_paths == ["markets.tenant-compute.budgets.analytics",
                                "markets.tenant-compute.budgets.support"]


def test_binding_budget_has_positive_price(solved):
    _, result = solved
    row = next(price for price in result.prices if price.row == "tenant-compute[analytics]")
    assert row.binding
    assert row.price > 1.0


def test_slack_budget_has_zero_price(solved):
    _, result = solved
    row = next(price for price in result.prices if price.row == "tenant-compute[support]")
    assert not row.binding
    assert row.slack > 100
    assert row.price == pytest.approx(0.0, abs=1e-6)


def test_shared_serving_prices_positive(solved):
    _, result = solved
    for row in ("gpu[shared]", "prefill[shared]", "decode[shared]"):
        assert result.price(row) > 0, row


@pytest.mark.parametrize("tenant", ["analytics", "support"])
def test_tenant_price_matches_finite_difference(perturbed, tenant):
    economy, result = perturbed
    market = economy.market("tenant-compute")
    row = market.labels.index(f"tenant-compute[{tenant}]")
    estimate = central_difference(economy, market, row)
    largest = max(abs(result.price(label)) for label in market.labels)
    assert tenant_price(result, tenant) == pytest.approx(
        estimate, rel=RTOL, abs=ATOL_SHARE * max(largest, 1.0))


def test_tenant_price_matches_budget_change(perturbed):
    economy, result = perturbed
    welfare = {}
    for sign in (1, -1):
        instance = load_instance(MULTI_TENANT, [f"markets.tenant-compute.budgets.analytics={25 + sign * 0.5}"])
        assert economy.update(instance), "a budget change should reuse the compiled problem"
        welfare[sign] = solve(economy).welfare
    economy.update(load_instance(MULTI_TENANT))
    assert tenant_price(result, "analytics") == pytest.approx((welfare[1] - welfare[-1]) / 1.0, rel=RTOL)


def test_spend_is_split_by_tenant(solved):
    economy, result = solved
    tenant_rows = {price.row: price.usage for price in result.prices if price.market == "tenant-compute"}
    total = economy.builder.evaluate("usage.compute")[0]
    assert sum(tenant_rows.values()) == pytest.approx(total, rel=1e-9)
    assert tenant_rows["tenant-compute[analytics]"] == pytest.approx(25.0, rel=1e-6)


def test_equimarginal_includes_tenant_price(solved):
    """The residual check passes only when token costs include the tenant's budget price."""
    economy, result = solved
    assert result.checks["passed"]
    rows = [row for row in equimarginal(economy, result)
            if row["kind"] == "token" and row["task"] == "report-query" and row["used"]]
    assert rows
    for row in rows:
        assert row["residual"] == pytest.approx(0.0, abs=2e-3 * row["marginal_cost"] + 1e-9)


def test_report_tenant_section(solved):
    economy, result = solved
    section = build_report(economy, result)["tenants"]
    rows = {row["tenant"]: row for row in section["tenants"]}
    assert rows["analytics"]["tasks"] == ["report-query"]
    assert rows["support"]["tasks"] == ["ticket-reply", "ticket-triage"]
    assert rows["analytics"]["compute_spend"] == pytest.approx(25.0, rel=1e-6)
    assert rows["analytics"]["compute_dollar_value"] == pytest.approx(
        1 + tenant_price(result, "analytics"))
    assert rows["support"]["compute_dollar_value"] == pytest.approx(1.0, abs=1e-6)
    shared = {row["market"] for row in section["shared"]}
    assert {"gpu[shared]", "prefill[shared]", "decode[shared]", "kv[shared]"} == shared


def test_default_budget_applies_to_unlisted_tenants():
    instance = load_instance(MULTI_TENANT, ["markets.tenant-compute.budgets={analytics: 25}",
                                            "markets.tenant-compute.budget=300"])
    market = Economy(instance).market("tenant-compute")
    assert list(market.rhs) == [25.0, 300.0]
    assert market.rhs_paths[1] == "markets.tenant-compute.budget"


def test_tenant_without_budget_has_no_row():
    instance = load_instance(MULTI_TENANT, ["markets.tenant-compute.budgets={analytics: 25}"])
    economy = Economy(instance)
    assert economy.market("tenant-compute").labels == ["tenant-compute[analytics]"]
    assert solve(economy).certified


def test_priced_tenant_market_charges_each_tenant():
    instance = load_instance(MULTI_TENANT, ["markets.tenant-compute.budgets=null",
                                            "markets.tenant-compute.price=0.5"])
    economy = Economy(instance)
    result = solve(economy)
    assert result.certified
    assert result.checks["passed"]
    spend = {price.row: price.usage for price in result.prices if price.market == "tenant-compute"}
    assert result.welfare_parts["market.tenant-compute"] == pytest.approx(-0.5 * sum(spend.values()))


def test_total_and_tenant_compute_coexist():
    instance = load_instance(MULTI_TENANT, ["markets.compute={kind: compute, budget: 100}"])
    economy = Economy(instance)
    result = solve(economy)
    assert result.certified
    assert result.checks["passed"]
    assert result.price("compute") > 0
    assert result.price("tenant-compute[analytics]") > 0


def test_tenants_derived_from_tasks():
    """Without a tenants section, the tenants are the names the tasks give."""
    instance = load_instance(CODING_AGENT, ["markets.team={kind: compute, scope: tenant, budget: 500}"])
    economy = Economy(instance)
    assert economy.data.tenants == ["platform", "support"]
    result = solve(economy)
    assert result.certified
    assert result.price("team[platform]") > 0


def test_training_spend_counts_in_no_tenant():
    economy = Economy(load_instance(CODING_AGENT, ["markets.team={kind: compute, scope: tenant, budget: 5000}"]))
    result = solve(economy)
    tenants = sum(price.usage for price in result.prices if price.market == "team")
    total = economy.builder.evaluate("usage.compute")[0]
    training = economy.instance.capital.training
    amount = economy.builder.variables["training"].value
    spend = float(np.sum(amount * np.array([training.scales[i] for i in training.weights]))
                  * training.price * 1e-6)
    assert spend > 0
    assert total - tenants == pytest.approx(spend, rel=1e-6)


def test_infeasible_tenant_budget_diagnosed():
    economy = Economy(load_instance(MULTI_TENANT, ["markets.tenant-compute.budgets.analytics=0.5"]))
    result = solve(economy)
    assert result.termination.value == "infeasible"
    assert "tenant-compute[analytics] budget 0.5 USD cannot be met" in result.message
    assert "raise markets.tenant-compute.budgets.analytics to at least 0.96" in result.message


# -- errors ------------------------------------------------------------------------


def problems(overrides):
    with pytest.raises(InstanceError) as caught:
        load_instance(MULTI_TENANT, overrides)
    return str(caught.value)


def test_unknown_tenant_of_task():
    message = problems(["tasks.ticket-reply.tenant=suport"])
    assert ("tasks.ticket-reply.tenant = 'suport': is not a declared tenant. "
            "Fix: use one of: analytics, support, or add it under tenants") in message


def test_unknown_tenant_in_budgets():
    message = problems(["markets.tenant-compute.budgets.analitics=10"])
    assert ("markets.tenant-compute.budgets.analitics = 'analitics': is not a tenant. "
            "Fix: use one of: analytics, support") in message


def test_tenant_scope_needs_supporting_kind():
    message = problems(["markets.tenant-compute.kind=oversight"])
    assert "markets.tenant-compute.scope = 'tenant': is not supported by markets of kind oversight" in message


def test_budgets_need_tenant_scope():
    message = problems(["markets.tenant-compute.scope=total"])
    assert "'budgets' gives one budget per tenant and needs scope: tenant" in message


def test_tenant_scope_needs_tenants():
    with pytest.raises(InstanceError, match="needs tenants, and no task names one"):
        load_instance(INSTANCES / "worked_example.yaml",
                      ["markets.team={kind: compute, scope: tenant, budget: 5}"])


def test_budget_and_price_together_rejected():
    message = problems(["markets.tenant-compute.price=1"])
    assert "give 'price', or 'budget' and 'budgets' (per tenant), not both" in message


def test_two_tenant_compute_markets_rejected():
    message = problems(["markets.other={kind: compute, scope: tenant, budget: 5}"])
    assert "markets.other.kind = 'compute': repeats the market kind of markets.tenant-compute" in message
