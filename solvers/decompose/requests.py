"""Vectorized best response of the request block (router and agent) to prices.

Given the Lagrangian coefficients of the request variables, each request picks
the option (model, or deferral to a human) with the largest surplus per
request, and each option's tokens solve a small concave problem per routed
request. Because every curve is homogeneous of degree one, the surplus of a
routed share ``y`` is ``y`` times the surplus of one routed request, so the
routing choice is linear once each option's surplus is known.

Per routed request, with costs ``c_a`` per scaled token of use ``a`` (list
price plus the prices of every market the token uses), value at stake ``A``
and effort ``g``:

* Cobb-Douglas curves: the cheapest token mix reaching effort ``g`` costs
  ``g * C`` with ``C = prod_a (c_a / beta_a) ** beta_a`` and uses
  ``t_a = g * beta_a * C / c_a`` tokens, so the effort maximising
  ``-A exp(-rate g) - C g`` is ``g = max(0, log(rate A / C) / rate)``;
* saturating and Leontief curves: the same with ``C = sum_a c_a`` and ``t_a = g``;
* risk: the wrong-action probability ``exp(-u)`` falls with an exponent ``u``
  bought by verification tokens and review minutes. An exponent bought at a
  constant marginal cost ``m`` gives ``u = max(0, log(B / m))`` at risk price
  ``B``. When the verification use is also an input of the curve, the two
  uses interact and the option's tokens solve a one-dimensional concave
  problem in the verification tokens (golden-section search) around an
  inner one-dimensional problem in the effort (bisection).

Options of the ``constant`` family spend fixed tokens per request.

Requests, not only task classes, can be blocks. A :class:`RequestSet` gives
each request its class and its weight in the class (its share of the class's
volume). It also gives the request's value relative to the class value, and a
difficulty that divides the curve's rate. Every linear coefficient of a request is its class's
coefficient times its weight, and the coefficients that carry the task value
are rescaled by its relative value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...model.economy import Economy
from ...model.errors import TokenomyError
from .lagrangian import Lagrangian

logger = logging.getLogger(__name__)

REQUEST_VARIABLES = ("route", "defer", "tokens", "effort", "shortfall", "exposure", "review", "cached")
"""Variables of the default router, agent and cache-use decisions, priced as one block."""

FREE_EFFORT = 40.0
"""Effort times rate chosen when tokens are free: the missing success is exp(-40)."""

BISECTION_STEPS = 80
NEWTON_STEPS = 12
"""Safeguarded Newton steps on the verification benefit.

Measured on the shipped instances, the steps converge to machine precision in
at most eight. The option's value is flat in the benefit at the root
(envelope theorem), so its error is of the order of the benefit's error squared."""
GOLDEN_STEPS = 90
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0

CONSTANT, MINIMUM, COBB_DOUGLAS = 0, 1, 2


class UnsupportedStructure(TokenomyError):
    """Raised when the request block has a shape the vectorized best response does not cover."""


@dataclass
class RequestStructure:
    """Index arrays of the class-level request variables, per option and use.

    ``-1`` marks an entry the option does not have. Arrays ``[k]`` run over
    options, ``[k, a]`` over options and token uses, ``[k, h]`` over options
    and review uses, ``[x]`` over task classes.
    """

    option_task: np.ndarray
    family: np.ndarray
    rate: np.ndarray
    weight: np.ndarray
    in_curve: np.ndarray
    fixed_ratio: np.ndarray
    risk_weight: np.ndarray
    token_index: np.ndarray
    effort_index: np.ndarray
    risk_index: np.ndarray
    review_index: np.ndarray
    cache_index: np.ndarray
    reuse: np.ndarray
    defer_enabled: np.ndarray
    # Scaled welfare per unit of each variable that is proportional to the task value.
    route_value: np.ndarray
    defer_value: np.ndarray
    cached_value: np.ndarray
    sizes: dict[str, int]

    @property
    def option_count(self) -> int:
        return len(self.option_task)

    @property
    def task_count(self) -> int:
        return len(self.defer_enabled)


def request_structure(economy: Economy) -> RequestStructure:
    """Read the request block's structure from an economy built with the default layers."""
    builder, data = economy.builder, economy.data
    agent = economy.layer("agent")
    if agent is None or economy.layer("router") is None or not hasattr(agent, "index"):
        raise UnsupportedStructure("the vectorized request block needs the default router and agent layers")
    unknown = [name for name in builder.variables
               if not _is_request_variable(name) and not _is_known_other(name)]
    if unknown:
        raise UnsupportedStructure(f"variables {unknown[:5]} belong to no known block")

    index = agent.index
    count, width = data.option_count, len(data.uses)
    reviews = len(data.reviews)
    sizes = {name: builder.variables[name].size for name in REQUEST_VARIABLES if name in builder.variables}

    token_index = np.full((count, width), -1)
    token_index[index.pair_option, index.pair_use] = np.arange(len(index.pair_option))
    effort_index = np.full(count, -1)
    effort_index[index.variable_options] = np.arange(len(index.variable_options))
    risk_index = np.full(count, -1)
    risk_index[index.risk_options] = np.arange(len(index.risk_options))
    review_index = np.full((count, reviews), -1)
    if reviews and len(index.risk_options):
        rows = risk_index[index.risk_options]
        review_index[index.risk_options] = rows[:, None] * reviews + np.arange(reviews)[None, :]

    from ...model.data import effort_groups

    family = np.full(count, CONSTANT)
    linear, cobb = effort_groups(data, index.variable_options)
    family[index.variable_options[linear]] = MINIMUM
    family[index.variable_options[cobb]] = COBB_DOUGLAS

    fixed = data.fixed_tokens / data.scale
    risk_weight = np.zeros((count, width))
    if len(index.risk_options):
        cuts = np.isfinite(data.risk_scale)
        ratio = data.scale / np.where(cuts, data.risk_scale, 1.0)[None, :]
        risk_weight[index.risk_options] = np.where(cuts[None, :], ratio[index.risk_options], 0.0)

    cache_index = np.full(count, -1)
    capital = economy.layer("capital")
    cache = getattr(capital, "cache_index", None)
    if cache is not None:
        cacheable = cache[0]
        cache_index[cacheable] = np.arange(len(cacheable))

    scale = economy.welfare_scale
    tasks = data.option_task
    worth = data.volume[tasks] * data.value[tasks] * data.max_success / scale
    quality = np.zeros(count)
    reuse = data.reuse[tasks]
    lossy = (cache_index >= 0) & (data.cache_quality_loss[tasks] > 0)
    quality[lossy] = -(data.volume * data.value * data.cache_quality_loss)[tasks[lossy]] / \
        reuse[lossy] / scale
    return RequestStructure(
        option_task=tasks, family=family, rate=data.rate.copy(), weight=data.weight,
        in_curve=data.in_curve & (family[:, None] != CONSTANT), fixed_ratio=fixed,
        risk_weight=risk_weight, token_index=token_index, effort_index=effort_index,
        risk_index=risk_index, review_index=review_index, cache_index=cache_index,
        reuse=np.where(cache_index >= 0, reuse, 0.0), defer_enabled=data.defer_enabled > 0,
        route_value=worth, defer_value=data.volume * data.value * data.defer_success / scale,
        cached_value=quality, sizes=sizes,
    )


def _is_request_variable(name: str) -> bool:
    return name in REQUEST_VARIABLES or name.startswith("agent.effort.")


def _is_known_other(name: str) -> bool:
    serving = ("gpus_prefill", "gpus_decode", "load_prefill", "load_decode", "waiting")
    capital = ("cache_size", "cache_miss", "training", "training_effort", "training_miss",
               "capability")
    return name in serving or name in capital or name.startswith("training.effort.")


@dataclass
class OptionCoefficients:
    """Class-level Lagrangian coefficients of the request variables, arranged per option."""

    route: np.ndarray
    tokens: np.ndarray
    shortfall: np.ndarray
    exposure: np.ndarray
    review: np.ndarray
    cached: np.ndarray
    defer: np.ndarray


def option_coefficients(structure: RequestStructure, lagrangian: Lagrangian,
                        prices: np.ndarray) -> OptionCoefficients:
    """Return the request variables' coefficients at ``prices``, per option and use."""
    names = [name for name in REQUEST_VARIABLES if name in structure.sizes]
    coefficients = lagrangian.coefficients(prices, names)
    effort = coefficients.get("effort")
    if effort is not None and np.any(effort != 0):
        raise UnsupportedStructure("effort has a price or welfare coefficient")

    def gather(name, index):
        values = coefficients.get(name)
        if values is None:
            return np.zeros(index.shape)
        return np.where(index >= 0, values[np.maximum(index, 0)], 0.0)

    return OptionCoefficients(
        route=coefficients["route"], tokens=gather("tokens", structure.token_index),
        shortfall=gather("shortfall", structure.effort_index),
        exposure=gather("exposure", structure.risk_index),
        review=gather("review", structure.review_index),
        cached=gather("cached", structure.cache_index), defer=coefficients["defer"],
    )


@dataclass
class RequestSet:
    """Requests of the block: each request's class, weight, relative value and difficulty.

    ``weight`` is the request's share of its class's volume (the weights of a
    class sum to one), ``value`` its task value over the class's value and
    ``difficulty`` divides the class curves' rate.
    """

    task: np.ndarray
    weight: np.ndarray
    value: np.ndarray
    difficulty: np.ndarray

    @classmethod
    def classes(cls, task_count: int) -> RequestSet:
        """Return one request per class that stands for the whole class."""
        ones = np.ones(task_count)
        return cls(np.arange(task_count), ones, ones.copy(), ones.copy())

    def __len__(self) -> int:
        return len(self.task)

    def slice(self, start: int, stop: int) -> RequestSet:
        return RequestSet(self.task[start:stop], self.weight[start:stop],
                          self.value[start:stop], self.difficulty[start:stop])


@dataclass
class BlockResponse:
    """A best response of (part of) the request block.

    ``value`` is the scaled Lagrangian value, ``welfare`` the scaled welfare
    without market charges, and ``aggregates`` the class-level variable values
    (the weighted sums of the requests' variables).
    """

    value: float
    aggregates: dict[str, np.ndarray]
    surplus: np.ndarray


class RequestBlock:
    """The request block's best response for one chunk of requests.

    The chunk keeps its request-option arrays. Each call takes the small
    class-level coefficients and returns class-level aggregates, so a chunk
    can live on a remote worker.
    """

    def __init__(self, structure: RequestStructure, requests: RequestSet):
        self.structure = structure
        self.requests = requests
        per_task = np.bincount(structure.option_task, minlength=structure.task_count)
        first = np.concatenate([[0], np.cumsum(per_task)[:-1]])
        counts = per_task[requests.task]
        self.option_request = np.repeat(np.arange(len(requests)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        self.option = np.repeat(first[requests.task], counts) + offsets
        self.counts = counts

    def respond(self, coefficients: OptionCoefficients, detail: bool = False):
        """Return the chunk's best response to the class-level coefficients."""
        s, requests = self.structure, self.requests
        k, r = self.option, self.option_request
        value = requests.value[r]
        route = coefficients.route[k] + (value - 1.0) * s.route_value[k]
        stake = -coefficients.shortfall[k] * value
        cached_coefficient = coefficients.cached[k] + (value - 1.0) * s.cached_value[k]
        inner = solve_options(s, k, s.rate[k] / requests.difficulty[r], stake,
                              coefficients.tokens[k], -coefficients.exposure[k],
                              -coefficients.review[k])
        cache_share = np.where(cached_coefficient > 0, s.reuse[k], 0.0)
        surplus = route + inner.value + cache_share * cached_coefficient

        task = requests.task
        defer = np.where(s.defer_enabled[task],
                         coefficients.defer[task] + (requests.value - 1.0) * s.defer_value[task],
                         -np.inf)
        best_option, best = _segment_argmax(surplus, self.counts)
        deferred = defer > best
        chosen = np.where(deferred, -1, best_option)
        best = np.maximum(best, defer)
        weight = requests.weight
        total = float(weight @ best)

        share = np.zeros(len(k))
        picked = chosen[chosen >= 0]
        share[picked] = weight[r[picked]]
        aggregates = self._aggregate(k, share, inner, cache_share, deferred)
        if detail:
            return BlockResponse(total, aggregates, best), (chosen, inner, cache_share)
        return BlockResponse(total, aggregates, best)

    def rows(self, coefficients: OptionCoefficients) -> dict[str, np.ndarray]:
        """Return each request's choice at the coefficients: option (-1 to defer), surplus, tokens."""
        response, (chosen, inner, cache_share) = self.respond(coefficients, detail=True)
        picked = np.maximum(chosen, 0)
        tokens = np.where(chosen[:, None] >= 0, inner.tokens[picked], 0.0)
        return {"option": np.where(chosen >= 0, self.option[picked], -1),
                "surplus": response.surplus, "tokens": tokens,
                "review": np.where(chosen >= 0, inner.review.sum(axis=1)[picked], 0.0)}

    def _aggregate(self, k, share, inner, cache_share, deferred) -> dict[str, np.ndarray]:
        s = self.structure
        sizes = s.sizes

        def scatter(name, index, values):
            if name not in sizes:
                return
            keep = (index >= 0) & (values != 0)
            out[name] = np.bincount(index[keep], weights=values[keep], minlength=sizes[name])

        out: dict[str, np.ndarray] = {}
        out["route"] = np.bincount(k, weights=share, minlength=sizes["route"])
        tokens = share[:, None] * inner.tokens
        scatter("tokens", s.token_index[k].ravel(), tokens.ravel())
        effort_rows = s.effort_index[k]
        scatter("effort", effort_rows, share * inner.effort)
        scatter("shortfall", effort_rows, share * inner.shortfall)
        scatter("exposure", s.risk_index[k], share * inner.exposure)
        if inner.review.shape[1]:
            scatter("review", s.review_index[k].ravel(), (share[:, None] * inner.review).ravel())
        scatter("cached", s.cache_index[k], share * cache_share)
        out["defer"] = np.bincount(self.requests.task, weights=self.requests.weight * deferred,
                                   minlength=s.task_count)
        for name in sizes:
            out.setdefault(name, np.zeros(sizes[name]))
        return out


def _segment_argmax(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the position and value of the maximum of each contiguous segment."""
    ends = np.cumsum(counts)
    starts = ends - counts
    best = np.full(len(counts), -np.inf)
    position = np.full(len(counts), -1)
    nonempty = counts > 0
    if not nonempty.any():
        return position, best
    best[nonempty] = np.maximum.reduceat(values, starts[nonempty])
    owner = np.repeat(np.arange(len(counts)), counts)
    is_best = values >= best[owner]
    # The first maximum of each segment: the smallest index among the maxima.
    candidates = np.where(is_best, np.arange(len(values)), len(values))
    position[nonempty] = np.minimum.reduceat(candidates, starts[nonempty])
    return position, best


@dataclass
class InnerSolution:
    """Per routed request: the option's surplus from tokens, and its variables."""

    value: np.ndarray
    tokens: np.ndarray
    effort: np.ndarray
    shortfall: np.ndarray
    exposure: np.ndarray
    review: np.ndarray


def solve_options(s: RequestStructure, k: np.ndarray, rate: np.ndarray, stake: np.ndarray,
                  token_coefficient: np.ndarray, risk_price: np.ndarray,
                  review_cost: np.ndarray) -> InnerSolution:
    """Maximize each option's surplus from tokens and review per routed request.

    ``stake`` is the value lost when the request fails (``A``), ``risk_price``
    the expected loss of a wrong action (``B``), ``token_coefficient`` the
    Lagrangian coefficient of each use (minus its full cost), ``review_cost``
    the full cost of a unit of review exponent. All are per routed request.
    """
    n, width = token_coefficient.shape
    family = s.family[k]
    in_curve = s.in_curve[k]
    beta = s.weight[k]
    fixed = s.fixed_ratio[k]
    risk_weight = s.risk_weight[k]
    active = s.token_index[k] >= 0
    cost = -token_coefficient
    risk_price = np.where(s.risk_index[k] >= 0, np.maximum(risk_price, 0.0), 0.0)
    stake = np.where(family == CONSTANT, 0.0, np.maximum(stake, 0.0))

    tokens = np.zeros((n, width))
    effort = np.zeros(n)
    value = np.zeros(n)

    # Fixed tokens of constant options.
    has_fixed = np.isfinite(fixed) & active
    tokens[has_fixed] = fixed[has_fixed]
    value += np.sum(np.where(has_fixed, token_coefficient * np.where(has_fixed, fixed, 0.0), 0.0), axis=1)
    base_exponent = np.sum(np.where(has_fixed, risk_weight * np.where(has_fixed, fixed, 0.0), 0.0), axis=1)

    # Marginal cost of one unit of risk exponent bought off the curve.
    off_curve = active & ~in_curve & ~has_fixed & (risk_weight > 0)
    per_exponent = np.where(off_curve, cost / np.where(off_curve, risk_weight, 1.0), np.inf)
    best_use = np.argmin(per_exponent, axis=1)
    token_rate = per_exponent[np.arange(n), best_use]
    reviews = review_cost.shape[1]
    if reviews:
        review_cost = np.where(s.review_index[k] >= 0, review_cost, np.inf)
        best_review = np.argmin(review_cost, axis=1)
        review_rate = review_cost[np.arange(n), best_review]
    else:
        best_review = np.zeros(n, dtype=int)
        review_rate = np.full(n, np.inf)
    tail_rate = np.minimum(token_rate, review_rate)

    in_curve_risk = in_curve & (risk_weight > 0) & (risk_price[:, None] > 0)
    coupled_count = in_curve_risk.sum(axis=1)
    if np.any(coupled_count > 1):
        raise UnsupportedStructure("an option has two risk-reducing uses inside its curve")
    coupled = coupled_count == 1
    plain = (family != CONSTANT) & ~coupled

    # Curves without a risk-reducing input: closed forms.
    if plain.any():
        index = np.flatnonzero(plain)
        unit_cost, mix = _unit_cost(family[index], beta[index], in_curve[index], cost[index])
        g = _closed_form_effort(stake[index], rate[index], unit_cost)
        effort[index] = g
        tokens[index] = np.where(in_curve[index], g[:, None] * mix, tokens[index])
        value[index] += -stake[index] * np.exp(-rate[index] * g) - unit_cost * g

    exponent = base_exponent.copy()
    cobb_coupled = coupled & (family == COBB_DOUGLAS) & np.all(~in_curve | (cost > 0), axis=1)
    for index, solver in ((np.flatnonzero(cobb_coupled), _coupled_cobb_douglas),
                          (np.flatnonzero(coupled & ~cobb_coupled), _coupled)):
        if not len(index):
            continue
        v = np.argmax(in_curve_risk[index], axis=1)
        g, verify, others, part = solver(family[index], beta[index], in_curve[index], cost[index], v,
                                         stake[index], rate[index], risk_price[index],
                                         risk_weight[index, v], tail_rate[index])
        effort[index] = g
        tokens[index] = np.where(in_curve[index], others, tokens[index])
        tokens[index, v] = verify
        exponent[index] += risk_weight[index, v] * verify
        value[index] += part

    # Value loss of plain and coupled options (the coupled part already counts it).
    shortfall = np.where(family == CONSTANT, 0.0, np.exp(-rate * effort))

    # The rest of the risk exponent at the cheapest constant marginal cost.
    risky = risk_price > 0
    extra = np.zeros(n)
    at_stake = risk_price * np.exp(-exponent)
    finite = risky & np.isfinite(tail_rate) & (tail_rate > 0)
    with np.errstate(divide="ignore"):  # a stake that underflowed to 0 needs no extra exponent
        extra[finite] = np.maximum(0.0, np.log(at_stake[finite] / tail_rate[finite]))
    free = risky & (tail_rate <= 0)
    extra[free] = FREE_EFFORT
    # Coupled options already include the tail in their value; add it for the others.
    tail_value = -at_stake * np.exp(-extra) - np.where(np.isfinite(tail_rate), tail_rate, 0.0) * extra
    value += np.where(risky & ~coupled, tail_value, 0.0)
    review = np.zeros((n, reviews))
    by_tokens = extra > 0
    use_tokens = by_tokens & (token_rate <= review_rate)
    rows = np.flatnonzero(use_tokens)
    tokens[rows, best_use[rows]] += extra[rows] / risk_weight[rows, best_use[rows]]
    rows = np.flatnonzero(by_tokens & ~use_tokens)
    if reviews:
        review[rows, best_review[rows]] = extra[rows]
    # The wrong-action probability of the tokens and review actually bought.
    total_exponent = np.sum(risk_weight * tokens, axis=1) + review.sum(axis=1)
    exposure = np.where(s.risk_index[k] >= 0, np.exp(-total_exponent), 0.0)
    return InnerSolution(value, tokens, effort, shortfall, exposure, review)


def _unit_cost(family, beta, in_curve, cost) -> tuple[np.ndarray, np.ndarray]:
    """Return the cost of one unit of effort and the tokens per unit of effort of each use."""
    positive = np.where(in_curve, cost, 1.0) > 0
    cobb = family == COBB_DOUGLAS
    safe_cost = np.where(in_curve & positive, cost, 1.0)
    safe_beta = np.where(in_curve, beta, 1.0)
    log_cost = np.sum(np.where(in_curve, beta * np.log(safe_cost / safe_beta), 0.0), axis=1)
    unit = np.where(cobb, np.exp(log_cost), np.sum(np.where(in_curve, cost, 0.0), axis=1))
    free = ~np.all(positive | ~in_curve, axis=1)
    unit = np.where(free, 0.0, unit)
    mix = np.where(cobb[:, None], safe_beta * unit[:, None] / safe_cost, 1.0)
    mix = np.where(free[:, None] & cobb[:, None], 1.0, mix)
    return unit, np.where(in_curve, mix, 0.0)


def _closed_form_effort(stake, rate, unit_cost) -> np.ndarray:
    """Return ``argmax_g -stake * exp(-rate g) - unit_cost * g`` over ``g >= 0``."""
    safe = np.where(unit_cost > 0, unit_cost, 1.0)
    ratio = np.where(stake > 0, rate * stake / safe, 0.0)
    g = np.where(ratio > 1.0, np.log(np.maximum(ratio, 1.0)) / rate, 0.0)
    return np.where((unit_cost <= 0) & (stake > 0), FREE_EFFORT / rate, g)


def _tail(at_stake, rate) -> np.ndarray:
    """Return ``max_e -at_stake * exp(-e) - rate * e`` over ``e >= 0``."""
    finite = np.isfinite(rate) & (rate > 0)
    safe = np.where(finite, rate, 1.0)
    extra = np.where(finite & (at_stake > safe), np.log(np.maximum(at_stake, 1e-300) / safe), 0.0)
    return -at_stake * np.exp(-extra) - np.where(finite, safe, 0.0) * extra


def _coupled_cobb_douglas(family, beta, in_curve, cost, v, stake, rate, risk_price, risk_weight,
                          tail_rate):
    """Solve Cobb-Douglas options whose risk-reducing use ``v`` is a curve input, by bisection.

    At the optimum the verification tokens cost ``c_v`` minus their marginal
    risk benefit ``r = w * psi'(w * t_v)`` each, where ``psi'`` is the marginal
    value of risk exponent (``B exp(-u)``, capped by the tail rate). At a fixed
    ``r`` the option is a plain Cobb-Douglas option with that effective price,
    so effort and tokens have closed forms. The verification tokens grow with
    ``r`` while the benefit falls with them. The consistent ``r`` is therefore
    the root of an increasing function, found by safeguarded Newton steps.
    """
    n = len(v)
    rows = np.arange(n)
    verify_cost = cost[rows, v]
    beta_v = beta[rows, v]
    others = in_curve.copy()
    others[rows, v] = False
    safe_cost = np.where(in_curve, cost, 1.0)
    safe_beta = np.where(in_curve, beta, 1.0)
    log_others = np.sum(np.where(others, beta * np.log(safe_cost / safe_beta), 0.0), axis=1)

    def marginal_benefit(tokens):
        marginal = risk_price * np.exp(-risk_weight * tokens)
        return risk_weight * np.where(np.isfinite(tail_rate), np.minimum(marginal, tail_rate), marginal)

    def response(benefit, at=slice(None)):
        """Return effort, verification tokens and unit cost at ``benefit`` for the options ``at``."""
        effective = np.maximum(verify_cost[at] - benefit, 1e-300)
        unit = np.exp(log_others[at] + beta_v[at] * np.log(effective / beta_v[at]))
        g = _closed_form_effort(stake[at], rate[at], unit)
        return g, beta_v[at] * g * unit / effective, unit

    # Newton's method on excess(r) = r - benefit(t_v(r)), kept inside a bracket
    # [low, high] with excess(low) < 0 <= excess(high); a step that leaves the
    # bracket is replaced by its midpoint. With ``e = c_v - r`` the closed forms
    # give d t_v / d r = t_v / e * (1 - beta_v + beta_v / (rate * g)). Options
    # leave the iteration once their step no longer changes the benefit.
    low = np.zeros(n)
    high = np.minimum(verify_cost, marginal_benefit(np.zeros(n))) * (1.0 - 1e-12)
    benefit = 0.5 * (low + high)
    active = np.arange(n)
    for _ in range(NEWTON_STEPS):
        if not len(active):
            break
        current = benefit[active]
        g, verify, _ = response(current, active)
        weight, cap = risk_weight[active], tail_rate[active]
        marginal = risk_price[active] * np.exp(-weight * verify)
        capped = np.isfinite(cap) & (marginal > cap)
        excess = current - weight * np.where(capped, cap, marginal)
        below = np.where(excess < 0, current, low[active])
        above = np.where(excess >= 0, current, high[active])
        effective = np.maximum(verify_cost[active] - current, 1e-300)
        share = beta_v[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(g > 0, verify / effective * (1.0 - share + share / (rate[active] * g)), 0.0)
        derivative = 1.0 + np.where(capped, 0.0, weight ** 2 * marginal * slope)
        step = current - excess / derivative
        step = np.where((step >= below) & (step <= above), step, 0.5 * (below + above))
        low[active], high[active], benefit[active] = below, above, step
        moving = np.abs(step - current) > 1e-15 * np.maximum(np.abs(current), 1e-300)
        active = active[moving]
    g, verify, unit = response(benefit)
    effective = np.maximum(verify_cost - benefit, 1e-300)
    prices = np.where(in_curve, safe_cost, 1.0)
    prices[rows, v] = effective
    other_tokens = np.where(others, g[:, None] * safe_beta * unit[:, None] / prices, 0.0)
    spend = np.sum(np.where(others, cost * other_tokens, 0.0), axis=1) + verify_cost * verify
    tail = _tail(risk_price * np.exp(-risk_weight * verify), tail_rate)
    value = -stake * np.exp(-rate * g) - spend + tail
    return g, verify, other_tokens, value


def _coupled(family, beta, in_curve, cost, v, stake, rate, risk_price, risk_weight, tail_rate):
    """Solve options whose risk-reducing use ``v`` is also a curve input.

    Returns the effort, the verification tokens, the other inputs' tokens and
    the option's value (curve, token costs and risk, tail included).
    """
    n = len(v)
    rows = np.arange(n)
    verify_cost = cost[rows, v]
    others = in_curve.copy()
    others[rows, v] = False
    beta_v = beta[rows, v]
    cobb = (family == COBB_DOUGLAS) & (beta_v < 1.0 - 1e-12)
    share = np.where(cobb, 1.0 - beta_v, 1.0)
    # Cobb-Douglas: the other inputs reach G / t_v**beta_v at cost share * Q * (...)**(1/share).
    safe_cost = np.where(others, np.maximum(cost, 1e-300), 1.0)
    safe_beta = np.where(others, np.maximum(beta, 1e-300), 1.0)
    log_q = np.sum(np.where(others, beta * np.log(safe_cost / safe_beta), 0.0), axis=1) / share
    q = np.exp(log_q)
    linear_cost = np.sum(np.where(others, cost, 0.0), axis=1)
    free_effort = _closed_form_effort(stake, rate, linear_cost)

    def inner(verify):
        """Return effort and the other inputs' cost at each verification level."""
        verify = np.maximum(verify, 1e-300)
        if not cobb.any():
            g = np.minimum(verify, free_effort)
            return g, linear_cost * g
        with np.errstate(over="ignore"):
            slope = q * verify ** (-beta_v / share)
        power = 1.0 / share - 1.0
        safe_power = np.where(power > 0, power, 1.0)
        upper = np.where(stake > 0, (rate * np.maximum(stake, 1e-300) / slope) ** (1.0 / safe_power), 0.0)
        low, high = np.zeros(n), upper
        for _ in range(BISECTION_STEPS):
            middle = 0.5 * (low + high)
            rising = rate * stake * np.exp(-rate * middle) > slope * middle ** power
            low = np.where(rising, middle, low)
            high = np.where(rising, high, middle)
        g_cobb = np.where(np.isfinite(slope), 0.5 * (low + high), 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            cost_cobb = share * q * g_cobb ** (1.0 / share) * verify ** (-beta_v / share)
        cost_cobb = np.where(g_cobb > 0, cost_cobb, 0.0)
        g_min = np.minimum(verify, free_effort)
        return np.where(cobb, g_cobb, g_min), np.where(cobb, cost_cobb, linear_cost * g_min)

    def objective(verify):
        g, other_cost = inner(verify)
        tail = _tail(risk_price * np.exp(-risk_weight * verify), tail_rate)
        return -stake * np.exp(-rate * g) - other_cost - verify_cost * verify + tail

    upper = np.where(verify_cost > 0, (stake + risk_price) / np.maximum(verify_cost, 1e-300),
                     FREE_EFFORT / np.maximum(np.minimum(rate, risk_weight), 1e-12))
    low, high = np.zeros(n), upper
    left, right = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    f_left, f_right = objective(left), objective(right)
    for _ in range(GOLDEN_STEPS):
        move_right = f_left < f_right
        low = np.where(move_right, left, low)
        high = np.where(move_right, high, right)
        left_new = np.where(move_right, right, high - GOLDEN * (high - low))
        right_new = np.where(move_right, low + GOLDEN * (high - low), left)
        f_keep = np.where(move_right, f_right, f_left)
        left, right = left_new, right_new
        evaluated = objective(np.where(move_right, right, left))
        f_left = np.where(move_right, f_keep, evaluated)
        f_right = np.where(move_right, evaluated, f_keep)
    verify = 0.5 * (low + high)
    # The search can miss a corner at zero verification.
    at_zero = objective(np.zeros(n))
    inside = objective(verify)
    verify = np.where(at_zero > inside, 0.0, verify)
    g, _ = inner(verify)
    value = np.maximum(at_zero, inside)

    # Other inputs' tokens at the chosen effort and verification.
    with np.errstate(over="ignore", invalid="ignore"):
        level = (g * np.maximum(verify, 1e-300) ** -beta_v) ** (1.0 / share) * q
    level = np.where(cobb, np.where(g > 0, level, 0.0), g)
    other_tokens = np.where(cobb[:, None], safe_beta * level[:, None] / safe_cost, g[:, None])
    other_tokens = np.where(others, other_tokens, 0.0)
    return g, verify, other_tokens, value
