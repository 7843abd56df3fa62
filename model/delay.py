"""Queueing delay per token of a pool phase, for reports and checks."""

from __future__ import annotations

from .schema import DelayCurve


def delay_per_token(curve: DelayCurve, load: float, gpus: float) -> float:
    """Return the queueing delay one token experiences (seconds).

    ``load`` and ``gpus`` are in the same unit (GPU-equivalents); an mm1 pool
    at or above capacity has infinite delay.
    """
    if curve.curve == "mm1":
        return curve.scale * load / (gpus - load) if gpus > load else float("inf")
    if gpus <= 0:
        return curve.free_flow if load == 0 else float("inf")
    return curve.free_flow + curve.slope * (load / gpus) ** curve.power
