"""Token-aware evaluation: per-task vectors add up to the welfare parts and the gaps."""

import csv

import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.compare import run_comparison
from tokenomy.solvers.evaluation import COLUMNS, COST_COLUMNS, evaluate_solve
from tokenomy.solvers.report import build_report, write_outputs
from tokenomy.solvers.result import Result, SolutionStatus, TerminationReason

from conftest import CODING_AGENT, WORKED_EXAMPLE, solve_file

REL, ABS = 1e-6, 1e-4          # USD per period; the welfare is about 83,000 USD


def column_total(evaluation, column):
    return sum(row[column] for row in evaluation["rows"])


def part(result, *names):
    return sum(result.welfare_parts.get(name, 0.0) for name in names)


@pytest.fixture(scope="module")
def solved(coding_agent):
    economy, result = coding_agent
    return economy, result, evaluate_solve(economy, result)


def test_rows_cover_tasks_then_shared_and_budgets(solved):
    economy, _, evaluation = solved
    rows = evaluation["rows"]
    assert [row["task"] for row in rows[:-2]] == list(economy.data.tasks)
    assert [row["row"] for row in rows[-2:]] == ["shared", "budgets"]
    for row in rows:
        assert set(COLUMNS) <= set(row), row


def test_solve_columns_add_up_to_welfare_parts(solved):
    _, result, evaluation = solved
    expected = {
        "value": part(result, "value", "defer", "cache_quality", "capability"),
        "compute_cost": -part(result, "compute"),
        "serving_cost": -part(result, "waiting", "cache"),
        "review_cost": -part(result, "review"),
        "other_cost": -part(result, "market.energy"),
        # Budgets charged at their prices cancel against the budgets row at
        # the optimum (complementary slackness).
        "latency_cost": 0.0,
        "risk_cost": 0.0,
    }
    for column, total in expected.items():
        assert column_total(evaluation, column) == pytest.approx(total, rel=REL, abs=ABS), column


def test_solve_net_and_welfare_add_up(solved):
    _, result, evaluation = solved
    assert column_total(evaluation, "net") == pytest.approx(result.welfare, rel=REL, abs=ABS)
    assert column_total(evaluation, "welfare") == pytest.approx(result.welfare, rel=REL, abs=ABS)
    assert evaluation["totals"]["net"] == pytest.approx(result.welfare, rel=REL, abs=ABS)
    for row in evaluation["rows"]:
        net = row["value"] - sum(row[column] for column in COST_COLUMNS)
        assert row["net"] == pytest.approx(net, rel=1e-12, abs=1e-9), row


def test_solve_gap_is_zero(solved):
    _, _, evaluation = solved
    assert evaluation["realized"] == evaluation["optimal"] == "joint optimum"
    for row in evaluation["rows"]:
        assert row["gap"] == 0.0, row
        assert row["welfare_gap"] == 0.0, row
        assert row["optimal_net"] == row["net"], row


def test_task_net_is_routing_price_times_volume(solved):
    # Success, risk and cost are homogeneous of degree one in each task's
    # variables, so at the optimum a task's net at prices is its routing
    # price per request times its volume (Euler's theorem). A task served
    # from the prefix cache also earns part of the cache's rent, so it is
    # left out.
    economy, result, evaluation = solved
    data = economy.data
    cached = set()
    cache_index = getattr(economy.layer("capital"), "cache_index", None)
    if cache_index is not None:
        served = economy.builder.variables["cached"].value > 1e-9
        cached = {data.tasks[x] for x in data.option_task[cache_index[0][served]]}
    checked = 0
    for x, task in enumerate(data.tasks):
        if task in cached:
            continue
        row = next(row for row in evaluation["rows"] if row["task"] == task)
        expected = result.price(f"routing[{task}]") * data.volume[x]
        assert row["net"] == pytest.approx(expected, rel=1e-5), task
        checked += 1
    assert checked >= 2


def test_risk_cost_is_priced_loss():
    economy, result = solve_file(WORKED_EXAMPLE, ["markets.risk.price=50"])
    evaluation = evaluate_solve(economy, result)
    assert column_total(evaluation, "risk_cost") == pytest.approx(
        -part(result, "market.risk"), rel=REL, abs=1e-9)
    assert column_total(evaluation, "welfare") == pytest.approx(result.welfare, rel=REL, abs=1e-9)
    budgets = evaluation["rows"][-1]
    assert budgets["risk_cost"] == 0.0


def test_uncertified_solve_has_no_rows(coding_agent):
    economy, _ = coding_agent
    result = Result(TerminationReason.LIMIT, SolutionStatus.FEASIBLE, 1.0, None, "SCS")
    evaluation = evaluate_solve(economy, result)
    assert evaluation["rows"] == []
    assert "not certified" in evaluation["reason"]


@pytest.fixture(scope="module")
def compared():
    economy = Economy(load_instance(CODING_AGENT, []))
    return run_comparison(economy)


def test_compare_gaps_add_up(compared):
    evaluation = compared["evaluation"]
    assert evaluation["realized"] == "siloed run"
    totals = evaluation["totals"]
    assert totals["gap"] == pytest.approx(compared["priced_gap"], rel=REL, abs=ABS)
    assert totals["welfare_gap"] == pytest.approx(compared["gap"], rel=REL, abs=ABS)
    assert totals["net"] == pytest.approx(compared["siloed_priced_welfare"], rel=REL, abs=ABS)
    assert totals["welfare"] == pytest.approx(compared["siloed_welfare"], rel=REL, abs=ABS)
    assert totals["optimal_net"] == pytest.approx(compared["global_welfare"], rel=REL, abs=ABS)


def test_report_and_csv_carry_evaluation(coding_agent, tmp_path):
    economy, result = coding_agent
    report = build_report(economy, result)
    assert report["evaluation"]["rows"], report["evaluation"]
    write_outputs(report, tmp_path)
    with open(tmp_path / "evaluation.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(economy.data.tasks) + 2
    assert {"task", "row", "value", "compute_cost", "latency_cost", "risk_cost", "net", "gap"} <= set(rows[0])
    total = sum(float(row["net"]) for row in rows)
    assert total == pytest.approx(result.welfare, rel=REL, abs=ABS)
