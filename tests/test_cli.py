"""The tokenomy command: exit codes, JSON report, written files, sweep, generate."""

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from tokenomy.model.loader import validate
from tokenomy.solvers.cli import app

from conftest import CODING_AGENT, WORKED_EXAMPLE

runner = CliRunner()

REPORT_KEYS = {"status", "welfare", "prices", "normalized_prices", "routing", "tokens", "equimarginal"}
PRICE_KEYS = {"market", "price", "unit", "binding", "slack", "rhs", "rhs_value"}


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def test_solve_json_report():
    result = run("solve", CODING_AGENT, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report)
    assert report["status"] == "optimal"
    for price in report["prices"]:
        assert PRICE_KEYS <= set(price), price
    compute = next(price for price in report["prices"] if price["market"] == "compute")
    assert compute["rhs"] == "markets.compute.budget"
    assert compute["rhs_value"] == 1000
    assert {row["kind"] for row in report["equimarginal"]} >= {"token", "route", "training"}
    assert report["normalized_prices"]["risk"] > 0


def test_solve_prints_summary():
    result = run("solve", WORKED_EXAMPLE, "--set", "markets.risk.price=50")
    assert result.exit_code == 0, result.output
    assert "welfare: 8.0000 USD per period" in result.stdout
    assert "frontier" in result.stdout
    assert "routing[request]" in result.stdout


def test_solve_writes_outputs(tmp_path):
    out = tmp_path / "run"
    result = run("solve", CODING_AGENT, "--out", out)
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in out.iterdir())
    assert names == ["equimarginal.csv", "evaluation.csv", "pools.csv", "prices.csv",
                     "report.json", "routing.csv", "tokens.csv"]
    report = json.loads((out / "report.json").read_text())
    assert report["welfare"] > 0
    assert (out / "prices.csv").read_text().startswith("market,")


def test_solve_twice_gives_same_report(tmp_path):
    first = json.loads(run("solve", CODING_AGENT, "--json").stdout)
    second = json.loads(run("solve", CODING_AGENT, "--json").stdout)
    for report in (first, second):
        report.pop("timings")
        for attempt in report["attempts"]:
            attempt.pop("seconds")
    assert first == second


def test_invalid_file_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("schema_version: 1\ntasks: {}\n", encoding="utf-8")
    result = run("validate", path)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "models = (missing)" in result.output


def test_invalid_override_exit_code():
    result = run("solve", WORKED_EXAMPLE, "--set", "markets.risk.price=-1")
    assert result.exit_code == 2
    assert "markets.risk.price = -1" in result.output


def test_infeasible_exit_code():
    result = run("solve", CODING_AGENT, "--set", "defer.enabled=false",
                 "--set", "markets.risk.budget=1")
    assert result.exit_code == 3
    assert "infeasible" in result.output
    assert "raise markets.risk.budget to at least" in result.output
    assert "Traceback" not in result.output


def test_uncertified_exit_code():
    result = run("solve", CODING_AGENT, "--solver", "CLARABEL", "--time-limit", "0.0001")
    assert result.exit_code == 3 or result.exit_code == 4
    assert "time limit" in result.output


def test_validate_ok():
    result = run("validate", CODING_AGENT)
    assert result.exit_code == 0
    assert "valid (3 tasks, 3 models, 2 pools, 5 markets)" in result.stdout


def test_schema_is_json_schema():
    result = run("schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "Instance"
    assert "tasks" in schema["properties"]


def test_sweep_json():
    result = run("sweep", WORKED_EXAMPLE, "--vary", "tasks.request.value=10:30:3", "--json")
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)
    assert [p["value"] for p in points] == [10.0, 20.0, 30.0]
    assert points[0]["routing"]["request/cheap"] == pytest.approx(1.0, abs=1e-6)
    assert points[2]["routing"]["request/frontier"] == pytest.approx(1.0, abs=1e-6)


def test_sweep_bad_range():
    result = run("sweep", WORKED_EXAMPLE, "--vary", "tasks.request.value=10:30")
    assert result.exit_code == 2
    assert "START:STOP:STEPS" in result.output


@pytest.mark.parametrize("seed", [0, 1])
def test_generate_is_valid_and_seeded(tmp_path, seed):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert run("generate", "--tasks", 7, "--models", 3, "--seed", seed, "--out", first).exit_code == 0
    assert run("generate", "--tasks", 7, "--models", 3, "--seed", seed, "--out", second).exit_code == 0
    assert first.read_text() == second.read_text()
    instance = validate(yaml.safe_load(first.read_text()), str(first))
    assert len(instance.tasks) == 7
    assert len(instance.models) == 3


def test_console_script_entry_point():
    """The installed module runs as a program (the console script calls the same main)."""
    completed = subprocess.run([sys.executable, "-m", "tokenomy.solvers.cli", "validate", str(WORKED_EXAMPLE)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "valid" in completed.stdout


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    from tokenomy.solvers import report

    target = tmp_path / "report.json"
    target.write_text("old", encoding="utf-8")

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_atomic(target, "new and longer text")
    assert target.read_text(encoding="utf-8") == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]


def test_rerun_into_same_directory_is_idempotent(tmp_path):
    out = tmp_path / "run"
    assert run("solve", WORKED_EXAMPLE, "--out", out).exit_code == 0
    first = {path.name: path.read_text() for path in out.iterdir() if path.suffix == ".csv"}
    assert run("solve", WORKED_EXAMPLE, "--out", out).exit_code == 0
    second = {path.name: path.read_text() for path in out.iterdir() if path.suffix == ".csv"}
    assert first == second
    assert sorted(path.name for path in out.iterdir()) == sorted([*first, "report.json"])


def test_report_files_readable_by_others(tmp_path):
    import os
    import stat

    out = tmp_path / "run"
    assert run("solve", WORKED_EXAMPLE, "--out", out).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE((out / "report.json").stat().st_mode)
    assert mode == 0o666 & ~mask
