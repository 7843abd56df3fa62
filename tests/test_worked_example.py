"""The two-model worked example: routing crossovers with and without a risk price."""

import pytest

from conftest import WORKED_EXAMPLE, chosen_model, solve_file


@pytest.mark.parametrize(
    ("value", "risk_price", "expected"),
    [
        (19.5, 0, "cheap"),
        (20.5, 0, "frontier"),
        (10.0 - 0.5, 50, "cheap"),
        (10.0 + 0.5, 50, "frontier"),
        (100, 0, "frontier"),
        (2, 50, "cheap"),
    ],
)
def test_crossover_side(value, risk_price, expected):
    economy, result = solve_file(
        WORKED_EXAMPLE, [f"tasks.request.value={value}", f"markets.risk.price={risk_price}"])
    assert result.certified
    assert chosen_model(economy, "request") == expected


@pytest.mark.parametrize(("value", "risk_price"), [(10, 0), (100, 0), (15, 50)])
def test_welfare_is_best_surplus(value, risk_price):
    """Welfare equals max(V q - c - rho * wrong * loss) over the two models."""
    economy, result = solve_file(
        WORKED_EXAMPLE, [f"tasks.request.value={value}", f"markets.risk.price={risk_price}"])
    cheap = value * 0.7 - 1 - risk_price * 0.05
    frontier = value * 0.9 - 5 - risk_price * 0.01
    assert result.welfare == pytest.approx(max(cheap, frontier), abs=1e-5)
    assert result.price("routing[request]") == pytest.approx(max(cheap, frontier), abs=1e-5)


def test_crossover_value_from_sweep():
    """Between V = 19 and V = 21 the router switches exactly once, at V = 20."""
    from tokenomy.model.loader import read_document
    from tokenomy.solvers.sweep import sweep

    data = read_document(WORKED_EXAMPLE)
    values = [19.0, 19.9, 20.1, 21.0]
    points = sweep(data, str(WORKED_EXAMPLE), "tasks.request.value", values)
    frontier = [point.routing["request/frontier"] > 0.5 for point in points]
    assert frontier == [False, False, True, True]
    # A task value is a constant of the program, so each point rebuilds it.
    assert [point.reused for point in points] == [False, False, False, False]


def test_sweep_of_price_reuses_problem():
    from tokenomy.model.loader import read_document
    from tokenomy.solvers.sweep import sweep

    data = read_document(WORKED_EXAMPLE)
    points = sweep(data, str(WORKED_EXAMPLE), "markets.risk.price", [0.0, 20.0, 30.0])
    assert [point.reused for point in points] == [False, True, True]
    frontier = [point.routing["request/frontier"] > 0.5 for point in points]
    assert frontier == [False, False, True]
