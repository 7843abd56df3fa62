"""The siloed-versus-global report: gaps, differences, failure modes, attribution."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping

import numpy as np

from ..model.economy import Economy
from ..model.views import LAYER_ORDER, default_views
from .analysis import USED, review_minutes_per_request, tokens_per_request
from .congestion import flat_pricing_equilibrium
from .evaluation import evaluation_table
from .extensions import layer_table
from .failures import Thresholds, detect
from .report import _clean
from .siloed import Comparison, _layers_in_order, compare, is_physical_kind, load_state

logger = logging.getLogger(__name__)

MAX_ATTRIBUTION_PRICES = 7
"""Most hidden prices for an exact Shapley attribution (2**7 siloed runs)."""


def compare_report(economy: Economy, comparison: Comparison, failures: list[dict],
                   attribution: dict | None = None) -> dict:
    """Return the comparison as JSON-ready data."""
    global_state, siloed_state = comparison.global_state, comparison.siloed_state
    prices = {price.row: price.price for price in comparison.global_result.prices}
    layers = sorted(set(global_state.welfare_by_layer) | set(siloed_state.welfare_by_layer))
    report = {
        "instance": economy.instance.name,
        "views": {layer.name: sorted(comparison.views.get(layer.name, ()))
                  for layer in _layers_in_order(economy)},
        "policies": comparison.policy_names,
        "global_welfare": global_state.welfare,
        "siloed_welfare": siloed_state.welfare,
        "gap": comparison.gap,
        "gap_percent": 100.0 * comparison.gap_share,
        "siloed_priced_welfare": comparison.priced_welfare(siloed_state),
        "priced_gap": comparison.priced_gap,
        "units": {"welfare": "USD per period", "gap_by_market.value": "USD per period at equilibrium prices"},
        "gap_by_layer": {layer: global_state.welfare_by_layer.get(layer, 0.0)
                         - siloed_state.welfare_by_layer.get(layer, 0.0) for layer in layers},
        "gap_by_part": {part: global_state.welfare_parts.get(part, 0.0) - siloed_state.welfare_parts.get(part, 0.0)
                        for part in sorted(set(global_state.welfare_parts) | set(siloed_state.welfare_parts))},
        "gap_by_market": _gap_by_market(economy, comparison, prices),
        "overruns": comparison.overruns,
        "differences": _differences(economy, comparison),
        "failure_modes": failures,
        "attribution": attribution,
        "evaluation": evaluation_table(economy, siloed_state.variables, global_state.variables,
                                       comparison.prices, "siloed run"),
    }
    return _clean(report)


def _gap_by_market(economy: Economy, comparison: Comparison, prices: Mapping[str, float]) -> list[dict]:
    """Value at equilibrium prices of each market's extra usage in the siloed run."""
    rows = []
    for spec in economy.markets:
        if spec.mode in ("price", "equality") or spec.name not in comparison.siloed_state.usage:
            continue
        for i, label in enumerate(spec.labels):
            before = float(comparison.global_state.usage[spec.name][i])
            after = float(comparison.siloed_state.usage[spec.name][i])
            price = prices.get(label) or 0.0
            if abs(after - before) <= 1e-9 * max(spec.scale[i], 1.0):
                continue
            rows.append({"market": label, "price": price, "unit": spec.price_unit,
                         "usage_global": before, "usage_siloed": after,
                         "value": price * (after - before)})
    return sorted(rows, key=lambda row: -abs(row["value"]))


def _differences(economy: Economy, comparison: Comparison) -> dict:
    data = economy.data
    global_vars, siloed_vars = comparison.global_state.variables, comparison.siloed_state.variables
    routing = [{"task": task, "model": model, "global": float(global_vars["route"][k]),
                "siloed": float(siloed_vars["route"][k])}
               for k in range(data.option_count) for task, model in [data.option_label(k)]
               if abs(global_vars["route"][k] - siloed_vars["route"][k]) > 1e-3]
    routing += [{"task": task, "model": "defer", "global": float(global_vars["defer"][x]),
                 "siloed": float(siloed_vars["defer"][x])}
                for x, task in enumerate(data.tasks)
                if abs(global_vars["defer"][x] - siloed_vars["defer"][x]) > 1e-3]

    tokens = []
    states = {}
    for label, state in (("global", comparison.global_state), ("siloed", comparison.siloed_state)):
        load_state(economy, state)
        states[label] = (tokens_per_request(economy), review_minutes_per_request(economy))
    load_state(economy, comparison.global_state)
    for k in range(data.option_count):
        if max(global_vars["route"][k], siloed_vars["route"][k]) <= USED:
            continue
        task, model = data.option_label(k)
        for a, use in enumerate(data.uses):
            before, after = states["global"][0][k, a], states["siloed"][0][k, a]
            if np.isfinite(before) or np.isfinite(after):
                tokens.append({"task": task, "model": model, "use": use, "unit": "tokens",
                               "global": _finite(before), "siloed": _finite(after)})
        for h, use in enumerate(data.reviews):
            before, after = states["global"][1][k, h], states["siloed"][1][k, h]
            if before > 0 or after > 0:
                tokens.append({"task": task, "model": model, "use": use, "unit": "minutes",
                               "global": float(before), "siloed": float(after)})

    pools = []
    for p, pool in enumerate(data.pools):
        for phase in ("prefill", "decode"):
            pools.append({"pool": pool, "phase": phase,
                          "utilization_global": comparison.global_state.utilization(phase, p),
                          "utilization_siloed": comparison.siloed_state.utilization(phase, p),
                          "gpus_global": float(global_vars[f"gpus_{phase}"][p]),
                          "gpus_siloed": float(siloed_vars[f"gpus_{phase}"][p])})
    capital = {}
    for name in ("cache_size", "cached", "training"):
        if name in global_vars:
            capital[name] = {"global": global_vars[name].tolist(), "siloed": siloed_vars[name].tolist()}
    return {"routing": routing, "tokens": tokens, "pools": pools, "capital": capital,
            "layers": _extension_differences(economy, comparison)}


def _extension_differences(economy: Economy, comparison: Comparison) -> dict:
    """Return each extension layer's table (see ``layer_table``) in the global and siloed allocations."""
    tables: dict = {}
    for layer in economy.layers:
        if layer.name in LAYER_ORDER:
            continue
        tables[layer.name] = {}
        for label, state in (("global", comparison.global_state), ("siloed", comparison.siloed_state)):
            load_state(economy, state)
            tables[layer.name][label] = layer_table(economy, layer)
    load_state(economy, comparison.global_state)
    return tables


def attribute(economy: Economy, comparison: Comparison,
              max_prices: int = MAX_ATTRIBUTION_PRICES) -> dict:
    """Attribute the priced gap to each hidden price by exact Shapley shares.

    A coalition of prices is revealed to every layer on top of its view, and
    the siloed run is repeated. A price's share is its average marginal
    contribution to siloed priced welfare (welfare with budget overruns
    charged at equilibrium prices) over all orders of revealing. The shares
    add up to what the full reveal recovers, which is the priced gap.
    """
    hidden = _relevant_hidden(economy, comparison.views)
    if len(hidden) > max_prices:
        raise ValueError(f"{len(hidden)} hidden prices ({', '.join(hidden)}) need "
                         f"{2 ** len(hidden)} siloed runs; the limit is {max_prices} prices")
    welfare: dict[frozenset[str], float] = {}
    for size in range(len(hidden) + 1):
        for coalition in itertools.combinations(hidden, size):
            revealed = frozenset(coalition)
            views = {layer: frozenset(view) | revealed for layer, view in comparison.views.items()}
            run = compare(economy, views, comparison.global_result, comparison.policies,
                          comparison.time_limit)
            welfare[revealed] = run.priced_welfare(run.siloed_state)
            logger.info("revealing %s: siloed welfare %.6g", sorted(revealed) or "nothing", welfare[revealed])

    count = len(hidden)
    shares = {}
    for price in hidden:
        others = [item for item in hidden if item != price]
        total = 0.0
        for size in range(count):
            weight = math.factorial(size) * math.factorial(count - size - 1) / math.factorial(count)
            for coalition in itertools.combinations(others, size):
                base = frozenset(coalition)
                total += weight * (welfare[base | {price}] - welfare[base])
        shares[price] = total
    nothing = welfare[frozenset()]
    single = {price: welfare[frozenset({price})] - nothing for price in hidden}
    best = max(single, key=single.get) if single else None
    return {
        "prices": list(hidden),
        "shapley": shares,
        "single_reveal": single,
        "best_single_price": best,
        "recovered_by_full_reveal": welfare[frozenset(hidden)] - nothing,
        "unit": "USD per period",
    }


def _relevant_hidden(economy: Economy, views: Mapping[str, frozenset[str]]) -> list[str]:
    """Prices some layer cannot see and that can change a siloed decision."""
    relevant = {"value"}
    kinds = {spec.kind for spec in economy.markets if spec.mode != "equality"}
    relevant |= {kind for kind in kinds if not is_physical_kind(kind)}
    if any(pool.delay is not None for pool in economy.instance.pools.values()):
        relevant.add("latency")
    training = economy.instance.capital.training
    if training is not None and training.depreciation > 0 and training.rollout_lag > 0:
        relevant.add("capability")
    defaults = default_views()
    seen_by_all = set.intersection(*(set(views.get(layer.name, defaults.get(layer.name, ())))
                                     for layer in economy.layers))
    return sorted(relevant - seen_by_all)


def run_comparison(economy: Economy, views=None, thresholds: Thresholds | None = None,
                   with_attribution: bool = False, policies=None,
                   time_limit: float | None = None) -> dict:
    """Compare, detect failure modes, optionally attribute, and return the report.

    When a pool has a delay curve, the report also contains the flat-pricing
    equilibrium of the serving market next to the system optimum.
    """
    comparison = compare(economy, views, policies=policies, time_limit=time_limit)
    failures = detect(economy, comparison, thresholds)
    attribution = attribute(economy, comparison) if with_attribution else None
    report = compare_report(economy, comparison, failures, attribution)
    if any(pool.delay is not None for pool in economy.instance.pools.values()):
        report["serving_equilibrium"] = _clean(flat_pricing_equilibrium(economy.instance, time_limit))
    return report


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None
