"""Infeasible and unattained instances are explained in the instance's own terms."""

import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.joint import solve
from tokenomy.solvers.result import SolutionStatus, TerminationReason

from conftest import CODING_AGENT, WORKED_EXAMPLE


def solve_with(path, overrides):
    return solve(Economy(load_instance(path, overrides)))


@pytest.fixture(scope="module")
def risk_infeasible():
    return solve_with(CODING_AGENT, ["defer.enabled=false", "markets.risk.budget=1"])


def test_infeasible_status(risk_infeasible):
    assert risk_infeasible.termination is TerminationReason.INFEASIBLE
    assert risk_infeasible.status is SolutionStatus.NO_SOLUTION
    assert risk_infeasible.prices == []


def test_risk_budget_named_with_minimum(risk_infeasible):
    diagnosis = risk_infeasible.diagnosis
    assert diagnosis["kind"] == "infeasible"
    assert [item["market"] for item in diagnosis["shortfalls"]] == ["risk"]
    item = diagnosis["shortfalls"][0]
    assert item["rhs_path"] == "markets.risk.budget"
    assert item["rhs"] == 1
    assert item["unit"] == "USD"
    assert "risk budget 1 USD cannot be met" in item["message"]
    assert "raise markets.risk.budget to at least" in item["message"]
    assert "set defer.enabled=true" in diagnosis["message"]


def test_reported_minimum_is_tight(risk_infeasible):
    """The reported minimum restores feasibility; 1% below it does not."""
    minimum = risk_infeasible.diagnosis["shortfalls"][0]["minimum"]
    above = solve_with(CODING_AGENT, ["defer.enabled=false", f"markets.risk.budget={minimum * 1.002}"])
    below = solve_with(CODING_AGENT, ["defer.enabled=false", f"markets.risk.budget={minimum * 0.99}"])
    assert above.certified
    assert below.termination is TerminationReason.INFEASIBLE


def test_latency_sla_named():
    """A 20 s SLA conflicts with the risk budget: raising either one is a fix."""
    result = solve_with(CODING_AGENT, ["tasks.refactor-module.latency_sla=20"])
    items = {item["market"]: item for item in result.diagnosis["shortfalls"]}
    assert set(items) == {"latency[refactor-module]", "risk"}
    latency = items["latency[refactor-module]"]
    assert latency["rhs_path"] == "tasks.refactor-module.latency_sla"
    assert latency["minimum"] > 20
    assert "the latency SLA of refactor-module (20 s) cannot be met" in latency["message"]
    assert "any one of these changes restores feasibility" in result.diagnosis["message"]


def test_compute_budget_named():
    result = solve_with(WORKED_EXAMPLE, ["markets.compute={kind: compute, budget: 0.5}"])
    items = result.diagnosis["shortfalls"]
    assert [item["market"] for item in items] == ["compute"]
    assert items[0]["minimum"] == pytest.approx(1.0, rel=1e-4)
    assert "raise markets.compute.budget to at least 1" in items[0]["message"]


def test_defer_hint_absent_when_enabled():
    result = solve_with(CODING_AGENT, ["tasks.refactor-module.latency_sla=20"])
    assert "defer.enabled" not in result.diagnosis["message"]


def test_free_tokens_direction_named():
    from tokenomy.solvers.diagnose import unbounded_directions

    economy = Economy(load_instance(WORKED_EXAMPLE, [
        "models.cheap.quality.request={curve: saturating, max_success: 0.7, rate: 1, use: answer, scale: 100}",
        "models.cheap.prices.output=0"]))
    directions = unbounded_directions(economy)
    assert len(directions) == 1
    assert "tokens of use answer on model cheap for task request cost nothing" in directions[0]
    assert "models.cheap.prices" in directions[0]


def test_free_gpus_with_delay_named():
    from tokenomy.solvers.diagnose import unbounded_directions

    economy = Economy(load_instance(CODING_AGENT, ["markets.gpu={kind: gpu, price: 0}"]))
    directions = unbounded_directions(economy)
    assert any("markets.gpu.price is 0" in text for text in directions)


def test_time_limit_reported():
    result = solve(Economy(load_instance(CODING_AGENT)), solvers=["CLARABEL"], time_limit=1e-4)
    assert result.termination is TerminationReason.LIMIT
    assert not result.certified
    assert result.time_limit == 1e-4
    assert "time limit of 0.0001 s" in result.message
    assert all(price.price is None for price in result.prices if price.mode != "price")


def test_checks_recorded_on_success():
    result = solve(Economy(load_instance(CODING_AGENT)))
    assert result.checks["passed"] is True
    assert result.checks["max_infeasibility"] < 1e-6
    assert result.attempts[-1]["checks"] == "passed"


def test_failed_checks_move_to_next_solver():
    """Tolerances no solver can meet: every attempt fails and the report states it."""
    from tokenomy.solvers.checks import Tolerances

    impossible = Tolerances(feasibility=-1.0)
    result = solve(Economy(load_instance(WORKED_EXAMPLE)), solvers=["CLARABEL", "ECOS"],
                   tolerances=impossible)
    assert [attempt["checks"] for attempt in result.attempts if "checks" in attempt] == ["failed", "failed"]
    assert result.checks["passed"] is False
    assert "every solver failed the optimality checks" in result.message
    assert result.solver.startswith("CLARABEL")
    assert not result.certified
    assert all(price.price is None for price in result.prices if price.mode != "price")
