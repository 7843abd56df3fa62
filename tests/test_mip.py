"""The mixed-integer form: hand-derived optima, agreement with an independent LP, prices."""

import numpy as np
import pytest
from mip_reference import solve_reference

from tokenomy.model.errors import InstanceError
from tokenomy.model.loader import load_instance
from tokenomy.solvers.cuts import (
    CutSettings,
    chain_effort,
    exp_error,
    exp_points,
    geometric_error,
    success_overstatement,
)
from tokenomy.solvers.mip import solve_mip
from tokenomy.solvers.mip_form import Options, build_form, realised_effort_error
from tokenomy.solvers.mip_highs import solve_highs
from tokenomy.solvers.result import SolutionStatus

from conftest import CODING_AGENT, WORKED_EXAMPLE

THREE_REQUESTS = {
    # Three requests, a cheap API model with a token choice and a frontier model
    # on a pool of 2 GPUs that each decode one frontier call per period.
    "schema_version": 1,
    "period_seconds": 1,
    "tasks": {"request": {"volume": 3, "value": 40}},
    "uses": {"answer": {"input_share": 0, "action": "irreversible"}},
    "models": {
        "cheap": {
            "prices": {"input": 0, "output": 1000},  # USD 1 per 1000 tokens
            "quality": {"request": {"curve": "saturating", "max_success": 0.8, "rate": 1,
                                    "use": "answer", "scale": 1000}},
        },
        "frontier": {
            "prices": {"input": 0, "output": 5000},  # USD 5 per call of 1000 tokens
            "pool": "frontier-pool",
            "quality": {"request": {"curve": "constant", "success": 0.9,
                                    "tokens": {"answer": 1000}}},
        },
    },
    "pools": {"frontier-pool": {"gpus": 2, "prefill_tokens_per_gpu_second": 1e6,
                                "decode_tokens_per_gpu_second": 1000}},
    "markets": {"compute": {"kind": "compute", "budget": 12}},
}


def requests_by_model(form, result):
    counts = result.values[form.column_slice("requests")]
    return {form.data.option_label(k)[1]: round(counts[k]) for k in range(form.data.option_count)}


def prices_of(result):
    return {price.row: price.price for price in result.prices}


def cut_value(u):
    """Return the tangent-cut approximation of exp(-u) used by the default settings."""
    points = exp_points(CutSettings())
    return max(0.0, float(np.max(np.exp(-points) * (1 + points - u))))


@pytest.fixture(scope="module")
def three_requests():
    form = build_form(load_instance(THREE_REQUESTS))
    result = solve_mip(form)
    assert result.status is SolutionStatus.OPTIMAL, result.message
    return form, result


def test_three_requests_assignment(three_requests):
    form, result = three_requests
    # Frontier surplus 0.9 * 40 - 5 = 31 beats cheap's at most 32 * (1 - 1/32) - ln 32 = 27.5,
    # but only 2 GPUs decode frontier calls.
    assert requests_by_model(form, result) == {"cheap": 1, "frontier": 2}
    gpus = result.values[form.column_slice("gpus_decode")]
    assert gpus[0] == pytest.approx(2.0)


def test_three_requests_welfare(three_requests):
    _, result = three_requests
    # The USD 2 left of the budget buy the cheap request 2000 tokens: u = rate * tokens / scale = 2.
    expected = 2 * (36 - 5) + 32 * (1 - cut_value(2.0)) - 2
    assert result.welfare == pytest.approx(expected, rel=1e-7)
    assert result.mip_gap == pytest.approx(0.0, abs=1e-6)
    assert result.price_basis == "fixed-integer LP"


def test_three_requests_compute_price(three_requests):
    _, result = three_requests
    points = exp_points(CutSettings())
    active = points[np.argmax(np.exp(-points) * (1 + points - 2.0))]
    # One more USD buys 1/3 unit of cheap effort worth 3 * 40 * 0.8 * exp(-t) per unit, minus the USD.
    expected = 32 * np.exp(-active) - 1
    price = prices_of(result)["compute"]
    assert price > 0
    assert price == pytest.approx(expected, rel=1e-6)
    # The smooth curve's price differs: a cut has the slope of its tangent point, not of u = 2.
    assert price == pytest.approx(32 * np.exp(-2.0) - 1, rel=0.1)


def test_three_requests_compute_finite_difference(three_requests):
    form, result = three_requests
    step = 0.01
    welfare = []
    for offset in (step, -step):
        shifted = build_form(load_instance(THREE_REQUESTS), Options(offsets={"compute": offset}))
        welfare.append(solve_mip(shifted, fix_integers=result.values).welfare)
    estimate = (welfare[0] - welfare[1]) / (2 * step)
    assert prices_of(result)["compute"] == pytest.approx(estimate, rel=1e-6)


def test_three_requests_routing_margin(three_requests):
    _, result = three_requests
    # Frontier serves more requests, but its 2 GPUs are full, so the next request goes to cheap.
    assert result.margins == {"request": "cheap"}


def test_three_requests_routing_price(three_requests):
    _, result = three_requests
    points = exp_points(CutSettings())
    active = points[np.argmax(np.exp(-points) * (1 + points - 2.0))]
    # Cheap's shortfall follows the cut at t: e >= exp(-t) * ((1 + t) * y - u), with y its share
    # and u fixed by the USD 2 of tokens the budget leaves. One more request adds 1/3 to y and
    # 40 * 0.8 * 3 * (1/3) * (1 - exp(-t) * (1 + t)) to the value.
    expected = 32 * (1 - np.exp(-active) * (1 + active))
    price = prices_of(result)["routing[request]"]
    assert price == pytest.approx(expected, rel=1e-6)
    assert price == pytest.approx(19.546, abs=1e-3)


@pytest.mark.parametrize("solver", [solve_mip, solve_highs], ids=["pyomo", "highs"])
def test_three_requests_routing_finite_difference(three_requests, solver):
    _, result = three_requests
    step = 1e-3  # share of the task's 3 requests
    welfare = []
    for offset in (step, -step):
        shifted = build_form(load_instance(THREE_REQUESTS), Options(offsets={"routing": offset}))
        welfare.append(solver(shifted, fix_integers=result.values).welfare)
    estimate = (welfare[0] - welfare[1]) / (2 * step) / 3
    assert prices_of(result)["routing[request]"] == pytest.approx(estimate, rel=1e-6)


@pytest.mark.parametrize("path", [WORKED_EXAMPLE, CODING_AGENT], ids=["worked_example", "coding_agent"])
def test_relaxed_lp_matches_reference(path):
    instance = load_instance(path)
    free = {use.action: "free" for use in instance.uses.values()}
    result = solve_mip(build_form(instance, Options(relax=True, autonomy=free)))
    welfare, reference = solve_reference(instance)
    assert result.welfare == pytest.approx(welfare, rel=1e-7)
    for price in result.prices:
        largest = max(abs(value) for row, value in reference.items()
                      if row.split("[")[0] == price.market)
        assert price.price == pytest.approx(reference[price.row], rel=1e-4,
                                            abs=1e-6 * max(largest, 1.0)), price.row


def single_model(risk_price):
    return {
        "schema_version": 1,
        "tasks": {"request": {"volume": 1, "value": 15, "loss": 1}},
        "uses": {"answer": {"input_share": 0, "action": "irreversible"}},
        "models": {"cheap": {"prices": {"input": 0, "output": 1000}, "quality": {"request": {
            "curve": "constant", "success": 0.7, "tokens": {"answer": 1000},
            "wrong_action": 0.05}}}},
        "markets": {"risk": {"kind": "risk", "price": risk_price}},
        "autonomy": {"levels": {
            "free": {"risk_multiplier": 1.0},
            "confirm": {"risk_multiplier": 0.2, "cost": 0.5},
            "multi-party": {"risk_multiplier": 0.0, "cost": 5.0},
        }},
    }


@pytest.mark.parametrize(("risk_price", "level"), [(12.4, "free"), (12.6, "confirm"), (0.0, "free"),
                                                   (400.0, "confirm"), (460.0, "multi-party")])
def test_autonomy_schedule_threshold(risk_price, level):
    # Confirming saves risk_price * 1 * 0.05 * (1 - 0.2) per request and costs 0.5:
    # it pays above risk_price = 12.5. Multi-party saves 0.01 * risk_price more for 4.5 more: 450.
    form = build_form(load_instance(single_model(risk_price)))
    result = solve_mip(form)
    schedule = {row["action"]: row for row in result.schedule}
    assert schedule["irreversible"]["level"] == level
    totals = {row["level"]: row["total"] for row in schedule["irreversible"]["levels"]}
    assert min(totals, key=totals.get) == level


def test_autonomy_fixed_level_is_kept():
    form = build_form(load_instance(single_model(100.0)), Options(autonomy={"irreversible": "free"}))
    result = solve_mip(form)
    assert result.schedule[0]["level"] == "free"


@pytest.fixture(scope="module")
def coding_agent_mip():
    form = build_form(load_instance(CODING_AGENT))
    result = solve_mip(form)
    assert result.status is SolutionStatus.OPTIMAL, result.message
    return form, result


BUDGET_ROWS = ["compute", "risk", "latency[fix-failing-test]", "gpu[pool-large]"]
ROUTING_ROWS = ["routing[fix-failing-test]", "routing[refactor-module]", "routing[triage-issue]"]


@pytest.mark.parametrize("row", BUDGET_ROWS + ROUTING_ROWS)
def test_fixed_integer_prices_match_finite_difference(coding_agent_mip, row):
    form, result = coding_agent_mip
    spec = next(s for s in form.markets if row in s.labels)
    index = spec.labels.index(row)
    step = 1e-4 * spec.scale[index]
    welfare = []
    for sign in (1.0, -1.0):
        offsets = np.zeros(len(spec.rows))
        offsets[index] = sign * step
        shifted = build_form(load_instance(CODING_AGENT), Options(offsets={spec.name: offsets}))
        welfare.append(solve_mip(shifted, fix_integers=result.values).welfare)
    estimate = (welfare[0] - welfare[1]) / (2 * step) * spec.report_factor[index]
    assert prices_of(result)[row] == pytest.approx(estimate, rel=1e-3, abs=1e-6), row


@pytest.mark.parametrize("row", ROUTING_ROWS)
def test_fixed_integer_routing_price_positive(coding_agent_mip, row):
    _, result = coding_agent_mip
    # Every class is served, so one more request adds surplus. With every count fixed it was 0.
    assert prices_of(result)[row] > 0.5


def test_coding_agent_integer_decisions(coding_agent_mip):
    form, result = coding_agent_mip
    for name in ("requests", "gpus_prefill", "gpus_decode", "autonomy"):
        values = result.values[form.column_slice(name)]
        assert np.allclose(values, np.round(values)), name
    assert {row["action"] for row in result.schedule} == {"reversible", "irreversible"}


def test_exp_cut_error_bound():
    settings = CutSettings(pieces=16)
    points = exp_points(settings)
    grid = np.linspace(0, 30, 200_001)
    approximation = np.maximum(0.0, np.max(np.exp(-points)[:, None]
                                           * (1 + points[:, None] - grid[None, :]), axis=0))
    measured = float(np.max(np.exp(-grid) - approximation))
    assert measured == pytest.approx(exp_error(points), rel=1e-3)
    assert np.all(approximation <= np.exp(-grid) + 1e-12)


CHAIN_WEIGHTS = [[0.35, 0.15, 0.3, 0.2], [0.5, 0.5], [0.1, 0.9], [0.2, 0.3, 0.1, 0.25, 0.15]]


@pytest.mark.parametrize("weights", CHAIN_WEIGHTS, ids=["generator", "even", "skewed", "five"])
def test_chain_cut_error_bound(weights):
    weights = np.array(weights)
    settings = CutSettings()
    bound = geometric_error(weights, settings)
    # Every mix whose pairwise ratios are within the factor, and the corners of that region.
    half = np.log(bound.mix_factor) / 2
    logs = np.random.default_rng(0).uniform(-half, half, (200_000, len(weights)))
    logs = np.concatenate([logs, np.sign(logs) * half])
    error = chain_effort(weights, np.exp(logs), settings) / np.exp(logs @ weights) - 1
    assert error.min() >= -1e-12
    assert error.max() <= bound.relative_error + 1e-12
    assert error.max() >= 0.5 * bound.relative_error


def test_chain_cut_error_grows_outside_range():
    weights = np.array([0.5, 0.5])
    settings = CutSettings()
    bound = geometric_error(weights, settings)
    ratio = 10 * bound.mix_factor
    allowed = chain_effort(weights, np.array([[1.0, ratio]]), settings)[0]
    assert allowed / np.sqrt(ratio) - 1 > 10 * bound.relative_error


def test_chain_cut_error_shrinks_with_pieces():
    weights = np.array(CHAIN_WEIGHTS[0])
    coarse = geometric_error(weights, CutSettings(geometric_pieces=9))
    fine = geometric_error(weights, CutSettings(geometric_pieces=33))
    # The error of one link falls with the square of the gap between points.
    assert fine.relative_error < coarse.relative_error / 10


@pytest.mark.parametrize("rho", [1e-3, 0.0106, 0.5])
def test_success_overstatement_is_maximum(rho):
    s = np.linspace(0, 60, 3_000_001)
    gap = np.exp(-s) - np.exp(-(1 + rho) * s)
    assert success_overstatement(rho) == pytest.approx(gap.max(), rel=1e-6)


def test_effort_error_within_a_priori_bound(coding_agent_mip):
    form, result = coding_agent_mip
    bound = form.approximation["effort"]
    realised = realised_effort_error(form, result.values)
    assert realised["options_checked"] == 2
    assert realised["outside_mix_range"] == 0
    assert 0 < realised["max_relative_error"] <= bound["relative_error"]
    assert 0 < realised["success_overstatement_usd"] <= bound["error_usd"]


def test_effort_error_from_tokens(coding_agent_mip):
    # The same check without the library's helper: effort over the geometric mean of the tokens.
    form, result = coding_agent_mip
    data = form.data
    route = result.values[form.column_slice("route")]
    tokens = result.values[form.column_slice("tokens")]
    effort = result.values[form.column_slice("effort")]
    index = form.layers["agent"].index
    checked = 0
    for i, k in enumerate(index.variable_options):
        if route[k] <= 1e-6 or data.family[k] != "cobb_douglas":
            continue
        pairs = [j for j in range(len(index.pair_option))
                 if index.pair_option[j] == k and data.in_curve[k, index.pair_use[j]]]
        weights = data.weight[k, index.pair_use[pairs]]
        mean = float(np.prod(tokens[pairs] ** weights))
        assert 1 - 1e-9 <= effort[i] / mean <= 1 + form.approximation["effort"]["relative_error"]
        checked += 1
    assert checked == 2


@pytest.mark.parametrize("path", [WORKED_EXAMPLE, CODING_AGENT], ids=["worked_example", "coding_agent"])
def test_highspy_path_matches_pyomo(path):
    form = build_form(load_instance(path))
    pyomo_result = solve_mip(form)
    direct = solve_highs(form)
    assert direct.status is SolutionStatus.OPTIMAL
    assert direct.welfare == pytest.approx(pyomo_result.welfare, rel=1e-9)
    expected = prices_of(pyomo_result)
    for row, price in prices_of(direct).items():
        assert price == pytest.approx(expected[row], rel=1e-6, abs=1e-9), row


@pytest.mark.parametrize(("path", "decision"), [
    ("capital.cache.pool-large.fixed_cost", "cache_on"),
    ("capital.training.fixed_cost", "training_run"),
])
def test_fixed_charge_switches_off(path, decision):
    form = build_form(load_instance(CODING_AGENT, [f"{path}=1000000"]))
    result = solve_mip(form)
    assert result.status is SolutionStatus.OPTIMAL
    assert result.values[form.column_slice(decision)][0] == pytest.approx(0.0)
    assert result.welfare_parts["fixed_charge"] == pytest.approx(0.0)


def test_fixed_charge_kept_when_cheap(coding_agent_mip):
    form, result = coding_agent_mip
    assert result.values[form.column_slice("cache_on")][0] == pytest.approx(1.0)
    assert result.values[form.column_slice("training_run")][0] == pytest.approx(1.0)


def test_autonomy_level_name_invalid():
    document = single_model(10.0)
    document["autonomy"]["levels"]["auto-approve"] = {"risk_multiplier": 1.0}
    with pytest.raises(InstanceError) as error:
        load_instance(document)
    assert "autonomy.levels" in str(error.value)


def test_autonomy_option_invalid():
    with pytest.raises(InstanceError) as error:
        build_form(load_instance(single_model(10.0)), Options(autonomy={"irreversible": "auto"}))
    assert "autonomy.irreversible" in str(error.value)


def test_unknown_curve_family_rejected():
    from tokenomy.model.data import compile_data
    from tokenomy.solvers.mip_form import _check_families

    instance = load_instance(WORKED_EXAMPLE)
    data = compile_data(instance)
    data.family[0] = "custom"  # a family an extension registered, with no tangent cuts here
    task, model = data.option_label(0)
    with pytest.raises(InstanceError) as error:
        _check_families(data, instance)
    message = str(error.value)
    assert f"models.{model}.quality (task {task}).curve" in message
    assert "convex backend" in message


def test_tenant_budgets_in_mixed_integer_form():
    """Tenant-scoped budgets meter the layers' spend in the mixed-integer form too."""
    from conftest import INSTANCES

    result = solve_highs(build_form(load_instance(INSTANCES / "multi_tenant.yaml")), time_limit=60)
    assert result.status is SolutionStatus.OPTIMAL
    prices = {price.row: price for price in result.prices}
    assert prices["tenant-compute[analytics]"].price > 0
    assert prices["tenant-compute[support]"].price == pytest.approx(0.0, abs=1e-9)
    assert prices["tenant-compute[analytics]"].usage == pytest.approx(
        prices["tenant-compute[analytics]"].rhs, rel=1e-6)


def test_extension_layer_rejected_by_mixed_integer_form():
    import sys

    from tokenomy.model.errors import SolveError
    from tokenomy.model.registry import REGISTRY

    from conftest import ROOT

    example = ROOT / "examples" / "tokenomy_energy"
    sys.path.insert(0, str(example))
    try:
        import tokenomy_energy

        with REGISTRY.isolated():
            tokenomy_energy.register(REGISTRY)
            instance = load_instance(example / "energy_retrieval.yaml")
            with pytest.raises(SolveError, match="extension layers \\(retrieval\\)"):
                build_form(instance)
    finally:
        sys.path.remove(str(example))
