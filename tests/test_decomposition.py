"""Decomposition solvers against the joint solve: bounds, prices, allocations and request rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokenomy.model.economy import Economy
from tokenomy.model.errors import InstanceError
from tokenomy.model.generate import generate_instance
from tokenomy.model.loader import load_instance, validate
from tokenomy.solvers.cli import app
from tokenomy.solvers.decompose.blocks import CvxpyBlock, partition
from tokenomy.solvers.decompose.coordinator import Decomposition, Termination
from tokenomy.solvers.decompose.lagrangian import build_lagrangian
from tokenomy.solvers.decompose.request_rows import attach_requests, read_request_file
from tokenomy.solvers.decompose.requests import (
    RequestBlock,
    RequestSet,
    option_coefficients,
    request_structure,
)
from tokenomy.solvers.joint import solve

from conftest import CODING_AGENT, INSTANCES, ROOT

SMALL_INSTANCES = sorted(INSTANCES.glob("*.yaml")) + sorted(INSTANCES.glob("failure_modes/*.yaml"))
RISKY_INSTANCES = [CODING_AGENT, INSTANCES / "coding_agent_real.yaml",
                   INSTANCES / "failure_modes" / "cache_misuse.yaml",
                   INSTANCES / "failure_modes" / "over_delegation.yaml",
                   INSTANCES / "failure_modes" / "under_verification.yaml"]

# Stated price tolerance per method: relative to the joint dual, or absolute as a
# share of the largest price of the same market.
PRICE_TOLERANCE = {"bundle": 0.05, "subgradient": 0.2, "admm": 0.25}


def _ids(paths):
    return [path.stem for path in paths]


def _joint(path):
    instance = load_instance(path)
    economy = Economy(instance)
    result = solve(economy)
    assert result.certified, result.message
    return instance, economy, result


def _assert_bounds_bracket(run, welfare):
    slack = 1e-7 * max(abs(welfare), 1.0)
    assert run.dual_bound >= welfare - slack, f"dual bound {run.dual_bound} below optimum {welfare}"
    assert run.primal_bound is not None, "no feasible allocation was found"
    assert run.primal_bound <= welfare + slack, f"primal bound {run.primal_bound} above optimum {welfare}"


def _gross_demand(economy) -> dict[str, float]:
    """Return each market row's demand at the joint optimum: its positive contributions only."""
    demand = {}
    for spec in economy.markets:
        quantity = economy.builder.quantities.get(spec.quantity)
        if quantity is None:
            continue
        total = np.zeros(quantity.size)
        for part in quantity.contributions:
            value = economy.builder.variables[part.variable].value
            total += part.aggregate @ np.maximum(part.coefficient * value, 0.0)
        demand.update(zip(spec.labels, total[spec.rows], strict=True))
    return demand


def _assert_prices_agree(run, joint_result, economy, tolerance):
    """Compare every price whose dual is unique: rows that some layer actually uses.

    A price error is allowed when it is within ``tolerance`` of the joint dual,
    or when it moves the value of the row's whole right-hand side (or usage) by
    less than the target gap's share of welfare.
    """
    joint = {price.row: price for price in joint_result.prices if price.price is not None}
    demand = _gross_demand(economy)
    ours = [price for price in run.prices if price.row in joint]
    assert ours, "no price to compare"
    for price in ours:
        reference = joint[price.row]
        if reference.mode != "equality" and demand.get(price.row, 1.0) <= 1e-9:
            continue  # no layer uses the row: any price up to its supply cost is optimal
        size = max(abs(reference.rhs or 0.0), abs(reference.usage or 0.0), demand.get(price.row, 0.0), 1.0)
        if reference.kind == "routing":
            size = 1.0
        allowed = max(tolerance * abs(reference.price), 1e-4 * abs(joint_result.welfare) / size)
        assert price.price is not None, f"{price.row}: price withheld ({price.reason})"
        assert abs(price.price - reference.price) <= allowed, (
            f"{price.row}: decomposition {price.price:.6g}, joint {reference.price:.6g} "
            f"{reference.unit}")


# -- the vectorized request block ------------------------------------------------


@pytest.mark.parametrize("path", RISKY_INSTANCES, ids=_ids(RISKY_INSTANCES))
def test_request_block_matches_cvxpy(path):
    economy = Economy(load_instance(path))
    lagrangian = build_lagrangian(economy)
    structure = request_structure(economy)
    kernel = RequestBlock(structure, RequestSet.classes(structure.task_count))
    names = partition(economy)[0]
    reference = CvxpyBlock("requests", economy, lagrangian, names, local_bounds=False)
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 0.2, lagrangian.size)
    for trial in range(3):
        prices = lagrangian.project(base * rng.uniform(0.2, 3.0, lagrangian.size)) if trial else \
            np.zeros(lagrangian.size)
        coefficients = lagrangian.coefficients(prices, structure.sizes)
        ours = kernel.respond(option_coefficients(structure, lagrangian, prices))
        theirs = reference.respond(prices)
        # The closed forms are exact, so the conic solver can only fall short of them.
        assert ours.value >= theirs.value - 1e-9
        assert ours.value == pytest.approx(theirs.value, rel=1e-5, abs=1e-8)
        recomputed = sum(coefficients[name] @ ours.aggregates[name] for name in structure.sizes)
        assert recomputed == pytest.approx(ours.value, rel=1e-9, abs=1e-12)


def test_identical_requests_match_classes():
    instance = load_instance(CODING_AGENT)
    classes = Decomposition(Economy(instance)).solve("bundle", max_iterations=20, stall_iterations=100)
    tasks = np.repeat(np.arange(len(instance.tasks)), 3)
    volumes = np.array([task.volume for task in instance.tasks.values()])
    split, requests = attach_requests(instance, tasks, volumes[tasks] / 3, np.full(len(tasks), np.nan),
                                      np.ones(len(tasks)))
    rows = Decomposition(Economy(split), requests, chunk_size=4).solve(
        "bundle", max_iterations=20, stall_iterations=100)
    assert rows.dual_bound == pytest.approx(classes.dual_bound, rel=1e-7)
    assert rows.primal_bound == pytest.approx(classes.primal_bound, rel=1e-7)


def _without_latency(data: dict) -> dict:
    data = dict(data)
    data["markets"] = {name: market for name, market in data["markets"].items()
                       if market["kind"] != "latency"}
    data["tasks"] = {name: {k: v for k, v in task.items() if k != "latency_sla"}
                     for name, task in data["tasks"].items()}
    return data


def test_heterogeneous_requests_match_expanded_joint(tmp_path):
    """Requests with their own values solve like an instance with one task per request."""
    data = _without_latency(yaml.safe_load(CODING_AGENT.read_text()))
    requests = [("fix-failing-test", 800, 45.0), ("fix-failing-test", 1200, 20.0),
                ("refactor-module", 300, 80.0), ("triage-issue", 5000, 1.0), ("triage-issue", 1000, 6.0)]
    expanded = dict(data)
    expanded["tasks"] = {}
    for i, (task, count, value) in enumerate(requests):
        original = data["tasks"][task]
        key = original.get("group", task)
        expanded["tasks"][f"{task}-{i}"] = {**original, "volume": count, "value": value, "group": key}
    _, economy, joint = _joint_from_data(expanded, tmp_path / "expanded.yaml")

    file = tmp_path / "requests.csv"
    file.write_text("task,count,value\n" + "".join(f"{t},{c},{v}\n" for t, c, v in requests))
    instance = validate(data, "inline")
    instance, request_set = read_request_file(file, instance)
    run = Decomposition(Economy(instance), request_set).solve("bundle", gap=1e-6, max_iterations=300)
    _assert_bounds_bracket(run, joint.welfare)
    assert run.gap <= 1e-5


def _joint_from_data(data, path):
    path.write_text(yaml.safe_dump(data))
    return _joint(path)


@pytest.mark.parametrize("text, problem", [
    ("task,count\nnot-a-task,1\n", "line 2.task"),
    ("task,count\ntriage-issue,many\n", "line 2.count"),
    ("task,count\ntriage-issue,-3\n", "must be positive"),
    ("count\n1\n", "no 'task' column"),
    ("task,weight\ntriage-issue,1\n", "unknown columns"),
    ("task\n", "no request rows"),
])
def test_request_file_errors(tmp_path, text, problem):
    file = tmp_path / "requests.csv"
    file.write_text(text)
    with pytest.raises(InstanceError) as caught:
        read_request_file(file, load_instance(CODING_AGENT))
    message = str(caught.value)
    assert problem in message
    assert str(file) in message


# -- every method against the joint solve ----------------------------------------


@pytest.mark.parametrize("path", SMALL_INSTANCES, ids=_ids(SMALL_INSTANCES))
def test_bundle_matches_joint(path):
    instance, economy, joint = _joint(path)
    run = Decomposition(Economy(instance)).solve("bundle", gap=2e-5, max_iterations=400)
    assert run.termination is Termination.GAP, run.message
    _assert_bounds_bracket(run, joint.welfare)
    # The joint solve's own accuracy (about 1e-8 relative) adds to the reported gap.
    assert joint.welfare - run.primal_bound <= (run.gap + 1e-7) * abs(run.dual_bound)
    _assert_prices_agree(run, joint, economy, PRICE_TOLERANCE["bundle"])


# Serving-heavy instances such as failure_modes/serving_congestion.yaml stall near a
# 3e-4 gap with subgradient steps, because the serving block's response jumps
# between extreme points. The bundle method closes them.
SUBGRADIENT_INSTANCES = [CODING_AGENT, INSTANCES / "coding_agent_real.yaml", INSTANCES / "pigou.yaml",
                         INSTANCES / "failure_modes" / "cache_misuse.yaml"]


@pytest.mark.parametrize("path", SUBGRADIENT_INSTANCES, ids=_ids(SUBGRADIENT_INSTANCES))
def test_subgradient_matches_joint(path):
    instance, economy, joint = _joint(path)
    run = Decomposition(Economy(instance)).solve("subgradient", gap=1e-4, max_iterations=800,
                                                 stall_iterations=400)
    assert run.termination is Termination.GAP, run.message
    _assert_bounds_bracket(run, joint.welfare)
    _assert_prices_agree(run, joint, economy, PRICE_TOLERANCE["subgradient"])


ADMM_INSTANCES = [INSTANCES / "pigou.yaml", INSTANCES / "failure_modes" / "serving_congestion.yaml",
                  INSTANCES / "worked_example.yaml"]


@pytest.mark.parametrize("path", ADMM_INSTANCES, ids=_ids(ADMM_INSTANCES))
def test_admm_matches_joint(path):
    instance, economy, joint = _joint(path)
    run = Decomposition(Economy(instance)).solve("admm", gap=1e-3, max_iterations=300,
                                                 stall_iterations=300)
    assert run.termination is Termination.GAP, run.message
    _assert_bounds_bracket(run, joint.welfare)
    _assert_prices_agree(run, joint, economy, PRICE_TOLERANCE["admm"])


def test_admm_bounds_on_coding_agent(coding_agent):
    economy, joint = coding_agent
    run = Decomposition(Economy(economy.instance)).solve("admm", max_iterations=25)
    _assert_bounds_bracket(run, joint.welfare)
    assert run.gap < 0.05


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 6), models=st.integers(2, 4))
def test_bounds_valid_on_generated_instances(seed, tasks, models):
    instance = validate(generate_instance(tasks, models, seed), f"generated-{seed}")
    joint = solve(Economy(instance))
    assert joint.certified, joint.message
    run = Decomposition(Economy(instance)).solve("bundle", max_iterations=40)
    slack = 1e-7 * max(abs(joint.welfare), 1.0)
    assert run.dual_bound >= joint.welfare - slack
    if run.primal_bound is not None:
        assert run.primal_bound <= joint.welfare + slack
    for item in run.iterations:
        assert item.dual_bound >= joint.welfare - slack
        assert item.primal_bound is None or item.primal_bound <= joint.welfare + slack


# -- certificates of the reported allocation and prices --------------------------


def test_allocation_satisfies_every_market(coding_agent):
    economy, _ = coding_agent
    fresh = Economy(economy.instance)
    run = Decomposition(fresh).solve("bundle", gap=5e-5)
    for name, value in run.allocation.items():
        fresh.builder.variables[name].value = value
    route = run.allocation["route"]
    sums = np.bincount(fresh.data.option_task, weights=route, minlength=len(fresh.data.tasks))
    np.testing.assert_allclose(sums + run.allocation["defer"], 1.0, atol=1e-7)
    for spec in fresh.markets:
        if not spec.is_constraint or spec.kind == "routing":
            continue
        usage = fresh.builder.evaluate(spec.quantity)[spec.rows]
        assert np.all(usage <= spec.rhs + 1e-6 * spec.scale), f"{spec.name} exceeds its right-hand side"


def test_complementary_slackness(coding_agent):
    economy, _ = coding_agent
    run = Decomposition(Economy(economy.instance)).solve("bundle", gap=5e-5)
    assert run.certified, run.message
    for price in run.prices:
        if price.slack is None or price.kind == "routing":
            continue
        # A row with room to spare carries no price (up to the gap's precision).
        if price.slack > 1e-3 * max(abs(price.rhs or 0.0), abs(price.usage or 0.0), 1.0):
            assert abs(price.price) * price.slack <= 1e-3 * abs(run.dual_bound), price.row


@pytest.mark.parametrize("market", ["compute", "risk"])
def test_price_matches_finite_difference(coding_agent, market):
    economy, _ = coding_agent
    run = Decomposition(Economy(economy.instance)).solve("bundle", gap=2e-5, max_iterations=400)
    assert run.certified, run.message
    price = next(p for p in run.prices if p.row == market)
    step = 0.01 * price.rhs
    welfare = []
    for sign in (1, -1):
        perturbed = Economy(economy.instance, offsets={market: sign * step})
        result = solve(perturbed)
        assert result.certified
        welfare.append(result.welfare)
    derivative = (welfare[0] - welfare[1]) / (2 * step)
    # The dual function is flat near its minimum, so a gap of 2e-5 fixes prices to a few percent.
    assert price.price == pytest.approx(derivative, rel=0.03)


# -- stopping ------------------------------------------------------------------


def test_interrupt_returns_best_bounds(coding_agent):
    economy, joint = coding_agent

    def stop(item):
        if item.iteration == 6:
            raise KeyboardInterrupt

    run = Decomposition(Economy(economy.instance)).solve("bundle", callback=stop)
    assert run.termination is Termination.INTERRUPTED
    assert len(run.iterations) == 7
    assert run.dual_bound >= joint.welfare
    assert all(price.price is None and price.reason for price in run.prices)


def test_iteration_limit_withholds_prices(coding_agent):
    economy, _ = coding_agent
    run = Decomposition(Economy(economy.instance)).solve("subgradient", max_iterations=3)
    assert run.termination is Termination.ITERATION_LIMIT
    assert not run.certified
    assert all(price.price is None for price in run.prices)
    assert "gap" in run.message
    assert run.final_prices  # the trajectory's end is still reported


def test_trajectory_records_distances(coding_agent):
    economy, _ = coding_agent
    run = Decomposition(Economy(economy.instance)).solve("bundle", gap=1e-4)
    layers = set(run.iterations[0].distance)
    assert {"router", "agent", "serving", "capital"} <= layers
    assert all(value >= 0 for item in run.iterations for value in item.distance.values())


# -- command line ----------------------------------------------------------------


def test_cli_decompose_writes_outputs(tmp_path):
    out = tmp_path / "run"
    plot = tmp_path / "trajectory.png"
    result = CliRunner().invoke(app, ["decompose", str(CODING_AGENT), "--out", str(out),
                                      "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "stopped (gap)" in result.output
    report = json.loads((out / "decomposition.json").read_text())
    assert report["decomposition"]["certified"] is True
    assert report["decomposition"]["iterations"][0]["prices"]
    assert (out / "prices.csv").read_text().startswith("market,")
    assert "dual_bound" in (out / "iterations.csv").read_text().splitlines()[0]
    assert plot.stat().st_size > 10_000


def test_cli_decompose_json_and_uncertified_exit():
    result = CliRunner().invoke(app, ["decompose", str(CODING_AGENT), "--json",
                                      "--max-iterations", "25"])
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert report["decomposition"]["termination"] == "iteration_limit"
    assert all(price["price"] is None for price in report["decomposition"]["prices"])


def test_cli_decompose_request_rows(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["decompose", str(CODING_AGENT), "--generate-requests", "500",
                                      "--chunk-size", "128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = (out / "requests.csv").read_text().splitlines()
    assert lines[0].startswith("request,task,model,surplus,tokens:read")
    assert len(lines) == 501


def test_cli_decompose_bad_request_file(tmp_path):
    file = tmp_path / "requests.csv"
    file.write_text("task\nunknown-task\n")
    result = CliRunner().invoke(app, ["decompose", str(CODING_AGENT), "--requests", str(file)])
    assert result.exit_code == 2
    assert "unknown-task" in result.output
    assert "Traceback" not in result.output


def test_extension_layer_decomposes():
    """A layer that only declares its CVXPY formulation joins a block solved with CVXPY."""
    import sys

    from tokenomy.model.registry import REGISTRY

    example = ROOT / "examples" / "tokenomy_energy"
    sys.path.insert(0, str(example))
    try:
        import tokenomy_energy

        with REGISTRY.isolated():
            tokenomy_energy.register(REGISTRY)
            instance, economy, joint = _joint(example / "energy_retrieval.yaml")
            decomposition = Decomposition(Economy(instance))
            assert decomposition.kernel is None
            run = decomposition.solve("bundle", gap=1e-5)
    finally:
        sys.path.remove(str(example))
    assert run.termination is Termination.GAP, run.message
    _assert_bounds_bracket(run, joint.welfare)
    energy = next(price for price in run.prices if price.market == "energy")
    reference = next(price for price in joint.prices if price.market == "energy")
    assert energy.price == pytest.approx(reference.price, rel=0.05)


def test_cli_decompose_reads_instance_request_rows(tmp_path):
    out = tmp_path / "run"
    instance = INSTANCES / "coding_agent_requests.yaml"
    result = CliRunner().invoke(app, ["decompose", str(instance), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = (out / "requests.csv").read_text().splitlines()
    assert len(lines) == 3001
    report = json.loads((out / "decomposition.json").read_text())
    assert report["decomposition"]["certified"] is True


def test_html_report_of_a_run(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["decompose", str(CODING_AGENT), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = tmp_path / "run.html"
    rendered = CliRunner().invoke(app, ["report", str(out / "decomposition.json"), "--html", str(page)])
    assert rendered.exit_code == 0, rendered.output
    html = page.read_text()
    for heading in ("Prices", "Routing and tokens", "Decomposition"):
        assert f"<h2>{heading}" in html


@pytest.mark.parametrize("name", ["process", "mpi"])
def test_engine_matches_serial(name):
    """The request chunks give the same run on resident workers as in this process."""
    from tokenomy.solvers.decompose.engines import make_engine
    from tokenomy.solvers.decompose.request_rows import generate_requests

    if name == "mpi":
        pytest.importorskip("mpi4py", reason="install the cluster extra to test the mpi engine")
    instance, requests = generate_requests(load_instance(CODING_AGENT), 2000, seed=3)
    serial = Decomposition(Economy(instance), requests, chunk_size=500).solve(
        "bundle", max_iterations=30, stall_iterations=100)
    engine = make_engine(name, workers=2)
    decomposition = Decomposition(Economy(instance), requests, engine=engine, chunk_size=500)
    try:
        parallel = decomposition.solve("bundle", max_iterations=30, stall_iterations=100)
    finally:
        decomposition.close()
    assert parallel.dual_bound == pytest.approx(serial.dual_bound, rel=1e-9)
    assert parallel.primal_bound == pytest.approx(serial.primal_bound, rel=1e-9)
