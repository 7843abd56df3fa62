"""Cobb-Douglas closed form: tokens per use = alpha_i / sum(alpha) * B / p_i under a budget."""

import numpy as np
import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.analysis import tokens_per_request
from tokenomy.solvers.joint import solve

WEIGHTS = {"read": 0.5, "plan": 0.2, "edit": 0.3}
INPUT_SHARE = {"read": 1.0, "plan": 0.5, "edit": 0.0}
PRICE_INPUT, PRICE_OUTPUT = 1.0, 5.0  # USD per million tokens
# The token mix is a flat direction of the objective, so an interior-point
# optimum at 1e-9 gap pins it only to about 1e-4 relative.
MIX_RTOL = 1e-3


def budget_instance(budget: float, value: float = 1000.0) -> dict:
    return {
        "schema_version": 1,
        "tasks": {"job": {"volume": 1, "value": value}},
        "uses": {name: {"input_share": share} for name, share in INPUT_SHARE.items()},
        "models": {"only": {
            "prices": {"input": PRICE_INPUT, "output": PRICE_OUTPUT},
            "quality": {"job": {
                "curve": "cobb_douglas", "max_success": 0.9, "rate": 0.1,
                "weights": WEIGHTS, "scales": {"read": 1e4, "plan": 2e3, "edit": 5e3},
            }},
        }},
        "markets": {"compute": {"kind": "compute", "budget": budget}},
    }


@pytest.mark.parametrize("budget", [0.01, 0.05, 0.2])
def test_token_split_matches_closed_form(budget):
    economy = Economy(load_instance(budget_instance(budget)))
    result = solve(economy)
    assert result.certified
    tokens = tokens_per_request(economy)[0]
    total = sum(WEIGHTS.values())
    for a, use in enumerate(economy.data.uses):
        price = (INPUT_SHARE[use] * PRICE_INPUT + (1 - INPUT_SHARE[use]) * PRICE_OUTPUT) * 1e-6
        expected = WEIGHTS[use] / total * budget / price
        assert tokens[a] == pytest.approx(expected, rel=MIX_RTOL), use


def test_budget_binds_with_positive_price():
    economy = Economy(load_instance(budget_instance(0.05)))
    result = solve(economy)
    compute = next(p for p in result.prices if p.kind == "compute")
    assert compute.binding
    assert compute.price > 0


def test_unweighted_use_gets_no_tokens():
    data = budget_instance(0.05)
    data["uses"]["chat"] = {"input_share": 0.5}
    economy = Economy(load_instance(data))
    result = solve(economy)
    assert result.certified
    tokens = tokens_per_request(economy)[0]
    chat = economy.data.uses.index("chat")
    assert np.isnan(tokens[chat]) or tokens[chat] == pytest.approx(0.0, abs=1e-6)


def test_complements_cannot_be_cut_to_zero():
    """Under any positive budget every weighted use receives tokens."""
    economy = Economy(load_instance(budget_instance(1e-4)))
    solve(economy)
    tokens = tokens_per_request(economy)[0]
    assert np.all(tokens > 0)
