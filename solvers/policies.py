"""Layer policies that practitioners use, selectable in a siloed run.

By default a siloed layer maximises welfare as seen through its price view.
A policy replaces that with a common rule of thumb. Each policy returns extra
constraints for the layer's step, and optionally its own objective. The step
still optimises every variable, so the later layers' anticipated responses
stay consistent, but only the layer's decisions are committed.

=================================  ========  =============================================
policy                             layer     rule
=================================  ========  =============================================
``frontier-default``               router    every task to its model of highest max_success
``cost-min:FLOOR``                 router    every task to its cheapest model whose
                                             max_success is at least FLOOR (defer if none)
``token-min:TARGET``               agent     fewest list-price dollars reaching TARGET of
                                             each option's max_success
``throughput-max``                 serving   GPUs split in proportion to prefill and decode
                                             load (equal utilisation), delay ignored; the
                                             prefill a later cache saves is not foreseen
``hit-rate-max``                   capital   largest cache, every reusable prefix cached
``rollout-max``                    capital   every GPU left over spent on training, whatever
                                             the capability is worth
=================================  ========  =============================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from ..model.economy import Economy

LAYER_OF = {"frontier-default": "router", "cost-min": "router", "token-min": "agent",
            "throughput-max": "serving", "hit-rate-max": "capital", "rollout-max": "capital"}
"""Layer each policy applies to."""


@dataclass
class Step:
    """Changes a policy makes to its layer's step: extra constraints and, optionally, the objective."""

    constraints: list[cp.Constraint]
    objective: cp.Expression | None = None


Policy = Callable[[Economy], Step]


def parse_policy(text: str) -> tuple[str, Policy]:
    """Parse ``NAME`` or ``NAME:NUMBER`` into (layer, policy).

    Raises
    ------
    ValueError
        For an unknown policy or a missing or invalid parameter.
    """
    name, _, argument = text.partition(":")
    name = name.strip()
    if name not in LAYER_OF:
        raise ValueError(f"unknown policy {name!r}; use one of {', '.join(sorted(LAYER_OF))}")
    if name in ("cost-min", "token-min"):
        try:
            value = float(argument)
        except ValueError:
            raise ValueError(f"policy {name} needs a share, e.g. {name}:0.8") from None
        if not 0 < value <= 1:
            raise ValueError(f"policy {name}: {value} is not a share in (0, 1]")
        policy = _cost_min(value) if name == "cost-min" else _token_min(value)
    else:
        policy = {"frontier-default": _frontier_default, "throughput-max": _throughput_max,
                  "hit-rate-max": _hit_rate_max, "rollout-max": _rollout_max}[name]
    policy.label = text.strip()
    return LAYER_OF[name], policy


def _route_to(economy: Economy, choice: np.ndarray) -> Step:
    """Constrain routing to ``choice[x]`` (an option index, or -1 to defer)."""
    data, variables = economy.data, economy.builder.variables
    target = np.zeros(data.option_count)
    target[choice[choice >= 0]] = 1.0
    defer = (choice < 0).astype(float)
    return Step([variables["route"] == target, variables["defer"] == defer])


def _frontier_default(economy: Economy) -> Step:
    data = economy.data
    choice = np.full(len(data.tasks), -1)
    for x in range(len(data.tasks)):
        options = np.flatnonzero(data.option_task == x)
        if len(options):
            choice[x] = options[np.argmax(data.max_success[options])]
    return _route_to(economy, choice)


def _cost_min(floor: float) -> Policy:
    def policy(economy: Economy) -> Step:
        data = economy.data
        models = data.option_model
        # List price of a request at the curve's token scales, plus its context.
        share_in = data.input_share[None, :]
        per_token = share_in * data.price_input[models, None] + (1 - share_in) * data.price_output[models, None]
        tokens = np.where(data.in_curve | np.isfinite(data.fixed_tokens), data.scale, 0.0)
        cost = (per_token * tokens).sum(axis=1) + data.context[data.option_task] * data.price_input[models]
        choice = np.full(len(data.tasks), -1)
        for x in range(len(data.tasks)):
            options = np.flatnonzero(data.option_task == x)
            good = options[data.max_success[options] >= floor]
            if len(good):
                choice[x] = good[np.argmin(cost[good])]
            elif not data.defer_enabled[x] and len(options):
                choice[x] = options[np.argmax(data.max_success[options])]
        return _route_to(economy, choice)
    return policy


def _token_min(target: float) -> Policy:
    def policy(economy: Economy) -> Step:
        builder = economy.builder
        if "shortfall" not in builder.variables:
            return Step([])
        agent = economy.layer("agent")
        options = agent.index.variable_options
        route = builder.variables["route"][options]
        # Success q * (route - shortfall) >= target * q * route.
        constraints = [builder.variables["shortfall"] <= (1 - target) * route]
        spend = -builder.linear("welfare.compute", economy.welfare_scale)
        return Step(constraints, objective=-spend)
    return policy


def _throughput_max(economy: Economy) -> Step:
    builder, data = economy.builder, economy.data
    if not data.pools:
        return Step([])
    demand = {}
    for phase in ("prefill", "decode"):
        quantity = builder.quantities.get(f"usage.{phase}")
        layers = {part.layer for part in quantity.contributions} & {"router", "agent"} if quantity else set()
        value = builder.linear(f"usage.{phase}", layers=layers).value if layers else None
        throughput = np.array([getattr(economy.instance.pools[p], f"{phase}_tokens_per_gpu_second")
                               for p in data.pools]) * data.period
        demand[phase] = (np.zeros(len(data.pools)) if value is None else np.maximum(value, 0.0)) / throughput
    total = demand["prefill"] + demand["decode"]
    share = np.divide(demand["prefill"], total, out=np.full(len(data.pools), 0.5), where=total > 0)
    gpus = np.array([economy.instance.pools[p].gpus or 0.0 for p in data.pools])
    return Step([builder.variables["gpus_prefill"] == share * gpus,
                 builder.variables["gpus_decode"] == (1 - share) * gpus])


def _hit_rate_max(economy: Economy) -> Step:
    builder = economy.builder
    if "cache_size" not in builder.variables:
        return Step([])
    limits = np.array([cache.max_size / cache.size_scale
                       for cache in economy.instance.capital.cache.values()])
    objective = cp.sum(builder.variables["cached"])
    return Step([builder.variables["cache_size"] == limits], objective=objective)


def _rollout_max(economy: Economy) -> Step:
    builder = economy.builder
    training = economy.instance.capital.training
    if training is None:
        return Step([])
    # The maximum training effort the leftover GPUs allow, at the curve's best input mix.
    return Step([], objective=cp.sum(builder.variables["training_effort"]))
