"""The mixed-integer form: hand-derived optima, agreement with an independent LP, prices."""

import numpy as np
import pytest
from mip_reference import solve_reference

from tokenomy.model.errors import InstanceError
from tokenomy.model.loader import load_instance
from tokenomy.solvers.cuts import CutSettings, exp_error, exp_points
from tokenomy.solvers.mip import solve_mip
from tokenomy.solvers.mip_form import Options, build_form
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


@pytest.mark.parametrize("row", BUDGET_ROWS)
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
