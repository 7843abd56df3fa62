"""Siloed versus global: each layer optimises with only the prices it can see.

The global solve gives the equilibrium prices. A siloed run then executes
the layers in the order a request meets them (router, agent, serving,
capital). Each layer maximises welfare restricted to its **price view**:

* the task values (and the quality a shared cache costs them) count only if
  ``value`` is in the view, and queueing delay only if ``latency`` is;
* without ``capability`` in its view, training values capability as if it
  were deployed at once, blind to depreciation over the rollout lag;
* list prices, wages and cache costs are always charged, because the layer
  is billed them;
* a budget market (compute, latency SLA, risk, oversight, resources) is
  charged at its equilibrium price when its kind is in the view and is
  otherwise ignored, so the realised allocation may overrun it;
* an exogenous price is charged only when its kind is in the view;
* serving capacity, KV memory and GPU counts are physical and always hold;
  every request is routed somewhere.

Each step optimises all variables but commits only the current layer's
decisions; later layers take them as given. The realised allocation is then
evaluated under the true objective: curves, exposure and queueing delay
follow from the committed decisions, and budget overruns are reported, not
clipped. With every price in every view, each step maximises the Lagrangian
at the equilibrium prices, so the siloed run reproduces the global optimum
(the first welfare theorem) whenever that optimum is unique.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np

from ..model.economy import Economy
from ..model.errors import SolveError
from ..model.registry import REGISTRY
from ..model.views import LAYER_ORDER, resolve_views
from .joint import TIME_LIMIT_OPTION, solve
from .result import Result

logger = logging.getLogger(__name__)

IDLE_GPUS = 1e-6
"""GPUs (a continuous count) below which a pool phase counts as idle."""

PHYSICAL_KINDS = frozenset({"prefill", "decode", "kv", "gpu"})
"""Market kinds that are capacities: always constraints, whatever the view."""

EVALUATION_SOLVERS = ("CLARABEL", "SCS")


@dataclass
class Realised:
    """An allocation evaluated under the true objective and constraints."""

    welfare: float
    welfare_parts: dict[str, float]
    welfare_by_layer: dict[str, float]
    usage: dict[str, np.ndarray]
    variables: dict[str, np.ndarray]

    def utilization(self, phase: str, pool: int) -> float | None:
        """Return load over GPUs of a pool phase, or ``None`` when it has no GPUs."""
        gpus = self.variables.get(f"gpus_{phase}")
        load = self.variables.get(f"load_{phase}")
        if gpus is None or load is None or gpus[pool] <= IDLE_GPUS:
            return None
        return float(load[pool] / gpus[pool])


@dataclass
class Comparison:
    """Global optimum against a siloed run of the same instance."""

    views: dict[str, frozenset[str]]
    global_result: Result
    global_state: Realised
    siloed_state: Realised
    overruns: list[dict] = field(default_factory=list)
    policies: Mapping[str, object] | None = None
    markets: list = field(default_factory=list)
    prices: dict[str, float] = field(default_factory=dict)
    time_limit: float | None = None

    @property
    def policy_names(self) -> dict[str, str]:
        return {layer: getattr(policy, "label", getattr(policy, "__name__", "custom"))
                for layer, policy in (self.policies or {}).items()}

    @property
    def gap(self) -> float:
        """Global minus siloed welfare (USD per period); negative when overruns pay off."""
        return self.global_state.welfare - self.siloed_state.welfare

    @property
    def gap_share(self) -> float:
        return self.gap / max(abs(self.global_state.welfare), 1e-12)

    def priced_welfare(self, state: Realised) -> float:
        """Welfare plus every constraint row's slack valued at its equilibrium price.

        This is the Lagrangian at the equilibrium prices. An overrun budget
        costs its price per unit of excess, so no allocation scores above
        the global optimum, whose priced welfare equals its welfare.
        """
        total = state.welfare
        for spec in self.markets:
            if spec.is_constraint and spec.mode != "equality" and spec.name in state.usage:
                prices = np.array([self.prices.get(label) or 0.0 for label in spec.labels])
                total += float(np.sum(prices * (spec.rhs - state.usage[spec.name])))
        return total

    @property
    def priced_gap(self) -> float:
        """Global welfare minus the siloed priced welfare; never negative up to solver accuracy."""
        return self.global_state.welfare - self.priced_welfare(self.siloed_state)


def compare(economy: Economy, views: Mapping[str, frozenset[str]] | None = None,
            global_result: Result | None = None, policies: Mapping[str, object] | None = None,
            time_limit: float | None = None) -> Comparison:
    """Solve globally, run the layers siloed, and evaluate both allocations.

    ``views`` defaults to the instance's ``views`` over the default views.
    ``policies`` maps a layer to a policy from :mod:`tokenomy.solvers.policies`
    that replaces its view-restricted optimisation. ``time_limit`` bounds the
    global solve and each solver of every step (seconds).

    Raises
    ------
    SolveError
        When the global solve is not certified optimal (its prices are what
        the siloed layers see) or a siloed step has no solution.
    """
    views = dict(views) if views is not None else resolve_views(economy.instance.views)
    result = global_result or solve(economy, time_limit=time_limit)
    if not result.certified:
        raise SolveError(f"the global solve is not certified ({result.termination.value}: "
                         f"{result.message}); a siloed run needs its equilibrium prices")
    global_state = _snapshot(economy)
    prices = {price.row: price.price for price in result.prices}

    fixed: dict[str, np.ndarray] = {}
    for layer in _layers_in_order(economy):
        view = views.get(layer.name, frozenset())
        policy = (policies or {}).get(layer.name)
        _solve_step(economy, view, prices, fixed, f"siloed {layer.name} step", policy, time_limit)
        for name in layer.decisions:
            if name in economy.builder.variables:
                fixed[name] = np.array(economy.builder.variables[name].value)
        logger.info("siloed %s committed %s", layer.name, ", ".join(layer.decisions))

    _evaluate(economy, fixed, time_limit)
    siloed_state = _snapshot(economy)
    overruns = _overruns(economy, siloed_state)
    load_state(economy, global_state)
    return Comparison(views, result, global_state, siloed_state, overruns, policies,
                      list(economy.markets), prices, time_limit)


def _layers_in_order(economy: Economy):
    by_name = {layer.name: layer for layer in economy.layers}
    ordered = [by_name[name] for name in LAYER_ORDER if name in by_name]
    return ordered + [layer for layer in economy.layers if layer.name not in LAYER_ORDER]


def _sees(view: frozenset[str], spec) -> bool:
    return spec.kind in view or (spec.kind == "resource" and "resource" in view)


def _solve_step(economy: Economy, view, prices, fixed, label: str, policy=None,
                time_limit: float | None = None) -> None:
    """Maximise welfare as seen through ``view`` with ``fixed`` decisions held.

    A ``policy`` adds its constraints and may replace the objective.
    """
    builder, scale = economy.builder, economy.welfare_scale
    terms = []
    for name in sorted(builder.quantities):
        if not name.startswith("welfare."):
            continue
        part = name.removeprefix("welfare.")
        if part in ("value", "defer", "cache_quality") and "value" not in view:
            continue
        if part == "waiting" and "latency" not in view:
            continue
        if part == "capability" and "capability" not in view:
            # Blind to depreciation: capability is valued as if deployed at once.
            terms.append(builder.linear(name, scale * _staleness(economy)))
            continue
        terms.append(builder.linear(name, scale))

    constraints = _hard_constraints(economy, fixed)
    for spec in economy.markets:
        if spec.quantity in builder.quantities and not _is_hard(spec) and _sees(view, spec):
            usage = builder.linear(spec.quantity)[spec.rows]
            row_prices = (spec.price * spec.weight if spec.mode == "price"
                          else np.array([prices[label_] for label_ in spec.labels]))
            terms.append(-(row_prices / scale) @ usage)
    objective = cp.Maximize(sum(cp.sum(term) for term in terms))
    if policy is not None:
        step = policy(economy)
        constraints += step.constraints
        if step.objective is not None:
            objective = cp.Maximize(step.objective)
    _run(cp.Problem(objective, constraints), label, time_limit)


def _is_hard(spec) -> bool:
    """Routing rows and physical capacities hold in every step, whatever the view."""
    return spec.mode == "equality" or (is_physical_kind(spec.kind) and spec.mode != "price")


def is_physical_kind(kind: str) -> bool:
    """Return whether markets of ``kind`` are capacities: built-in ones, or kinds registered as physical."""
    if kind in PHYSICAL_KINDS:
        return True
    entry = REGISTRY.market_kind(kind)
    return entry is not None and entry.physical


def _hard_constraints(economy: Economy, fixed: dict[str, np.ndarray]) -> list[cp.Constraint]:
    """Return the layers' own constraints, routing, physical capacities and the fixed decisions."""
    builder = economy.builder
    constraints = list(builder.constraints)
    for spec in economy.markets:
        if spec.quantity not in builder.quantities or not _is_hard(spec):
            continue
        usage = builder.linear(spec.quantity)[spec.rows]
        if spec.mode == "equality":
            constraints.append(usage == spec.rhs)
        else:
            constraints.append(usage / spec.scale <= spec.rhs / spec.scale)
    constraints += [builder.variables[name] == value for name, value in fixed.items()]
    return constraints


def _staleness(economy: Economy) -> float:
    capital = economy.layer("capital")
    return getattr(capital, "staleness", 1.0) or 1.0


def _evaluate(economy: Economy, fixed: dict[str, np.ndarray], time_limit: float | None = None) -> None:
    """Set the non-decision variables to their true values under the committed decisions.

    With every decision fixed, what remains are epigraph variables (missing
    success, wrong-action exposure, queueing delay, capability) and the pool
    loads. Maximising full welfare makes the value and delay epigraphs tight.
    Small extra weights on exposure and loads make those tight too, and they
    change no decision.
    """
    builder, scale = economy.builder, economy.welfare_scale
    terms = [builder.linear(name, scale) for name in sorted(builder.quantities)
             if name.startswith("welfare.")]
    if "usage.risk" in builder.quantities:
        terms.append(-builder.linear("usage.risk", scale))
    for name in ("load_prefill", "load_decode"):
        if name in builder.variables:
            terms.append(-1e-6 * cp.sum(builder.variables[name]))
    objective = cp.Maximize(sum(cp.sum(term) for term in terms))
    _run(cp.Problem(objective, _hard_constraints(economy, fixed)),
         "evaluation of the siloed allocation", time_limit)


def _run(problem: cp.Problem, label: str, time_limit: float | None = None) -> None:
    """Solve one step with Clarabel, then SCS; ``time_limit`` bounds each solver (seconds)."""
    for solver in EVALUATION_SOLVERS:
        options = {}
        if time_limit is not None:
            options[TIME_LIMIT_OPTION[solver]] = float(time_limit)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, **options)
        except cp.SolverError as error:
            logger.warning("%s: %s failed (%s)", label, solver, error)
            continue
        if problem.status == cp.OPTIMAL:
            return
        logger.info("%s: %s returned %s; trying the next solver", label, solver, problem.status)
    if problem.status == cp.USER_LIMIT:
        raise SolveError(f"{label} timed out after the time limit of {time_limit:g} s; "
                         "raise --time-limit")
    raise SolveError(f"{label} has no solution ({problem.status}); the committed decisions of "
                     "earlier layers may leave the physical capacities unable to serve the load")


def _snapshot(economy: Economy) -> Realised:
    builder = economy.builder
    parts: dict[str, float] = {}
    by_layer: dict[str, float] = {}
    for name in sorted(builder.quantities):
        if not name.startswith("welfare."):
            continue
        parts[name.removeprefix("welfare.")] = float(builder.evaluate(name)[0])
        for layer, value in builder.evaluate_by_layer(name).items():
            by_layer[layer] = by_layer.get(layer, 0.0) + float(value[0])
    for spec in economy.markets:
        if spec.mode == "price" and spec.quantity in builder.quantities:
            usage = builder.evaluate(spec.quantity)[spec.rows]
            charge = -float(np.sum(spec.price * spec.weight * usage))
            parts[f"market.{spec.name}"] = charge
            for layer, value in builder.evaluate_by_layer(spec.quantity).items():
                by_layer[layer] = by_layer.get(layer, 0.0) - float(np.sum(spec.price * spec.weight * value[spec.rows]))
    usage = {spec.name: builder.evaluate(spec.quantity)[spec.rows]
             for spec in economy.markets if spec.quantity in builder.quantities}
    variables = {name: np.array(var.value) for name, var in builder.variables.items()}
    return Realised(sum(parts.values()), parts, by_layer, usage, variables)


def load_state(economy: Economy, state: Realised) -> None:
    """Set the economy's variables to the values recorded in ``state``."""
    for name, value in state.variables.items():
        economy.builder.variables[name].value = value


def _overruns(economy: Economy, state: Realised) -> list[dict]:
    """Budget and SLA rows the realised allocation exceeds, with the excess."""
    rows = []
    for spec in economy.markets:
        if spec.mode != "budget" or spec.name not in state.usage:
            continue
        for i, label in enumerate(spec.labels):
            excess = float(state.usage[spec.name][i] - spec.rhs[i])
            if excess > 1e-6 * max(spec.scale[i], 1.0):
                rows.append({"market": label, "kind": spec.kind, "rhs": float(spec.rhs[i]),
                             "rhs_path": spec.rhs_paths[i], "usage": float(state.usage[spec.name][i]),
                             "excess": excess, "unit": spec.unit})
    return rows
