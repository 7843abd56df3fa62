"""Shared fixtures and optimality checks for the test suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenomy.model.economy import Economy
from tokenomy.model.loader import load_instance
from tokenomy.solvers.joint import solve

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = ROOT / "instances"
WORKED_EXAMPLE = INSTANCES / "worked_example.yaml"
CODING_AGENT = INSTANCES / "coding_agent.yaml"


def solve_file(path, overrides=()):
    """Load, build and solve an instance; return (economy, result)."""
    economy = Economy(load_instance(path, list(overrides)))
    result = solve(economy)
    return economy, result


@pytest.fixture(scope="module")
def coding_agent():
    economy, result = solve_file(CODING_AGENT)
    assert result.certified, result.attempts
    return economy, result


def route_shares(economy) -> dict[tuple[str, str], float]:
    route = economy.builder.variables["route"].value
    return {economy.data.option_label(k): float(route[k]) for k in range(economy.data.option_count)}


def chosen_model(economy, task: str) -> str:
    shares = {model: share for (t, model), share in route_shares(economy).items() if t == task}
    return max(shares, key=shares.get)


def assert_close(actual, expected, rel, absolute, what):
    assert actual == pytest.approx(expected, rel=rel, abs=absolute), (
        f"{what}: got {actual!r}, expected {expected!r}")


def flat(values) -> np.ndarray:
    return np.atleast_1d(np.asarray(values, dtype=float))
