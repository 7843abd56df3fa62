"""Failure modes: where a siloed allocation breaks the equimarginal rule at true prices.

Each detector reads the realised (siloed) allocation against the global
equilibrium prices and the global allocation, and reports the numbers that
triggered it. A failure mode is the symptom of one price a layer could not
see:

==================== =========================================================
name                 test on the realised allocation (at equilibrium prices)
==================== =========================================================
over-routing         a cheaper model would earn more surplus per request
                     than the model the router chose
under-routing        a stronger model would earn more surplus per request
over-delegation      one more review minute is worth more than it costs, yet
                     fewer minutes are bought than at the optimum
under-verification   one more verification token is worth more than it costs,
                     yet fewer are bought than at the optimum
serving congestion   a pool runs at a utilisation or queueing delay well above
                     the optimum's
stale rollouts       capability lost to depreciation over the rollout lag
                     exceeds the marginal gain of the rollout tokens bought
cache misuse         a task is served from a shared prefix cache although the
                     quality it loses is worth more than the prefill it saves
==================== =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.delay import delay_per_token
from ..model.economy import Economy
from ..model.errors import ExtensionError, FieldProblem
from ..model.registry import BUILTIN_FAILURE_MODES, REGISTRY
from .analysis import (
    _best_response_value,
    _training_rows,
    context_marginal_cost,
    price_vector,
    review_marginal_cost,
    review_minutes_per_request,
    token_marginal_cost,
    tokens_per_request,
)
from .siloed import load_state

FAILURE_MODES = BUILTIN_FAILURE_MODES
"""The built-in failure modes, in the order the detectors report them."""


@dataclass(frozen=True)
class Thresholds:
    """How far the realised allocation must stray before a failure mode is reported.

    Attributes
    ----------
    surplus:
        Routing: the better option's surplus per request must exceed the
        chosen one's by this share of the chosen surplus (and by 0.01 USD).
    marginal:
        Verification and review: benefit minus cost of one more unit, as a
        share of its cost.
    shortfall:
        Verification and review: the realised amount must fall short of the
        optimum's by this share.
    utilization:
        Serving: utilisation above the optimum's by this many points (0.1 =
        10 points), or queueing delay above it by this factor minus one.
    """

    surplus: float = 0.02
    marginal: float = 0.05
    shortfall: float = 0.1
    utilization: float = 0.1


def detect(economy: Economy, comparison, thresholds: Thresholds | None = None) -> list[dict]:
    """Return the failure modes of the siloed allocation, one dict per task or pool.

    The built-in detectors run first, then those registered by extensions
    (:func:`failure_modes` lists both).
    """
    thresholds = thresholds or Thresholds()
    found: list[dict] = []
    state = comparison.siloed_state
    load_state(economy, state)
    prices = price_vector(economy, comparison.global_result)
    found += _routing(economy, prices, thresholds)
    found += _verification(economy, comparison, prices, thresholds)
    found += _congestion(economy, comparison, thresholds)
    found += _capital(economy, comparison, prices, thresholds)
    for detector in REGISTRY.detectors().values():
        load_state(economy, state)
        found += _run_detector(detector, economy, comparison, prices, thresholds)
    load_state(economy, comparison.global_state)
    return found


def failure_modes() -> tuple[str, ...]:
    """Return the built-in failure modes followed by the registered detectors' names."""
    return FAILURE_MODES + tuple(REGISTRY.detectors())


def _run_detector(detector, economy: Economy, comparison, prices, thresholds) -> list[dict]:
    """Call a registered detector with the siloed allocation loaded, and check what it returns."""
    try:
        found = list(detector.function(economy, comparison, prices, thresholds) or [])
    except ExtensionError:
        raise
    except Exception as error:
        raise ExtensionError(detector.source, [FieldProblem(
            f"(detector {detector.name})", type(error).__name__, f"failed: {error}",
            "fix the detector (TOKENOMY_DEBUG=1 shows the traceback)")]) from error
    if not all(isinstance(item, dict) and "mode" in item for item in found):
        raise ExtensionError(detector.source, [FieldProblem(
            f"(detector {detector.name})", repr(found)[:80],
            "returned something other than a list of dicts with a 'mode' key",
            "return [{'mode': name, ...}, ...], or [] when nothing is found")])
    return found


def _routing(economy: Economy, prices, thresholds: Thresholds) -> list[dict]:
    data = economy.data
    route = economy.builder.variables["route"].value
    cost = token_marginal_cost(economy, prices)
    exposed = np.isin(np.arange(data.option_count), economy.layer("agent").index.risk_options)
    loss_rate = np.where(exposed, data.loss[data.option_task] * data.wrong_action, 0.0)
    context = context_marginal_cost(economy, prices)
    reviews = review_marginal_cost(economy, prices) if len(data.reviews) else None
    surplus = np.array([
        _best_response_value(economy, prices, k, cost[k], loss_rate[k], reviews) - context[k]
        for k in range(data.option_count)])
    unit_price = data.price_input + data.price_output

    found = []
    for x, task in enumerate(data.tasks):
        options = np.flatnonzero(data.option_task == x)
        if not len(options) or route[options].max() < 0.5:
            continue
        chosen = options[np.argmax(route[options])]
        margin = thresholds.surplus * abs(surplus[chosen]) + 0.01
        for k in options:
            gain = surplus[k] - surplus[chosen]
            if k == chosen or gain <= margin:
                continue
            cheaper = unit_price[data.option_model[k]] < unit_price[data.option_model[chosen]]
            stronger = data.max_success[k] > data.max_success[chosen]
            if cheaper:
                name = "over-routing"
            elif stronger:
                name = "under-routing"
            else:
                continue
            found.append({
                "mode": name, "task": task, "chosen": data.models[data.option_model[chosen]],
                "better": data.models[data.option_model[k]],
                "surplus_chosen": float(surplus[chosen]), "surplus_better": float(surplus[k]),
                "gain_per_request": float(gain), "unit": "USD per request",
            })
    return found


def _verification(economy: Economy, comparison, prices, thresholds: Thresholds) -> list[dict]:
    data = economy.data
    agent = economy.layer("agent")
    route = economy.builder.variables["route"].value
    siloed_tokens = tokens_per_request(economy)
    siloed_minutes = review_minutes_per_request(economy)
    load_state(economy, comparison.global_state)
    global_tokens = tokens_per_request(economy)
    global_minutes = review_minutes_per_request(economy)
    load_state(economy, comparison.siloed_state)

    cost = token_marginal_cost(economy, prices)
    review_cost = review_marginal_cost(economy, prices)
    exponent = np.zeros(data.option_count)
    for a in np.flatnonzero(np.isfinite(data.risk_scale)):
        exponent += np.nan_to_num(siloed_tokens[:, a]) / data.risk_scale[a]
    for h in range(len(data.reviews)):
        exponent += siloed_minutes[:, h] / data.review_risk_scale[h]
    exposure = prices.risk * data.loss[data.option_task] * data.wrong_action * np.exp(-exponent)

    found = []
    for k in agent.index.risk_options:
        if route[k] <= 0.01:
            continue
        task, model = data.option_label(int(k))
        for a in np.flatnonzero(np.isfinite(data.risk_scale)):
            realised, optimum = np.nan_to_num(siloed_tokens[k, a]), np.nan_to_num(global_tokens[k, a])
            benefit = exposure[k] / data.risk_scale[a]
            if data.in_curve[k, a]:
                continue  # a use that also raises quality is judged by the token rows
            if (benefit - cost[k, a] > thresholds.marginal * cost[k, a]
                    and realised < (1 - thresholds.shortfall) * optimum):
                found.append({"mode": "under-verification", "task": task, "model": model,
                              "use": data.uses[a], "tokens_per_request": float(realised),
                              "optimal_tokens_per_request": float(optimum),
                              "marginal_benefit": float(benefit), "marginal_cost": float(cost[k, a]),
                              "unit": "USD per token"})
        for h, use in enumerate(data.reviews):
            benefit = exposure[k] / data.review_risk_scale[h]
            realised, optimum = siloed_minutes[k, h], global_minutes[k, h]
            if (benefit - review_cost[k, h] > thresholds.marginal * review_cost[k, h]
                    and realised < (1 - thresholds.shortfall) * optimum):
                found.append({"mode": "over-delegation", "task": task, "model": model, "use": use,
                              "review_minutes_per_request": float(realised),
                              "optimal_review_minutes_per_request": float(optimum),
                              "marginal_benefit": float(benefit),
                              "marginal_cost": float(review_cost[k, h]), "unit": "USD per minute"})
    return found


def _congestion(economy: Economy, comparison, thresholds: Thresholds) -> list[dict]:
    found = []
    for p, pool in enumerate(economy.data.pools):
        delay = economy.instance.pools[pool].delay
        for phase in ("prefill", "decode"):
            realised = comparison.siloed_state.utilization(phase, p)
            optimum = comparison.global_state.utilization(phase, p)
            if realised is None or optimum is None:
                continue
            wait_realised = delay_per_token(delay, realised, 1.0) if delay else None
            wait_optimum = delay_per_token(delay, optimum, 1.0) if delay else None
            busier = realised > optimum + thresholds.utilization
            slower = (wait_realised is not None and wait_optimum is not None and 0 < wait_optimum < np.inf
                      and wait_realised > (1 + thresholds.utilization) * wait_optimum
                      and realised > optimum)
            if busier or slower:
                found.append({"mode": "serving congestion", "pool": pool, "phase": phase,
                              "utilization": realised, "optimal_utilization": optimum,
                              "waiting_per_token": wait_realised,
                              "optimal_waiting_per_token": wait_optimum, "unit": "seconds per token"})
    return found


def _capital(economy: Economy, comparison, prices, thresholds: Thresholds) -> list[dict]:
    return _stale_rollouts(economy, comparison, prices, thresholds) + _cache_misuse(
        economy, comparison, prices, thresholds)


def _stale_rollouts(economy: Economy, comparison, prices, thresholds: Thresholds) -> list[dict]:
    training = economy.instance.capital.training
    if training is None or "training" not in comparison.siloed_state.variables:
        return []
    inputs = list(training.weights)
    if "rollout" not in inputs:
        return []
    i = inputs.index("rollout")
    realised = float(comparison.siloed_state.variables["training"][i] * training.scales["rollout"])
    optimum = float(comparison.global_state.variables["training"][i] * training.scales["rollout"])
    row = next(row for row in _training_rows(economy, prices) if row["use"] == "rollout")
    lost = 1.0 - (1.0 - training.depreciation) ** training.rollout_lag
    if (row["marginal_benefit"] < (1 - thresholds.marginal) * row["marginal_cost"]
            and realised > (1 + thresholds.shortfall) * optimum and lost > 0):
        return [{"mode": "stale rollouts", "rollout_tokens": realised, "optimal_rollout_tokens": optimum,
                 "capability_lost_over_lag": lost, "marginal_benefit": row["marginal_benefit"],
                 "marginal_cost": row["marginal_cost"], "unit": "USD per token"}]
    return []


def _cache_misuse(economy: Economy, comparison, prices, thresholds: Thresholds) -> list[dict]:
    capital = economy.layer("capital")
    index = getattr(capital, "cache_index", None)
    if index is None or "cached" not in comparison.siloed_state.variables:
        return []
    data = economy.data
    cacheable = index[0]
    realised = comparison.siloed_state.variables["cached"]
    optimum = comparison.global_state.variables["cached"]
    found = []
    for j, k in enumerate(cacheable):
        x, m = data.option_task[k], data.option_model[k]
        if data.cache_quality_loss[x] <= 0 or realised[j] <= optimum[j] + 1e-3 * data.reuse[x]:
            continue
        loss = data.value[x] * data.cache_quality_loss[x] / data.reuse[x]
        pool = data.model_pool[m]
        saving = data.context[x] * ((data.price_input[m] - data.price_cached[m])
                                    * prices.compute_multiplier(x) + prices.prefill[pool])
        if loss > (1 + thresholds.marginal) * saving:
            task, model = data.option_label(int(k))
            found.append({"mode": "cache misuse", "task": task, "model": model,
                          "cached_share": float(realised[j]), "optimal_cached_share": float(optimum[j]),
                          "quality_loss_per_unit": float(loss), "prefill_saving_per_unit": float(saving),
                          "unit": "USD per request share served from the cache"})
    return found


def failure_location(row: dict) -> str:
    """Return where a detected failure mode sits: its task, pool or training, and the models."""
    where = row.get("task") or row.get("pool") or "training"
    if row.get("phase"):
        where += f" ({row['phase']})"
    if row.get("chosen"):
        where += f": {row['chosen']} chosen, {row.get('better')} better"
    elif row.get("model"):
        where += f" on {row['model']}"
    return where
