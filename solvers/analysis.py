"""Read an optimal allocation: tokens per request and equimarginal residuals.

The equimarginal table compares, for every option, the marginal benefit of
one more unit with its full marginal cost at the solved prices:

* ``token`` rows (task, model, use): one more token per routed request;
  benefit ``V * dp/dtau`` plus the risk it removes, cost the list price
  times ``1 + compute price`` plus every market price times the token's
  footprint (latency seconds, prefill/decode/KV load, resources).
* ``route`` rows (task, model): one more request routed to the option,
  holding its tokens per request fixed, against the routing price.
* ``defer`` rows: one more request deferred to a human.
* ``training`` rows: one more rollout, verifier or update token.

At an optimum every residual (benefit minus cost) is about zero for options
in use and at most zero for options not in use. The formulas are written
here independently of the formulation, so agreement is a check of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..model.data import FAMILIES, PER_MILLION
from ..model.economy import Economy
from ..model.layers.agent import MINUTE
from .result import Result

USED = 1e-6
"""Share of requests, or tokens per request over the use's token scale, below
which an option counts as not in use."""


@dataclass
class PriceVector:
    """Prices per market in the units the marginal costs need."""

    compute: float
    latency: np.ndarray          # USD per request-second, per task
    risk: float                  # USD per USD of expected loss
    oversight: float             # USD per review minute
    prefill: np.ndarray          # USD per token, per pool
    decode: np.ndarray
    kv: np.ndarray               # USD per resident KV token, per pool
    gpu: np.ndarray              # USD per GPU per period, per pool
    resource: dict[str, float]
    routing: np.ndarray          # USD per request, per task
    tenant_compute: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """USD per USD of the task's tenant compute budget (scope tenant), per task."""
    other: dict[str, np.ndarray] = field(default_factory=dict)
    """Prices of markets of kinds registered by extensions, per row, by market name."""

    def compute_multiplier(self, tasks: np.ndarray) -> np.ndarray:
        """Return what one USD of list price costs a task in welfare: 1 plus its compute prices."""
        return 1.0 + self.compute + self.tenant_compute[tasks]


BUILTIN_KINDS = frozenset({"compute", "latency", "risk", "oversight", "gpu", "resource",
                           "routing", "prefill", "decode", "kv"})
"""Market kinds whose prices the formulas of this module include."""


def equimarginal_applies(economy: Economy) -> bool:
    """Return whether the equimarginal formulas cover the economy.

    They are written for the four default layers, the built-in market kinds
    and the built-in curve families. Layers, kinds or families registered by
    extensions add marginal benefits and costs these formulas do not know.
    """
    default = {"Router", "Agent", "Serving", "Capital"}
    layers_known = {type(layer).__name__ for layer in economy.layers} <= default
    kinds_known = all(spec.kind in BUILTIN_KINDS for spec in economy.markets)
    families_known = set(economy.data.family) <= set(FAMILIES)
    return layers_known and kinds_known and families_known


def price_vector(economy: Economy, result: Result) -> PriceVector:
    """Collect solved or exogenous prices per market kind."""
    data = economy.data
    tasks, pools = len(data.tasks), len(data.pools)
    vector = PriceVector(0.0, np.zeros(tasks), 0.0, 0.0, np.zeros(pools), np.zeros(pools),
                         np.zeros(pools), np.zeros(pools), {}, np.zeros(tasks), np.zeros(tasks))
    by_row = {p.row: p for p in result.prices}
    for spec in economy.markets:
        values = np.array([by_row[label].price or 0.0 for label in spec.labels])
        if spec.kind not in BUILTIN_KINDS:
            vector.other[spec.name] = values
        elif spec.kind == "compute" and spec.scope == "tenant":
            tenant_price = np.zeros(len(data.tenants) + 1)  # the last entry is "no tenant"
            tenant_price[spec.rows] = values
            vector.tenant_compute += tenant_price[data.task_tenant]
        elif spec.kind == "latency" and spec.mode == "budget":
            vector.latency[spec.rows] = values / data.volume[spec.rows]
        elif spec.kind == "latency":
            vector.latency[spec.rows] = values
        elif spec.kind in ("prefill", "decode", "kv", "gpu", "routing"):
            getattr(vector, spec.kind)[spec.rows] = values
        elif spec.kind == "resource":
            vector.resource[spec.name] = float(values[0])
        else:
            setattr(vector, spec.kind, float(values[0]))
    return vector


def tokens_per_request(economy: Economy) -> np.ndarray:
    """Return tokens per routed request, shape (options, uses); NaN where unused."""
    data, agent = economy.data, economy.layer("agent")
    route = economy.builder.variables["route"].value
    tokens = economy.builder.variables["tokens"].value
    result = np.full((data.option_count, len(data.uses)), np.nan)
    k, a = agent.index.pair_option, agent.index.pair_use
    used = route[k] > USED
    result[k[used], a[used]] = tokens[used] * data.scale[k[used], a[used]] / route[k[used]]
    return result


def review_minutes_per_request(economy: Economy) -> np.ndarray:
    """Return review minutes per routed request, shape (options, reviews)."""
    data, agent = economy.data, economy.layer("agent")
    result = np.zeros((data.option_count, len(data.reviews)))
    if "review" not in economy.builder.variables:
        return result
    route = economy.builder.variables["route"].value
    review = economy.builder.variables["review"].value.reshape(-1, len(data.reviews))
    options = agent.index.risk_options
    share = np.maximum(route[options], USED)[:, None]
    result[options] = review * data.review_risk_scale[None, :] / share
    return result


def token_marginal_cost(economy: Economy, prices: PriceVector) -> np.ndarray:
    """Full marginal cost of one token of each use on each option (USD), without risk."""
    data = economy.data
    k_task, k_model = data.option_task, data.option_model
    share_in = data.input_share[None, :]
    list_price = share_in * data.price_input[k_model, None] + (1 - share_in) * data.price_output[k_model, None]
    seconds = share_in * data.seconds_per_input[k_model, None] + (1 - share_in) * data.seconds_per_output[k_model, None]
    cost = (prices.compute_multiplier(k_task)[:, None] * list_price
            + prices.latency[k_task, None] * seconds)
    pool = data.model_pool[k_model]
    served = pool >= 0
    if data.pools:
        p = np.where(served, pool, 0)
        resident = data.context[k_task] * data.seconds_per_output[k_model] / data.period
        serving = (prices.prefill[p, None] * share_in + prices.decode[p, None] * (1 - share_in)
                   + prices.kv[p, None] * (1 - share_in) * resident[:, None])
        cost = cost + np.where(served[:, None], serving, 0.0)
    for market, footprint in data.footprint.items():
        cost = cost + prices.resource.get(market, 0.0) * footprint[None, :]
    return cost


def context_marginal_cost(economy: Economy, prices: PriceVector) -> np.ndarray:
    """Full marginal cost of one routed request's prompt context, per option (USD)."""
    data = economy.data
    tasks, models = data.option_task, data.option_model
    cost = data.context[tasks] * (prices.compute_multiplier(tasks) * data.price_input[models]
                                  + prices.latency[tasks] * data.seconds_per_input[models])
    if data.pools:
        pool = data.model_pool[models]
        cost = cost + np.where(pool >= 0, data.context[tasks] * prices.prefill[np.maximum(pool, 0)], 0.0)
    return cost


def review_marginal_cost(economy: Economy, prices: PriceVector) -> np.ndarray:
    """Full marginal cost of one review minute of each review use per option (USD)."""
    data = economy.data
    cost = (data.review_wage[None, :] + prices.oversight
            + prices.latency[data.option_task, None] * MINUTE)
    for market, footprint in data.review_footprint.items():
        cost = cost + prices.resource.get(market, 0.0) * footprint[None, :]
    return cost


def equimarginal(economy: Economy, result: Result) -> list[dict]:
    """Return the equimarginal table (see the module docstring) as rows of dicts.

    Returns no rows for an uncertified result, and for an economy with
    extensions that the formulas do not cover (:func:`equimarginal_applies`).
    """
    if not result.certified or not equimarginal_applies(economy):
        return []
    prices = price_vector(economy, result)
    rows: list[dict] = []
    rows += _token_rows(economy, prices)
    rows += _route_rows(economy, prices)
    rows += _defer_rows(economy, prices)
    rows += _training_rows(economy, prices)
    return rows


# -- rows ---------------------------------------------------------------------


def _success_state(economy: Economy, tau: np.ndarray):
    """Return effort per request G and the marginal effort dG/dtau per option."""
    data = economy.data
    ratio = tau / data.scale
    safe = np.where(data.in_curve & (ratio > 0), ratio, 1.0)
    log_mean = np.sum(np.where(data.in_curve, data.weight * np.log(safe), 0.0), axis=1)
    effort = np.exp(log_mean)
    marginal = np.where(data.in_curve, data.weight * effort[:, None] / np.where(tau > 0, tau, np.inf), 0.0)
    leontief = data.family == "leontief"
    if leontief.any():
        effort[leontief] = np.min(np.where(data.in_curve, ratio, np.inf), axis=1)[leontief]
    return effort, marginal


def _risk_state(economy: Economy, tau: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    data = economy.data
    cuts = np.where(np.isfinite(data.risk_scale)[None, :], np.nan_to_num(tau) / data.risk_scale[None, :], 0.0)
    exponent = cuts.sum(axis=1)
    if len(data.reviews):
        exponent = exponent + (minutes / data.review_risk_scale[None, :]).sum(axis=1)
    return exponent


def _token_rows(economy: Economy, prices: PriceVector) -> list[dict]:
    data, agent = economy.data, economy.layer("agent")
    route = economy.builder.variables["route"].value
    tau = tokens_per_request(economy)
    minutes = review_minutes_per_request(economy)
    cost = token_marginal_cost(economy, prices)
    effort, marginal_effort = _success_state(economy, tau)
    exponent = _risk_state(economy, tau, minutes)
    tasks = data.option_task
    gain = data.value[tasks] * data.max_success * data.rate * np.exp(-data.rate * effort)
    exposure_value = prices.risk * data.loss[tasks] * data.wrong_action * np.exp(-exponent)
    exposed = np.isin(np.arange(data.option_count), agent.index.risk_options)

    rows = []
    for k, a in zip(agent.index.pair_option, agent.index.pair_use, strict=True):
        if route[k] <= USED or np.isfinite(data.fixed_tokens[k, a]):
            continue
        if data.family[k] == "leontief" and data.in_curve[k, a]:
            continue  # Leontief inputs are reported as one bundle below.
        benefit = gain[k] * marginal_effort[k, a] if data.in_curve[k, a] else 0.0
        if exposed[k] and np.isfinite(data.risk_scale[a]):
            benefit += exposure_value[k] / data.risk_scale[a]
        row = _row("token", data, k, data.uses[a], tau[k, a], benefit, cost[k, a])
        row["used"] = bool(tau[k, a] > USED * data.scale[k, a])
        row["share"] = float(route[k])
        rows.append(row)
    for k in np.flatnonzero((data.family == "leontief") & (route > USED)):
        bundle = np.flatnonzero(data.in_curve[k])
        benefit = gain[k] + sum(
            exposure_value[k] * data.scale[k, a] / data.risk_scale[a]
            for a in bundle if exposed[k] and np.isfinite(data.risk_scale[a]))
        rows.append(_row("token", data, k, "bundle", effort[k], benefit,
                         float(np.sum(cost[k, bundle] * data.scale[k, bundle]))))
    if len(data.reviews):
        review_cost = review_marginal_cost(economy, prices)
        for k in agent.index.risk_options:
            if route[k] <= USED:
                continue
            for h, name in enumerate(data.reviews):
                benefit = exposure_value[k] / data.review_risk_scale[h]
                row = _row("review", data, k, name, minutes[k, h], benefit, review_cost[k, h])
                row["share"] = float(route[k])
                rows.append(row)
    return rows


def _route_rows(economy: Economy, prices: PriceVector) -> list[dict]:
    """Marginal welfare of routing one more request to each option (dL/droute)."""
    data = economy.data
    route = economy.builder.variables["route"].value
    tau = tokens_per_request(economy)
    minutes = review_minutes_per_request(economy)
    cost = token_marginal_cost(economy, prices)
    effort, _ = _success_state(economy, tau)
    exponent = _risk_state(economy, tau, minutes)
    tasks = data.option_task
    exposed = np.isin(np.arange(data.option_count), economy.layer("agent").index.risk_options)
    loss_rate = np.where(exposed, data.loss[tasks] * data.wrong_action, 0.0)
    context_cost = context_marginal_cost(economy, prices)
    cache_credit = _cache_credit(economy)
    review_cost = review_marginal_cost(economy, prices) if len(data.reviews) else None

    rows = []
    for k in range(data.option_count):
        constant = data.family[k] == "constant"
        fixed = np.nan_to_num(data.fixed_tokens[k])
        if route[k] > USED:
            if constant:
                value = data.value[tasks[k]] * data.max_success[k] - float(np.sum(fixed * cost[k]))
            else:
                g = data.rate[k] * effort[k]
                value = data.value[tasks[k]] * data.max_success[k] * (1 - np.exp(-g) * (1 + g))
            u = exponent[k]
            value -= prices.risk * loss_rate[k] * np.exp(-u) * (1 + u)
            evaluated = "solution"
        else:
            value = _best_response_value(economy, prices, k, cost[k], loss_rate[k], review_cost)
            evaluated = "best_response"
        value += cache_credit[k] - context_cost[k]
        row = _row("route", data, k, None, route[k], value, prices.routing[tasks[k]])
        row["evaluated_at"] = evaluated
        rows.append(row)
    return rows


def _best_response_value(economy, prices, k, cost, loss_rate, review_cost=None) -> float:
    """Surplus per request of an unused option at its best tokens (a lower bound).

    Quality and risk are optimised separately, so a token that serves both is
    paid twice; the true best response can only do better.
    """
    data = economy.data
    task = data.option_task[k]
    inputs = data.in_curve[k]
    if data.family[k] == "constant":
        value = data.value[task] * data.max_success[k] - float(np.sum(np.nan_to_num(data.fixed_tokens[k]) * cost))
    else:
        if data.family[k] == "cobb_douglas" and inputs.sum() > 1:
            beta = data.weight[k, inputs]
            unit = float(np.prod((cost[inputs] * data.scale[k, inputs] / beta) ** beta))
        else:
            unit = float(np.sum(cost[inputs] * data.scale[k, inputs]))
        worth = data.value[task] * data.max_success[k]
        effort = max(0.0, np.log(max(worth * data.rate[k] / unit, 1e-300)) / data.rate[k])
        value = worth * (1 - np.exp(-data.rate[k] * effort)) - unit * effort
    if loss_rate > 0 and prices.risk > 0:
        per_cut = [cost[a] * data.risk_scale[a] for a in range(len(data.uses)) if np.isfinite(data.risk_scale[a])]
        if len(data.reviews):
            if review_cost is None:
                review_cost = review_marginal_cost(economy, prices)
            per_cut += list(review_cost[k] * data.review_risk_scale)
        exposure = prices.risk * loss_rate
        if per_cut:
            cheapest = min(per_cut)
            cut = max(0.0, np.log(exposure / cheapest))
            value -= cheapest * cut + exposure * np.exp(-cut)
        else:
            value -= exposure
    return value


def _cache_credit(economy: Economy) -> np.ndarray:
    """Value of the cache capacity a routed request brings (dual of the reuse bound)."""
    data = economy.data
    credit = np.zeros(data.option_count)
    capital = economy.layer("capital")
    index = getattr(capital, "cache_index", None)
    if index is None or "cached" not in economy.builder.variables:
        return credit
    cacheable = index[0]
    for constraint, name in zip(economy.builder.constraints, economy.builder.constraint_names, strict=True):
        if name == "cache.reuse" and constraint.dual_value is not None:
            dual = np.atleast_1d(constraint.dual_value)
            tasks = data.option_task[cacheable]
            credit[cacheable] = dual * data.reuse[tasks] * economy.welfare_scale / data.volume[tasks]
    return credit


def _defer_rows(economy: Economy, prices: PriceVector) -> list[dict]:
    data = economy.data
    defer = economy.builder.variables["defer"].value
    rows = []
    for x, task in enumerate(data.tasks):
        if not data.defer_enabled[x]:
            continue
        value = (data.value[x] * data.defer_success[x] - data.defer_cost[x]
                 - prices.latency[x] * data.defer_latency[x])
        benefit_minus_cost = value - prices.routing[x]
        rows.append({"kind": "defer", "task": task, "model": None, "use": None,
                     "amount": float(defer[x]), "marginal_benefit": float(value),
                     "marginal_cost": float(prices.routing[x]), "residual": float(benefit_minus_cost),
                     "used": bool(defer[x] > USED)})
    return rows


def _training_rows(economy: Economy, prices: PriceVector) -> list[dict]:
    training = economy.instance.capital.training
    if training is None:
        return []
    builder, data = economy.builder, economy.data
    inputs = list(training.weights)
    weights = np.array([training.weights[i] for i in inputs])
    weights = weights / weights.sum()
    amount = builder.variables["training"].value
    effort = float(np.exp(np.sum(weights * np.log(np.maximum(amount, 1e-300)))))
    capital = economy.layer("capital")
    staleness = getattr(capital, "staleness", 1.0) or 1.0
    gain = training.value * training.max_gain * staleness * training.rate * np.exp(-training.rate * effort)
    pool = data.pools.index(training.pool)
    rows = []
    for i, name in enumerate(inputs):
        scale = training.scales[name]
        benefit = gain * weights[i] * effort / max(amount[i], 1e-300) / scale
        cost = (training.price * PER_MILLION * (1 + prices.compute)
                + prices.gpu[pool] / (training.tokens_per_gpu_second * data.period))
        rows.append({"kind": "training", "task": None, "model": None, "use": name,
                     "amount": float(amount[i] * scale), "marginal_benefit": float(benefit),
                     "marginal_cost": float(cost), "residual": float(benefit - cost),
                     "used": bool(amount[i] > USED)})
    return rows


def _row(kind, data, k, use, amount, benefit, cost) -> dict:
    task, model = data.option_label(int(k))
    return {"kind": kind, "task": task, "model": model, "use": use,
            "amount": float(np.nan_to_num(amount)), "marginal_benefit": float(benefit),
            "marginal_cost": float(cost), "residual": float(benefit - cost),
            "used": bool(np.nan_to_num(amount) > USED)}
