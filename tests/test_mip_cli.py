"""The mixed-integer backends and the export command of the tokenomy CLI."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.cli import app
from tokenomy.solvers.joint import solve
from tokenomy.solvers.mip import solve_mip
from tokenomy.solvers.mip_cli import run_mip, write_mip_outputs
from tokenomy.solvers.mip_form import build_form
from tokenomy.solvers.mip_highs import solve_highs
from tokenomy.solvers.report import build_report, write_outputs
from tokenomy.solvers.result import TerminationReason

from conftest import CODING_AGENT, WORKED_EXAMPLE

INFEASIBLE = ["markets.compute={kind: compute, budget: 0.5}"]
"""The worked example with a compute budget below the cheapest model's tokens."""

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.mark.parametrize("backend", ["pyomo", "highs"])
def test_solve_backend_json(backend):
    result = run("solve", CODING_AGENT, "--backend", backend, "--json", "--mip-gap", "1e-4",
                 "--time-limit", "60")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == backend
    assert report["price_basis"] == "fixed-integer LP"
    assert report["termination"] == "optimal"
    assert report["mip_gap_limit"] == 1e-4
    assert report["time_limit"] == 60
    assert {row["action"] for row in report["autonomy"]} == {"reversible", "irreversible"}
    compute = next(row for row in report["prices"] if row["market"] == "compute")
    assert compute["price"] > 0


@pytest.mark.parametrize("backend", ["pyomo", "highs"])
def test_json_stdout_is_only_json(backend):
    # A subprocess, because highspy prints its banner from C++, past Python's sys.stdout.
    completed = subprocess.run(
        [sys.executable, "-m", "tokenomy.solvers.cli", "solve", str(WORKED_EXAMPLE), "--backend",
         backend, "--json"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["backend"] == backend


def test_solve_pyomo_summary():
    result = run("solve", WORKED_EXAMPLE, "--backend", "pyomo", "--set", "markets.risk.price=50")
    assert result.exit_code == 0, result.output
    assert "autonomy schedule" in result.output
    assert "fixed-integer LP" in result.output


def test_solve_unknown_backend():
    result = run("solve", WORKED_EXAMPLE, "--backend", "gurobi")
    assert result.exit_code == 2
    assert "--backend" in result.output


@pytest.mark.parametrize(("file_format", "marker"), [("lp", "max"), ("mps", "ROWS")])
def test_export_formats(tmp_path, file_format, marker):
    out = tmp_path / f"model.{file_format}"
    result = run("export", CODING_AGENT, "--format", file_format, "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert marker in text
    assert "market_compute" in text


def test_export_unknown_format(tmp_path):
    result = run("export", WORKED_EXAMPLE, "--format", "nl", "--out", tmp_path / "model.nl")
    assert result.exit_code == 2
    assert "lp or mps" in result.output


@pytest.mark.parametrize("solver", [solve_mip, solve_highs], ids=["pyomo", "highs"])
def test_infeasible_names_irreducible_subset(solver):
    result = solver(build_form(load_instance(WORKED_EXAMPLE, INFEASIBLE)))
    assert result.termination is TerminationReason.INFEASIBLE
    rows = {row["label"]: row for row in result.diagnosis["rows"]}
    assert "routing[request]" in rows
    assert rows["compute"]["market"] == "compute"
    assert rows["compute"]["rhs_path"] == "markets.compute.budget"
    assert rows["compute"]["component"] == "market_compute[0]"
    assert "compute (markets.compute.budget)" in result.message


@pytest.mark.parametrize("backend", ["pyomo", "highs"])
def test_solve_infeasible_exit_code(backend):
    result = run("solve", WORKED_EXAMPLE, "--backend", backend, "--set", INFEASIBLE[0])
    assert result.exit_code == 3, result.output
    assert "markets.compute.budget" in result.output


WHOLE_GPUS = {
    # Three requests of 800 decode tokens on GPUs that decode 1000 tokens per period each:
    # 2.4 GPUs fit the pool's 2.5, but whole GPUs need 3.
    "schema_version": 1,
    "period_seconds": 1,
    "tasks": {"request": {"volume": 3, "value": 40}},
    "uses": {"answer": {"input_share": 0, "action": "irreversible"}},
    "models": {"frontier": {
        "prices": {"input": 0, "output": 5000}, "pool": "frontier-pool",
        "quality": {"request": {"curve": "constant", "success": 0.9, "tokens": {"answer": 800}}}}},
    "pools": {"frontier-pool": {"gpus": 2.5, "prefill_tokens_per_gpu_second": 1e6,
                                "decode_tokens_per_gpu_second": 1000}},
}


@pytest.mark.parametrize("solver", [solve_mip, solve_highs], ids=["pyomo", "highs"])
def test_infeasible_only_with_whole_gpus(solver):
    result = solver(build_form(load_instance(WHOLE_GPUS)))
    assert result.termination is TerminationReason.INFEASIBLE
    assert result.diagnosis["basis"] == "integrality"
    assert "whole requests and GPUs" in result.message


def _headers(directory: Path) -> dict[str, list[str]]:
    headers = {}
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="") as stream:
            headers[path.name] = next(csv.reader(stream), [])
    return headers


def test_mip_out_writes_convex_tables(tmp_path):
    report, _ = run_mip(Path(CODING_AGENT), [], None, "highs", 1e-6)
    write_mip_outputs(report, tmp_path / "mip")
    economy = Economy(load_instance(CODING_AGENT))
    write_outputs(build_report(economy, solve(economy)), tmp_path / "convex")

    mip, convex = _headers(tmp_path / "mip"), _headers(tmp_path / "convex")
    assert sorted(mip) == sorted(convex)
    for table in ("prices.csv", "routing.csv", "tokens.csv", "pools.csv", "equimarginal.csv"):
        assert mip[table] == convex[table], table
    assert (tmp_path / "mip" / "report.json").exists()
    assert not [path.name for path in (tmp_path / "mip").iterdir() if path.name.startswith(".")]
    saved = json.loads((tmp_path / "mip" / "report.json").read_text())
    assert saved["routing_margins"] == report["routing_margins"]


def test_mip_equimarginal_residuals(tmp_path):
    report, _ = run_mip(Path(CODING_AGENT), [], None, "highs", 1e-6)
    margins = set(report["routing_margins"].items())
    rows = report["equimarginal"]
    for row in rows:
        tolerance = 1e-6 * max(1.0, row["marginal_cost"])
        if row["kind"] == "route" and (row["task"], row["model"]) in margins:
            assert row["residual"] == pytest.approx(0.0, abs=tolerance), row
        elif row["kind"] in ("token", "training") and row["used"]:
            assert row["residual"] == pytest.approx(0.0, abs=tolerance), row
        else:
            assert row["residual"] <= tolerance, row


@pytest.mark.parametrize("backend", ["pyomo", "highs"])
def test_out_writes_csv_tables(tmp_path, backend):
    out = tmp_path / "run"
    result = run("solve", CODING_AGENT, "--backend", backend, "--out", out)
    assert result.exit_code == 0, result.output
    written = {path.name for path in out.iterdir()}
    expected = {"report.json", "prices.csv", "routing.csv", "tokens.csv", "equimarginal.csv",
                "pools.csv", "evaluation.csv"}
    assert expected <= written
    assert (out / "prices.csv").read_text().startswith("market,")
