"""Siloed versus global: failure modes, the first welfare theorem, attribution, congestion."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.model.views import DEFAULT_VIEWS, full_views, resolve_views
from tokenomy.solvers.cli import app
from tokenomy.solvers.compare import attribute, run_comparison
from tokenomy.solvers.congestion import flat_pricing_equilibrium
from tokenomy.solvers.failures import FAILURE_MODES, detect
from tokenomy.solvers.siloed import compare

from conftest import CODING_AGENT, INSTANCES

FAILURES = INSTANCES / "failure_modes"
GAP_RTOL = 1e-4
"""With every price revealed, the siloed gap is below this share of welfare."""


def run(name):
    economy = Economy(load_instance(FAILURES / f"{name}.yaml"))
    comparison = compare(economy)
    return economy, comparison, detect(economy, comparison)


def modes(found):
    return [item["mode"] for item in found]


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_failure_instance_shows_its_mode(mode):
    economy, comparison, found = run(mode.replace("-", "_").replace(" ", "_"))
    assert mode in modes(found), found
    assert comparison.gap > 0


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_global_optimum_shows_no_mode(mode):
    """Detectors run on the global allocation itself find nothing."""
    economy, comparison, _ = run(mode.replace("-", "_").replace(" ", "_"))
    comparison.siloed_state = comparison.global_state
    assert detect(economy, comparison) == []


def test_over_routing_numbers():
    economy, comparison, found = run("over_routing")
    route = dict(zip(["cheap", "frontier"], comparison.siloed_state.variables["route"], strict=True))
    assert route["frontier"] == pytest.approx(1.0, abs=1e-6)
    assert comparison.global_state.variables["route"][0] == pytest.approx(1.0, abs=1e-6)
    # 100 requests * (0.7 * 30 - 1 - 0.5) against 100 * (0.9 * 30 - 5 - 6).
    assert comparison.global_state.welfare == pytest.approx(1950.0, rel=1e-6)
    assert comparison.siloed_state.welfare == pytest.approx(1600.0, rel=1e-5)
    item = found[0]
    assert (item["chosen"], item["better"]) == ("frontier", "cheap")
    assert item["gain_per_request"] == pytest.approx(3.5, rel=1e-4)


def test_under_routing_numbers():
    economy, comparison, found = run("under_routing")
    assert comparison.global_state.welfare == pytest.approx(800.0, rel=1e-6)
    assert comparison.siloed_state.welfare == pytest.approx(700.0, rel=1e-5)
    item = next(item for item in found if item["mode"] == "under-routing")
    assert (item["chosen"], item["better"]) == ("cheap", "frontier")
    assert item["gain_per_request"] == pytest.approx(1.0, rel=1e-4)


def test_under_verification_buys_no_verify_tokens():
    economy, comparison, found = run("under_verification")
    item = next(item for item in found if item["mode"] == "under-verification")
    assert item["tokens_per_request"] < 1.0
    assert item["optimal_tokens_per_request"] > 5000
    assert item["marginal_benefit"] > 10 * item["marginal_cost"]


def test_over_delegation_reviews_nothing():
    economy, comparison, found = run("over_delegation")
    item = next(item for item in found if item["mode"] == "over-delegation")
    assert item["review_minutes_per_request"] < 0.01
    # The optimum cuts exposure until a minute's benefit equals its wage: ln(0.2 * 200 / 1).
    assert item["optimal_review_minutes_per_request"] == pytest.approx(np.log(40.0), rel=1e-3)


def test_budget_overruns_reported_not_clipped():
    economy = Economy(load_instance(CODING_AGENT))
    comparison = compare(economy)
    overruns = {row["market"]: row for row in comparison.overruns}
    assert "compute" in overruns
    assert overruns["compute"]["usage"] > overruns["compute"]["rhs"]
    assert overruns["compute"]["excess"] == pytest.approx(
        overruns["compute"]["usage"] - overruns["compute"]["rhs"])


@pytest.mark.parametrize("path", [CODING_AGENT, *sorted(FAILURES.glob("*.yaml"))],
                         ids=lambda path: path.stem)
def test_full_views_reproduce_global_optimum(path):
    """First welfare theorem: every layer at the equilibrium prices reaches the optimum."""
    economy = Economy(load_instance(path))
    comparison = compare(economy, full_views())
    assert abs(comparison.gap) <= GAP_RTOL * max(abs(comparison.global_state.welfare), 1.0)
    np.testing.assert_allclose(comparison.siloed_state.variables["route"],
                               comparison.global_state.variables["route"], atol=2e-3)


def test_gap_by_layer_adds_up():
    report = run_comparison(Economy(load_instance(CODING_AGENT)))
    assert sum(report["gap_by_layer"].values()) == pytest.approx(report["gap"], rel=1e-9)
    assert sum(report["gap_by_part"].values()) == pytest.approx(report["gap"], rel=1e-9)


def test_shapley_attribution_under_routing():
    economy = Economy(load_instance(FAILURES / "under_routing.yaml"))
    comparison = compare(economy)
    result = attribute(economy, comparison)
    assert set(result["prices"]) == {"risk", "value"}
    assert result["shapley"]["risk"] == pytest.approx(100.0, rel=1e-4)
    assert result["shapley"]["value"] == pytest.approx(0.0, abs=1e-3)
    assert sum(result["shapley"].values()) == pytest.approx(comparison.gap, rel=1e-4)
    assert result["best_single_price"] == "risk"


def test_pigou_costs_and_toll():
    result = flat_pricing_equilibrium(load_instance(INSTANCES / "pigou.yaml"))
    assert result["delay_cost_optimum"] == pytest.approx(0.75, rel=1e-4)
    assert result["delay_cost_equilibrium"] == pytest.approx(1.0, rel=1e-3)
    assert result["delay_cost_ratio"] == pytest.approx(4 / 3, rel=1e-3)
    rows = {(row["pool"], row["phase"]): row for row in result["pools"]}
    linear, constant = rows["linear", "decode"], rows["constant", "decode"]
    assert linear["load_optimum"] == pytest.approx(0.5, rel=1e-4)
    assert linear["load_equilibrium"] == pytest.approx(1.0, rel=1e-3)
    assert linear["toll"] == pytest.approx(0.5, rel=1e-3)
    assert constant["toll"] == pytest.approx(0.0, abs=1e-4)
    assert linear["congestion_price"] == pytest.approx(constant["congestion_price"], rel=1e-4)


def test_instance_views_override_defaults():
    instance = load_instance(FAILURES / "under_verification.yaml")
    views = resolve_views(instance.views)
    assert views["agent"] == frozenset({"value"})
    assert views["router"] == DEFAULT_VIEWS["router"]


def test_unknown_view_price_rejected():
    with pytest.raises(ValueError, match="unknown price speed in the view of router"):
        resolve_views({"router": ["speed"]})


def test_unknown_view_price_in_instance():
    from tokenomy.model.errors import InstanceError

    with pytest.raises(InstanceError, match=r"views\.agent .* names unknown prices speed"):
        load_instance(FAILURES / "under_verification.yaml", ["views.agent=[value, speed]"])


def test_compare_cli_json_and_plot(tmp_path):
    runner = CliRunner()
    plot = tmp_path / "compare.png"
    result = runner.invoke(app, ["compare", str(FAILURES / "under_routing.yaml"), "--json",
                                 "--attribution", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["gap"] == pytest.approx(100.0, rel=1e-5)
    assert [item["mode"] for item in report["failure_modes"]] == ["under-routing"]
    assert report["attribution"]["best_single_price"] == "risk"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_cli_view_option():
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(FAILURES / "under_routing.yaml"), "--json",
                                 "--view", "router=value,compute,risk"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["gap"] == pytest.approx(0.0, abs=1e-3)
    assert report["failure_modes"] == []


def test_compare_cli_bad_view():
    result = CliRunner().invoke(app, ["compare", str(FAILURES / "under_routing.yaml"),
                                      "--view", "router=speed"])
    assert result.exit_code == 2
    assert "unknown price speed" in result.output


def test_congestion_cli():
    result = CliRunner().invoke(app, ["congestion", str(INSTANCES / "pigou.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["delay_cost_ratio"] == pytest.approx(4 / 3, rel=1e-3)


def test_frontier_default_policy_routes_to_strongest():
    from tokenomy.solvers.policies import parse_policy

    economy = Economy(load_instance(FAILURES / "over_routing.yaml", ["markets.latency.price=0"]))
    layer, policy = parse_policy("frontier-default")
    comparison = compare(economy, policies={layer: policy})
    route = comparison.siloed_state.variables["route"]
    assert layer == "router"
    np.testing.assert_allclose(route, [0.0, 1.0], atol=1e-6)
    # Without a latency price frontier is also the optimum, so the policy costs nothing.
    assert comparison.gap == pytest.approx(0.0, abs=1e-3)


def test_cost_min_policy_picks_cheapest_above_floor():
    from tokenomy.solvers.policies import parse_policy

    economy = Economy(load_instance(FAILURES / "under_routing.yaml"))
    layer, policy = parse_policy("cost-min:0.85")
    comparison = compare(economy, policies={layer: policy})
    np.testing.assert_allclose(comparison.siloed_state.variables["route"], [0.0, 1.0], atol=1e-6)
    assert comparison.gap == pytest.approx(0.0, abs=1e-3)


def test_token_min_policy_reaches_target_success():
    from tokenomy.solvers.policies import parse_policy

    economy = Economy(load_instance(FAILURES / "serving_congestion.yaml"))
    layer, policy = parse_policy("token-min:0.5")
    comparison = compare(economy, policies={layer: policy})
    variables = comparison.siloed_state.variables
    # Success is exactly half of max_success: shortfall = 0.5 * route.
    assert variables["shortfall"][0] == pytest.approx(0.5 * variables["route"][0], rel=1e-4)


def test_throughput_policy_equalises_utilisation():
    from tokenomy.solvers.policies import parse_policy

    economy = Economy(load_instance(CODING_AGENT))
    layer, policy = parse_policy("throughput-max")
    variables = compare(economy, policies={layer: policy}).siloed_state.variables
    # pool-small has no cache, so its load is what the router and agent committed.
    prefill = variables["load_prefill"][0] / variables["gpus_prefill"][0]
    decode = variables["load_decode"][0] / variables["gpus_decode"][0]
    assert prefill == pytest.approx(decode, rel=2e-2)


def test_hit_rate_policy_buys_largest_cache():
    from tokenomy.solvers.policies import parse_policy

    economy = Economy(load_instance(FAILURES / "cache_misuse.yaml"))
    layer, policy = parse_policy("hit-rate-max")
    variables = compare(economy, policies={layer: policy}).siloed_state.variables
    assert variables["cache_size"][0] * 50 == pytest.approx(1000, rel=1e-6)


def test_rollout_policy_uses_more_training():
    from tokenomy.solvers.policies import parse_policy

    economy = Economy(load_instance(FAILURES / "stale_rollouts.yaml"))
    layer, policy = parse_policy("rollout-max")
    comparison = compare(economy, policies={layer: policy})
    siloed = comparison.siloed_state.variables["training"]
    optimum = comparison.global_state.variables["training"]
    assert np.all(siloed > optimum)


@pytest.mark.parametrize(("text", "message"), [
    ("fastest", "unknown policy 'fastest'"),
    ("cost-min", "needs a share"),
    ("token-min:1.5", "is not a share"),
])
def test_bad_policy_rejected(text, message):
    from tokenomy.solvers.policies import parse_policy

    with pytest.raises(ValueError, match=message):
        parse_policy(text)


@pytest.mark.parametrize("path", [CODING_AGENT, *sorted(FAILURES.glob("*.yaml"))],
                         ids=lambda path: path.stem)
def test_priced_gap_is_never_negative(path):
    """No allocation beats the optimum once budget overruns are charged at equilibrium prices."""
    report = run_comparison(Economy(load_instance(path)))
    assert report["priced_gap"] >= -GAP_RTOL * max(abs(report["global_welfare"]), 1.0)
    market_value = sum(row["value"] for row in report["gap_by_market"])
    assert report["priced_gap"] == pytest.approx(report["gap"] + market_value,
                                                 rel=1e-6, abs=1e-6 * abs(report["global_welfare"]))


def test_compare_honours_time_limit():
    from tokenomy.model.errors import SolveError

    economy = Economy(load_instance(CODING_AGENT))
    with pytest.raises(SolveError, match="time limit"):
        compare(economy, time_limit=1e-5)


def test_compare_cli_time_limit():
    result = CliRunner().invoke(app, ["compare", str(CODING_AGENT), "--time-limit", "0.00001"])
    assert result.exit_code == 3
    assert "time limit" in result.output
    assert "Traceback" not in result.output
