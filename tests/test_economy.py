"""The economy object: layer-market graph, re-parameterisation, scaling."""

import numpy as np
import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.joint import solve

from conftest import CODING_AGENT, INSTANCES, WORKED_EXAMPLE


def test_graph_layers_and_markets():
    graph = Economy(load_instance(CODING_AGENT)).graph
    layers = {n for n, d in graph.nodes(data=True) if d["type"] == "layer"}
    markets = {n for n, d in graph.nodes(data=True) if d["type"] == "market"}
    assert layers == {"router", "agent", "serving", "capital"}
    assert {"routing", "compute", "latency", "risk", "oversight", "energy", "gpu",
            "prefill", "decode", "kv"} <= markets


@pytest.mark.parametrize(("layer", "market", "role"), [
    ("router", "routing", "demand"),
    ("router", "compute", "demand"),
    ("agent", "compute", "demand"),
    ("agent", "risk", "demand"),
    ("agent", "oversight", "demand"),
    ("agent", "energy", "demand"),
    ("agent", "decode", "demand"),
    ("serving", "decode", "supply"),
    ("serving", "gpu", "demand"),
    ("capital", "gpu", "demand"),
    ("capital", "compute", "demand"),
    ("capital", "prefill", "supply"),
])
def test_graph_edges(layer, market, role):
    graph = Economy(load_instance(CODING_AGENT)).graph
    assert graph.has_edge(layer, market)
    assert graph.edges[layer, market]["role"] == role


def test_markets_couple_layers_only_through_graph():
    """Every market with a constraint is used by at least one layer."""
    economy = Economy(load_instance(CODING_AGENT))
    graph = economy.graph
    for market in economy.markets:
        assert graph.in_degree(market.name) >= 1, market.name


def test_update_reuses_compiled_problem():
    economy = Economy(load_instance(CODING_AGENT))
    problem = economy.problem
    solve(economy)
    changed = load_instance(CODING_AGENT, [
        "markets.compute.budget=1200", "markets.risk.budget=2000", "pools.pool-large.gpus=9",
        "markets.energy.price=0.3"])
    assert economy.update(changed) is True
    assert economy.problem is problem
    reused = solve(economy)
    fresh = solve(Economy(changed))
    assert reused.welfare == pytest.approx(fresh.welfare, rel=1e-7)
    for a, b in zip(reused.prices, fresh.prices, strict=True):
        assert a.row == b.row
        assert a.price == pytest.approx(b.price, rel=2e-3, abs=1e-6), a.row


def test_update_rebuilds_when_data_changes():
    """Data other than budgets and prices are constants: changing them rebuilds."""
    economy = Economy(load_instance(CODING_AGENT))
    problem = economy.problem
    changed = load_instance(CODING_AGENT, ["tasks.triage-issue.value=3"])
    assert economy.update(changed) is False
    assert economy.problem is not problem
    assert solve(economy).welfare == pytest.approx(solve(Economy(changed)).welfare, rel=1e-7)


def test_parameters_are_budgets_and_prices_only():
    """Only small parameter vectors enter the compiled program (see MAX_PARAMETER_ROWS)."""
    economy = Economy(load_instance(CODING_AGENT))
    names = {parameter.name() for parameter in economy.problem.parameters()}
    assert "market.compute.rhs" in names
    assert "market.energy.price" in names
    assert all(name.startswith("market.") for name in names)
    assert all(parameter.size <= 64 for parameter in economy.problem.parameters())


def test_update_rebuilds_on_structure_change():
    economy = Economy(load_instance(WORKED_EXAMPLE))
    problem = economy.problem
    changed = load_instance(WORKED_EXAMPLE, ["defer.enabled=true", "markets.risk=null"])
    assert economy.update(changed) is False
    assert economy.problem is not problem
    assert solve(economy).certified


def test_prices_are_parameters_in_objective():
    """The compiled program is DPP, so data changes never force a recompile."""
    economy = Economy(load_instance(CODING_AGENT))
    assert economy.problem.is_dcp(dpp=True)


def test_solver_sees_values_near_one():
    economy = Economy(load_instance(CODING_AGENT))
    solve(economy)
    for variable in economy.problem.variables():
        assert np.max(np.abs(variable.value)) < 1e3, variable.name()
    for name, parameter in economy.builder.parameters.items():
        if name.startswith("market.") or name.startswith("usage."):
            assert np.max(np.abs(parameter.value)) < 1e4, name


def test_fallback_skips_missing_solver():
    economy = Economy(load_instance(WORKED_EXAMPLE))
    result = solve(economy, solvers=["NOT_A_SOLVER", "CLARABEL"])
    assert result.certified
    assert result.attempts[0] == {"solver": "NOT_A_SOLVER", "status": "not installed"}
    assert result.solver.startswith("CLARABEL")


def assert_same_prices(reference, other):
    assert other.welfare == pytest.approx(reference.welfare, rel=1e-4)
    scale = {}
    for price in reference.prices:
        scale[price.market] = max(scale.get(price.market, 1e-6), abs(price.price))
    for a, b in zip(reference.prices, other.prices, strict=True):
        assert a.row == b.row
        assert b.price == pytest.approx(a.price, rel=2e-2, abs=2e-3 * scale[a.market]), a.row


@pytest.mark.parametrize(("path", "overrides", "solver"), [
    (CODING_AGENT, [], "SCS"),
    (WORKED_EXAMPLE, ["markets.risk.price=50"], "ECOS"),
    (WORKED_EXAMPLE, ["markets.risk.price=null", "markets.risk.budget=0.03",
                      "tasks.request.value=10"], "ECOS"),
])
def test_backends_agree_on_prices(path, overrides, solver):
    """Clarabel, SCS and ECOS give the same welfare and prices on shipped instances."""
    reference = solve(Economy(load_instance(path, overrides)), solvers=["CLARABEL"])
    other = solve(Economy(load_instance(path, overrides)), solvers=[solver])
    assert other.certified, other.attempts
    assert_same_prices(reference, other)


def test_ecos_falls_back_on_power_cones():
    """ECOS has no power cone; the fallback moves on and records the failure."""
    result = solve(Economy(load_instance(CODING_AGENT)), solvers=["ECOS", "CLARABEL"])
    assert result.certified
    assert result.attempts[0]["solver"] == "ECOS"
    assert result.attempts[0]["status"] == "solver_error"
    assert result.solver.startswith("CLARABEL")


def test_update_rebuilds_on_curve_weight_change():
    economy = Economy(load_instance(CODING_AGENT))
    changed = load_instance(CODING_AGENT, ["models.frontier.quality.repair.weights.read=0.7"])
    assert economy.update(changed) is False
    assert solve(economy).welfare == pytest.approx(solve(Economy(changed)).welfare, rel=1e-7)


def test_resource_market_named_like_a_kind():
    """A resource market's usage is kept apart from the market kinds' usages."""
    plain = solve(Economy(load_instance(WORKED_EXAMPLE))).welfare
    named = solve(Economy(load_instance(WORKED_EXAMPLE, ["markets.compute={kind: resource, price: 3}"])))
    assert named.welfare == pytest.approx(plain, rel=1e-9)


def test_routing_row_reported_in_requests():
    result = solve(Economy(load_instance(CODING_AGENT)))
    row = next(price for price in result.prices if price.row == "routing[triage-issue]")
    assert row.rhs == pytest.approx(6000.0)
    assert row.usage == pytest.approx(6000.0, rel=1e-6)
    assert row.rhs_path == "tasks.triage-issue.volume"


def test_build_time_recorded():
    result = solve(Economy(load_instance(CODING_AGENT)))
    assert result.timings.build > 0


def test_priced_latency_warns_about_ignored_sla(caplog):
    with caplog.at_level("WARNING", logger="tokenomy.model.markets"):
        Economy(load_instance(CODING_AGENT, ["markets.latency.budget=null", "markets.latency.price=0.01"]))
    assert any("latency_sla of fix-failing-test, refactor-module is not enforced" in record.getMessage()
               for record in caplog.records)


def test_polynomial_delay_reports_waiting():
    from tokenomy.solvers.report import build_report

    economy = Economy(load_instance(INSTANCES / "pigou.yaml"))
    report = build_report(economy, solve(economy))
    linear = next(row for row in report["pools"] if row["pool"] == "linear")
    assert linear["decode_waiting"] == pytest.approx(0.5, rel=1e-4)


def test_update_then_solve_passes_checks():
    """After update() the layer constraints holding the duals are the compiled ones."""
    economy = Economy(load_instance(CODING_AGENT, ["markets.compute.budget=900"]))
    solve(economy)
    assert economy.update(load_instance(CODING_AGENT, ["markets.compute.budget=950"]))
    result = solve(economy)
    assert result.checks["passed"], result.checks["violations"]
    assert result.attempts[0]["checks"] == "passed"


def test_offsets_move_reported_slack():
    economy = Economy(load_instance(CODING_AGENT), offsets={"compute": 1.0})
    result = solve(economy)
    compute = next(price for price in result.prices if price.row == "compute")
    assert compute.rhs == pytest.approx(1001.0)
    assert compute.slack == pytest.approx(0.0, abs=1e-4)
