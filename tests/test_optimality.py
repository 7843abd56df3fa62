"""Optimality conditions: feasibility, complementary slackness, equimarginal residuals."""

import numpy as np
import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.generate import generate_instance
from tokenomy.model.loader import load_instance, validate
from tokenomy.solvers.analysis import equimarginal
from tokenomy.solvers.joint import solve

from conftest import CODING_AGENT, WORKED_EXAMPLE

FEASIBILITY_RTOL = 1e-6
"""Usage may exceed a right-hand side by this share of the row's scale."""
SLACKNESS_RTOL = 1e-5
"""|price * slack| may be this share of welfare."""
RESIDUAL_RTOL = 5e-4
"""An equimarginal residual counts as zero within this share of its marginal cost.
Smooth curves reach about 1e-8; the kink of a Leontief curve leaves about 1e-4."""
RESIDUAL_ATOL = {"token": 1e-9, "review": 1e-6, "training": 1e-9, "route": 1e-3, "defer": 1e-3}
"""Absolute floor per row kind, in that row's unit (USD per token, minute or request)."""


def leontief_and_saturating() -> dict:
    return {
        "schema_version": 1,
        "defer": {"enabled": True, "success": 0.5, "cost": 2.0},
        "tasks": {"lookup": {"volume": 100, "value": 4, "context_tokens": 1000},
                  "patch": {"volume": 40, "value": 25, "context_tokens": 5000, "loss": 30}},
        "uses": {"read": {"input_share": 1.0}, "edit": {"input_share": 0.0},
                 "verify": {"input_share": 0.6, "risk_scale": 3000}},
        "models": {
            "lean": {"prices": {"input": 0.5, "output": 2.0}, "quality": {
                "lookup": {"curve": "saturating", "max_success": 0.8, "rate": 1.2, "use": "read", "scale": 2000},
                "patch": {"curve": "leontief", "max_success": 0.6, "rate": 1.0,
                          "scales": {"read": 4000, "edit": 1000}, "wrong_action": 0.1}}},
            "strong": {"prices": {"input": 3.0, "output": 12.0}, "quality": {
                "default": {"curve": "leontief", "max_success": 0.9, "rate": 1.5,
                            "scales": {"read": 3000, "edit": 800}, "wrong_action": 0.03}}},
        },
        "markets": {"compute": {"kind": "compute", "budget": 6.0},
                    "risk": {"kind": "risk", "price": 1.5}},
    }


CASES = {
    "coding_agent": lambda: load_instance(CODING_AGENT),
    "worked_example_risk": lambda: load_instance(WORKED_EXAMPLE, ["markets.risk.price=50"]),
    "worked_example_plain": lambda: load_instance(WORKED_EXAMPLE, ["tasks.request.value=30"]),
    "leontief_saturating": lambda: load_instance(leontief_and_saturating()),
    "generated_12": lambda: validate(generate_instance(12, 4, seed=3), "generated"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def solved(request):
    economy = Economy(CASES[request.param]())
    result = solve(economy)
    assert result.certified, result.attempts
    return economy, result


def test_primal_feasibility(solved):
    economy, result = solved
    for price in result.prices:
        if price.mode in ("budget", "balance"):
            market = economy.market(price.market)
            scale = market.scale[market.labels.index(price.row)]
            assert price.slack >= -FEASIBILITY_RTOL * scale, price.row
    route = economy.builder.variables["route"].value
    defer = economy.builder.variables["defer"].value
    assert np.all(route >= -1e-8)
    totals = np.bincount(economy.data.option_task, weights=route, minlength=len(economy.data.tasks))
    assert np.allclose(totals + defer, 1.0, atol=1e-7)


def test_price_signs(solved):
    _, result = solved
    for price in result.prices:
        if price.mode in ("budget", "balance"):
            assert price.price >= -1e-7, price.row


def test_complementary_slackness(solved):
    economy, result = solved
    for price in result.prices:
        if price.mode in ("budget", "balance"):
            assert abs(price.price * price.slack) <= SLACKNESS_RTOL * max(abs(result.welfare), 1.0), price.row


MIN_SHARE = 1e-4
"""Rows of options carrying a smaller share of their task are skipped: their tokens
per request are a ratio of two tiny numbers (the runtime checks skip them too)."""


def test_equimarginal_residuals(solved):
    economy, result = solved
    rows = equimarginal(economy, result)
    assert rows, "an optimal solve has an equimarginal table"
    for row in rows:
        share = row["amount"] if row["kind"] == "route" and row["used"] else row.get("share", 1.0)
        if share < MIN_SHARE:
            continue
        tolerance = RESIDUAL_RTOL * abs(row["marginal_cost"]) + RESIDUAL_ATOL[row["kind"]]
        label = f"{row['kind']} {row['task']}/{row['model']}/{row['use']}: {row}"
        if row["used"]:
            assert abs(row["residual"]) <= tolerance, label
        else:
            assert row["residual"] <= tolerance, label


def test_every_used_option_has_a_route_row(solved):
    economy, result = solved
    rows = [row for row in equimarginal(economy, result) if row["kind"] == "route"]
    assert len(rows) == economy.data.option_count
    route = economy.builder.variables["route"].value
    assert sum(row["used"] for row in rows) == int(np.sum(route > 1e-6))


def test_welfare_parts_add_up(solved):
    _, result = solved
    assert sum(result.welfare_parts.values()) == pytest.approx(result.welfare, rel=1e-6, abs=1e-6)


def test_residual_check_detects_wrong_price(solved):
    """Shifting one routing price by 1% of itself breaks the route residuals."""
    economy, result = solved
    import copy

    shifted = copy.deepcopy(result)
    target = next(p for p in shifted.prices if p.kind == "routing" and abs(p.price) > 1e-3)
    target.price *= 1.01
    rows = [row for row in equimarginal(economy, shifted)
            if row["kind"] == "route" and row["used"] and row["task"] == target.row[8:-1]]
    tolerance = [RESIDUAL_RTOL * abs(r["marginal_cost"]) + RESIDUAL_ATOL["route"] for r in rows]
    assert any(abs(r["residual"]) > t for r, t in zip(rows, tolerance, strict=True))
