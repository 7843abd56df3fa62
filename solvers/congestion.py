"""Flat pricing against congestion pricing in the serving market.

Under flat per-token pricing a request weighs only the queueing delay it
experiences itself. The resulting user (Wardrop) equilibrium maximises the
Beckmann potential instead of welfare (``Serving(mode="equilibrium")``). The
system optimum charges each token its marginal delay, own plus external: the
decode and prefill prices. Their difference from the delay a token
experiences is the Pigouvian toll.
"""

from __future__ import annotations

import numpy as np

from ..model.delay import delay_per_token
from ..model.economy import Economy
from ..model.errors import SolveError
from ..model.layers.agent import Agent
from ..model.layers.capital import Capital
from ..model.layers.router import Router
from ..model.layers.serving import Serving
from ..model.registry import instance_layers
from ..model.schema import Instance
from .joint import solve
from .siloed import _evaluate, _layers_in_order, _snapshot

IDLE_LOAD = 1e-6
"""Load or GPU count (GPU-equivalents) below which a pool phase counts as idle."""


def flat_pricing_equilibrium(instance: Instance, time_limit: float | None = None) -> dict:
    """Compare the flat-pricing equilibrium with the congestion-priced system optimum.

    Returns
    -------
    dict
        Welfare and total queueing cost (USD per period) of both allocations,
        each solve bounded by ``time_limit`` seconds when given,
        their ratio (the price of anarchy of flat pricing), and per pool and
        phase the utilisation of each and the toll at the optimum (USD per token).
    """
    system = Economy(instance)
    optimum = solve(system, time_limit=time_limit)
    if not optimum.certified:
        raise SolveError(f"the system optimum is not certified: {optimum.message}")
    optimum_state = _snapshot(system)

    flat = Economy(instance, layers=[Router(), Agent(), Serving(mode="equilibrium"), Capital()]
                   + instance_layers(instance))
    equilibrium = solve(flat, check=False, time_limit=time_limit)
    if not equilibrium.certified:
        raise SolveError(f"the flat-pricing equilibrium is not certified: {equilibrium.message}")
    decisions = {name: np.array(flat.builder.variables[name].value)
                 for layer in _layers_in_order(flat) for name in layer.decisions
                 if name in flat.builder.variables}
    _evaluate(system, decisions, time_limit)
    equilibrium_state = _snapshot(system)

    optimum_cost = -optimum_state.welfare_parts.get("waiting", 0.0)
    equilibrium_cost = -equilibrium_state.welfare_parts.get("waiting", 0.0)
    prices = {price.row: price.price for price in optimum.prices}
    pools = []
    for p, name in enumerate(system.data.pools):
        curve = instance.pools[name].delay
        if curve is None:
            continue
        for phase in ("prefill", "decode"):
            load = optimum_state.variables[f"load_{phase}"][p]
            gpus = optimum_state.variables[f"gpus_{phase}"][p]
            flat_load = equilibrium_state.variables[f"load_{phase}"][p]
            if max(load, flat_load) <= IDLE_LOAD:
                continue  # a phase with no demand has no congestion to price
            own = curve.value_of_time * delay_per_token(curve, load, gpus)
            price = prices.get(f"{phase}[{name}]", 0.0)
            pools.append({
                "pool": name, "phase": phase,
                "utilization_optimum": _share(load, gpus),
                "utilization_equilibrium": _share(equilibrium_state.variables[f"load_{phase}"][p],
                                                  equilibrium_state.variables[f"gpus_{phase}"][p]),
                "load_optimum": float(load), "load_equilibrium": float(equilibrium_state.variables[f"load_{phase}"][p]),
                "congestion_price": price, "own_delay_cost": own, "toll": price - own,
                "unit": "USD per token",
            })
    return {
        "welfare_optimum": optimum_state.welfare,
        "welfare_equilibrium": equilibrium_state.welfare,
        "delay_cost_optimum": optimum_cost,
        "delay_cost_equilibrium": equilibrium_cost,
        "delay_cost_ratio": equilibrium_cost / optimum_cost if optimum_cost > 0 else None,
        "pools": pools,
        "units": {"welfare": "USD per period", "delay_cost": "USD per period"},
    }


def _share(load: float, gpus: float) -> float | None:
    return float(load / gpus) if gpus > IDLE_LOAD else None
