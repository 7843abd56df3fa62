"""The mixed-integer backends and the export command of the tokenomy CLI."""

import json

import pytest
from typer.testing import CliRunner

from tokenomy.solvers.cli import app

from conftest import CODING_AGENT, WORKED_EXAMPLE

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


def test_highs_infeasible_names_irreducible_subset():
    from tokenomy.model.loader import load_instance
    from tokenomy.solvers.mip_form import build_form
    from tokenomy.solvers.mip_highs import solve_highs
    from tokenomy.solvers.result import TerminationReason

    instance = load_instance(WORKED_EXAMPLE, ["markets.compute={kind: compute, budget: 0.5}"])
    result = solve_highs(build_form(instance))
    assert result.termination is TerminationReason.INFEASIBLE
    labels = [row["label"] for row in result.diagnosis["rows"]]
    assert "compute" in labels
    assert "routing[request]" in labels
    compute = next(row for row in result.diagnosis["rows"] if row["label"] == "compute")
    assert compute["rhs_path"] == "markets.compute.budget"
