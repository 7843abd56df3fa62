"""One-parameter families: re-solve the compiled program along a path's values."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model.economy import Economy
from ..model.errors import FieldProblem, InstanceError
from ..model.loader import apply_overrides, validate
from .joint import solve

logger = logging.getLogger(__name__)


@dataclass
class SweepPoint:
    """The solve at one value of the varied field."""

    value: float
    status: str
    welfare: float | None
    reused: bool
    routing: dict[str, float] = field(default_factory=dict)
    prices: dict[str, float | None] = field(default_factory=dict)


def parse_vary(text: str) -> tuple[str, np.ndarray]:
    """Parse ``PATH=START:STOP:STEPS`` into the path and the values."""
    path, _, spec = text.partition("=")
    parts = spec.split(":")
    try:
        start, stop, steps = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3 or steps < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise InstanceError("--vary", [FieldProblem(
            path or "(vary)", spec, "is not of the form START:STOP:STEPS with STEPS >= 1",
            "write e.g. --vary tasks.request.value=5:40:8")], what="option") from None
    return path.strip(), np.linspace(start, stop, steps)


def sweep(
    data: Mapping[str, Any], source: str, path: str, values: Iterable[float],
    solvers: list[str] | None = None,
) -> list[SweepPoint]:
    """Solve the instance ``data`` once per value of the field at ``path``.

    The first point compiles the program; later points only assign new
    parameter values unless the structure changes (then it rebuilds, and the
    point records ``reused=False``).
    """
    points: list[SweepPoint] = []
    economy: Economy | None = None
    for value in values:
        instance = validate(apply_overrides(data, [(path, float(value))], source), source)
        if economy is None:
            economy, reused = Economy(instance), False
        else:
            reused = economy.update(instance)
        result = solve(economy, solvers)
        point = SweepPoint(float(value), result.status.value, result.welfare, reused)
        if result.welfare is not None:
            route = economy.builder.variables["route"].value
            point.routing = {
                "/".join(economy.data.option_label(k)): float(route[k])
                for k in range(economy.data.option_count)
            }
            defer = economy.builder.variables["defer"].value
            point.routing.update({f"{task}/defer": float(defer[x])
                                  for x, task in enumerate(economy.data.tasks)
                                  if economy.data.defer_enabled[x]})
        point.prices = {price.row: price.price for price in result.prices}
        points.append(point)
        logger.info("sweep %s=%g: %s, welfare %s", path, value, point.status, point.welfare)
    return points
