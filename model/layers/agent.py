"""Agent layer: how a routed request's tokens split among uses, and human review.

Variables
---------
``tokens[j]``
    For each active (option, use) pair ``j``: tokens per class request divided by
    the pair's token scale, i.e. ``route * tokens_per_routed_request / scale``.
``effort[k]``, ``shortfall[k]``
    For options whose success depends on tokens: the curve's effort ``G`` and the
    perspective ``route * exp(-rate * G / route)`` of the missing success.
``exposure[k]``, ``review[k, h]``
    For options that can take a wrong irreversible action: the perspective
    ``route * exp(-u / route)`` of the wrong-action probability, where ``u`` adds
    verification tokens and review minutes, each over its risk scale.

Because the curves are homogeneous of degree one, expected successes of the
routed share are the perspective ``max_success * (route - shortfall)``, an
exponential-cone constraint, so routing and token allocation are jointly convex.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from ..data import FAMILIES, EconomyData, effort_groups
from ..errors import ExtensionError, FieldProblem
from ..formulation import Builder, geometric_mean_constraints
from ..registry import REGISTRY
from ..schema import Instance
from .base import resource_usage, token_flow, usage, welfare

MINUTE = 60.0


@dataclass
class AgentIndex:
    """Index arrays of the agent's variables (kept for reports and checks)."""

    pair_option: np.ndarray
    pair_use: np.ndarray
    variable_options: np.ndarray
    risk_options: np.ndarray


def agent_index(data: EconomyData, with_risk: bool) -> AgentIndex:
    """Return the active (option, use) pairs and the option subsets with cones."""
    exposed = (data.wrong_action * data.loss[data.option_task]) > 0
    risk_options = np.flatnonzero(exposed) if with_risk else np.array([], dtype=int)
    reduces_risk = np.isfinite(data.risk_scale)[None, :] & np.isin(
        np.arange(data.option_count), risk_options)[:, None]
    active = data.in_curve | np.isfinite(data.fixed_tokens) | reduces_risk
    pair_option, pair_use = np.nonzero(active)
    variable_options = np.flatnonzero(data.family != "constant")
    return AgentIndex(pair_option, pair_use, variable_options, risk_options)


class Agent:
    name = "agent"
    decisions = ("tokens", "review")

    def declare(self, builder: Builder, data: EconomyData, instance: Instance) -> None:
        with_risk = any(m.kind == "risk" for m in instance.markets.values())
        index = agent_index(data, with_risk)
        self.index = index
        route = builder.variables["route"]
        tokens = builder.variable("tokens", len(index.pair_option))

        self._define_success(builder, data, index, route, tokens)
        self._define_fixed_tokens(builder, data, index, route, tokens)
        self._define_token_costs(builder, data, index)
        if len(index.risk_options):
            self._define_risk(builder, data, index, route, tokens)

    def _define_success(self, builder, data, index, route, tokens) -> None:
        options = index.variable_options
        if not len(options):
            return
        effort = builder.variable("effort", len(options))
        shortfall = builder.variable("shortfall", len(options))
        rate = builder.constant("agent.rate", data.rate[options])
        builder.constrain("agent.success", [
            cp.constraints.ExpCone(-cp.multiply(rate, effort), route[options], shortfall)])

        pair_index = np.full((data.option_count, len(data.uses)), -1)
        pair_index[index.pair_option, index.pair_use] = np.arange(len(index.pair_option))
        self._define_effort(builder, data, options, pair_index, effort, tokens)

        tasks = data.option_task[options]
        worth = data.volume[tasks] * data.value[tasks] * data.max_success[options]
        builder.contribute(welfare("value"), self.name, "route",
                           _scatter(data.option_count, options, worth))
        builder.contribute(welfare("value"), self.name, "shortfall", -worth)

    @staticmethod
    def _define_effort(builder, data, options, pair_index, effort, tokens) -> None:
        """Bound each option's effort by its curve: single input, Leontief or Cobb-Douglas.

        ``pair_index[k, a]`` is the position of (option k, use a) in ``tokens``.
        """
        support = data.in_curve[options]
        linear, cobb = effort_groups(data, options)

        rows, uses = np.nonzero(support & linear[:, None])
        if len(rows):
            pairs = pair_index[options[rows], uses]
            builder.constrain("agent.effort", [effort[rows] <= tokens[pairs]])

        # One chain of power cones per distinct set of inputs (a handful in practice).
        patterns, group = np.unique(support[cobb], axis=0, return_inverse=True)
        members_all = np.flatnonzero(cobb)
        for g, pattern in enumerate(patterns):
            members = members_all[group.ravel() == g]
            ks = options[members]
            used = np.flatnonzero(pattern)
            inputs = [tokens[pair_index[ks, a]] for a in used]
            alpha = data.weight[np.ix_(ks, used)].T
            label = "agent.effort." + "-".join(str(a) for a in used)
            builder.constrain("agent.effort", geometric_mean_constraints(
                builder, label, inputs, alpha, effort[members]))

        families = data.family[options]
        for family in sorted(set(families) - set(FAMILIES)):
            _define_family_effort(builder, data, options, pair_index, effort, tokens,
                                  np.flatnonzero(families == family), family)

    @staticmethod
    def _define_fixed_tokens(builder, data, index, route, tokens) -> None:
        fixed = data.fixed_tokens[index.pair_option, index.pair_use]
        pairs = np.flatnonzero(np.isfinite(fixed))
        if not len(pairs):
            return
        ratio = fixed[pairs] / data.scale[index.pair_option[pairs], index.pair_use[pairs]]
        builder.constrain("agent.fixed_tokens", [tokens[pairs] == cp.multiply(
            builder.constant("agent.fixed_ratio", ratio), route[index.pair_option[pairs]])])

    def _define_token_costs(self, builder, data, index) -> None:
        k, a = index.pair_option, index.pair_use
        tasks, models = data.option_task[k], data.option_model[k]
        volume, scale = data.volume[tasks], data.scale[k, a]
        share_in = data.input_share[a]
        per_token = share_in * data.price_input[models] + (1 - share_in) * data.price_output[models]
        spend = volume * scale * per_token
        builder.contribute(welfare("compute"), self.name, "tokens", -spend)
        builder.contribute(usage("compute"), self.name, "tokens", spend, unit="USD", tasks=tasks)
        for direction, share in (("input", share_in), ("output", 1 - share_in)):
            builder.contribute(token_flow(direction), self.name, "tokens", volume * scale * share,
                               models, size=len(data.models), unit="tokens", tasks=tasks)

        seconds = share_in * data.seconds_per_input[models] + (1 - share_in) * data.seconds_per_output[models]
        builder.contribute(usage("latency"), self.name, "tokens", scale * seconds, tasks,
                           size=len(data.tasks), unit="s")
        for market, footprint in data.footprint.items():
            builder.contribute(resource_usage(market), self.name, "tokens", volume * scale * footprint[a])

        if data.pools:
            pool, size = data.model_pool[models], len(data.pools)
            builder.contribute(usage("prefill"), self.name, "tokens", volume * scale * share_in,
                               pool, size=size, unit="tokens")
            output = volume * scale * (1 - share_in)
            builder.contribute(usage("decode"), self.name, "tokens", output, pool,
                               size=size, unit="tokens")
            # NOTE: KV residency counts the prompt context held while a request
            # decodes; tokens read or generated during the request are left out.
            resident = output / data.period * data.context[tasks] * data.seconds_per_output[models]
            builder.contribute(usage("kv"), self.name, "tokens", resident, pool,
                               size=size, unit="tokens")

    def _define_risk(self, builder, data, index, route, tokens) -> None:
        options = index.risk_options
        count, reviews = len(options), len(data.reviews)
        exposure = builder.variable("exposure", count)
        row_of = np.full(data.option_count, -1)
        row_of[options] = np.arange(count)

        # Exponent u of the wrong-action probability, per exposed option.
        k, a = index.pair_option, index.pair_use
        cuts = np.isfinite(data.risk_scale[a]) & (row_of[k] >= 0)
        weight = np.where(cuts, data.scale[k, a] / np.where(cuts, data.risk_scale[a], 1.0), 0.0)
        rows = np.where(cuts, row_of[k], 0)
        exponent = _aggregate(count, rows, builder.constant("agent.risk_cut", weight), tokens)

        if reviews:
            review = builder.variable("review", count * reviews)
            review_rows = np.repeat(np.arange(count), reviews)
            exponent = exponent + _aggregate(count, review_rows, np.ones(count * reviews), review)
            self._define_review_costs(builder, data, options, review)
        builder.constrain("agent.risk", [cp.constraints.ExpCone(-exponent, route[options], exposure)])

        tasks = data.option_task[options]
        loss = data.volume[tasks] * data.loss[tasks] * data.wrong_action[options]
        builder.contribute(usage("risk"), self.name, "exposure", loss, unit="USD", tasks=tasks)

    def _define_review_costs(self, builder, data, options, review) -> None:
        reviews = len(data.reviews)
        tasks = np.repeat(data.option_task[options], reviews)
        h = np.tile(np.arange(reviews), len(options))
        minutes = data.volume[tasks] * data.review_risk_scale[h]
        builder.contribute(welfare("review"), self.name, "review", -minutes * data.review_wage[h])
        builder.contribute(usage("oversight"), self.name, "review", minutes, unit="minutes",
                           tasks=tasks)
        builder.contribute(usage("latency"), self.name, "review", MINUTE * data.review_risk_scale[h],
                           tasks, size=len(data.tasks), unit="s")
        for market, footprint in data.review_footprint.items():
            builder.contribute(resource_usage(market), self.name, "review", minutes * footprint[h])


def _define_family_effort(builder, data, options, pair_index, effort, tokens, members_all,
                          family) -> None:
    """Bound the effort of options whose curve family an extension registered.

    Options with the same set of uses form one group, and the family's
    ``effort`` hook receives their scaled tokens by use name.
    """
    entry = REGISTRY.curve_family(family)
    support = data.in_curve[options[members_all]]
    patterns, group = np.unique(support, axis=0, return_inverse=True)
    for g, pattern in enumerate(patterns):
        members = members_all[group.ravel() == g]
        ks = options[members]
        used = np.flatnonzero(pattern)
        inputs = {data.uses[a]: tokens[pair_index[ks, a]] for a in used}
        curves = [data.curves[k] for k in ks]
        label = f"agent.effort.{family}." + "-".join(str(a) for a in used)
        try:
            constraints = list(entry.effort(builder, label, curves, inputs, effort[members]))
        except ExtensionError:
            raise
        except Exception as error:
            raise ExtensionError(entry.source, [FieldProblem(
                f"(effort of curve family {family})", type(error).__name__, f"failed: {error}",
                "fix the family's effort function")]) from error
        bad = [item for item in constraints if not isinstance(item, cp.Constraint) or not item.is_dcp()]
        if bad:
            raise ExtensionError(entry.source, [FieldProblem(
                f"(effort of curve family {family})", str(bad[0])[:80],
                "is not a convex (DCP) constraint",
                "bound effort from above by a concave expression of the inputs")])
        builder.constrain(f"agent.effort.{family}", constraints)


def evaluate_effort(curve, scaled_tokens: dict[str, float]) -> float:
    """Return the effort G a registered family's curve gives ``scaled_tokens`` (tokens over scale).

    Solves the one-option program ``max g`` subject to the family's effort
    constraints, which is how the agent layer uses them. Extension authors
    can check concavity and degree-one homogeneity with it, e.g. that
    doubling every input doubles G.
    """
    entry = REGISTRY.curve_family(curve.curve)
    if entry is None or entry.effort is None:
        raise ValueError(f"curve family {curve.curve!r} is not one registered by an extension")
    inputs = {use: cp.Constant(np.array([float(value)])) for use, value in scaled_tokens.items()}
    effort = cp.Variable(1)
    constraints = entry.effort(Builder(), "evaluate", [curve], inputs, effort)
    problem = cp.Problem(cp.Maximize(effort[0]), constraints)
    problem.solve(solver="CLARABEL")
    if problem.status != cp.OPTIMAL:
        raise ValueError(f"the effort of curve family {curve.curve!r} has no finite maximum "
                         f"at {scaled_tokens} ({problem.status})")
    return float(effort.value[0])


def _scatter(size: int, positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    result = np.zeros(size)
    result[positions] = values
    return result


def _aggregate(size: int, rows: np.ndarray, weight, variable: cp.Variable) -> cp.Expression:
    import scipy.sparse as sp

    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(size, len(rows)))
    return matrix @ cp.multiply(weight, variable)
