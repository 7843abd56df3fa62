"""Diagnose infeasible and unbounded instances in the economy's own terms."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from ..model.economy import Economy

logger = logging.getLogger(__name__)

SHORTFALL_TOLERANCE = 1e-7
"""Relative slack (a share of the row's scale) below which a row counts as met."""


@dataclass
class Shortfall:
    """One budget, capacity or SLA that cannot be met, and by how much."""

    market: str
    kind: str
    rhs: float
    rhs_path: str | None
    minimum: float
    shortfall: float
    unit: str
    message: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Diagnosis:
    """Cause of a missing optimum, with the changes that fix it."""

    kind: str
    message: str
    shortfalls: list[Shortfall]
    headline: str = ""
    hint: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "headline": self.headline,
                "hint": self.hint, "shortfalls": [item.as_dict() for item in self.shortfalls]}


PHYSICAL_WEIGHT = 1e3
"""Weight of a capacity row's slack relative to a budget's in the elastic relaxation."""


MAX_SINGLE_CHECKS = 40
"""Most rows tested one at a time for a single change that restores feasibility."""


def diagnose_infeasibility(economy: Economy, solver: str = "CLARABEL") -> Diagnosis:
    """Find the budgets, capacities and SLAs that cannot be met, and the changes that fix them.

    Phase one gives every budget, SLA and capacity row a non-negative slack,
    measured as a share of the row's scale, and minimises their weighted sum
    under every layer constraint and the routing rows. Capacity rows (serving
    loads, GPUs) weigh :data:`PHYSICAL_WEIGHT` times more than budgets and
    SLAs, so the relaxation blames a budget before it bends physics.

    Phase two tests single changes: for each budget or SLA row that phase
    one relaxed, and for every scalar budget, it minimises that row's usage
    with every other row kept. A finite minimum above the right-hand side is
    a single change that restores feasibility ("raise the risk budget to at
    least X"). When no single change works, the report lists the rows phase
    one relaxed, each with its minimum usage while the others keep their
    phase-one slack.
    """
    specs = [spec for spec in economy.markets if spec.is_constraint]
    elastic = _Elastic(economy, specs)
    if not elastic.solve(solver, elastic.weighted_violation()):
        return Diagnosis("infeasible", "no allocation meets every budget and capacity, and the "
                         f"elastic relaxation did not solve ({elastic.status})", [])
    violated = [(elastic.specs[name], i, float(value)) for name, slack in elastic.slacks.items()
                for i, value in enumerate(np.atleast_1d(slack.value))
                if value > SHORTFALL_TOLERANCE]

    singles = _single_changes(elastic, solver, violated)
    hint = _defer_hint(economy)
    if singles:
        headline = "infeasible: any one of these changes restores feasibility:"
        summary = "; ".join(item.message for item in singles)
        return Diagnosis("infeasible", f"{headline} {summary}{hint}", singles, headline,
                         hint.removeprefix(". "))

    shortfalls = []
    for spec, i, _ in violated:
        others = {(other.name, j): value for other, j, value in violated if (other.name, j) != (spec.name, i)}
        minimum = elastic.minimum_usage(solver, spec, i, others)
        if minimum is not None and minimum > spec.rhs[i] + SHORTFALL_TOLERANCE * spec.scale[i]:
            shortfalls.append(_shortfall(economy, spec, i, minimum - float(spec.rhs[i])))
    headline = "infeasible: these budgets and capacities cannot all be met together:"
    summary = "; ".join(item.message for item in shortfalls) or "(the relaxation found no single culprit)"
    return Diagnosis("infeasible", f"{headline} {summary}{hint}", shortfalls, headline,
                     hint.removeprefix(". "))


def _single_changes(elastic: _Elastic, solver: str, violated) -> list[Shortfall]:
    """Return the rows whose right-hand side alone, raised, makes the instance feasible."""
    candidates = [(spec, i) for spec, i, _ in violated if spec.mode == "budget"]
    candidates += [(spec, 0) for spec in elastic.specs.values()
                   if spec.mode == "budget" and len(spec.rows) == 1 and (spec, 0) not in candidates]
    # Rows that bind in the relaxed solution take part in the conflict too.
    for name, usage in elastic.usage.items():
        spec = elastic.specs[name]
        if spec.mode != "budget" or usage.value is None:
            continue
        rhs = np.atleast_1d(elastic.rhs[name].value)
        for i in np.flatnonzero(np.atleast_1d(usage.value) >= rhs - 1e-6):
            if (spec, int(i)) not in candidates:
                candidates.append((spec, int(i)))
    found = []
    for spec, i in candidates[:MAX_SINGLE_CHECKS]:
        minimum = elastic.minimum_usage(solver, spec, i, {})
        if minimum is not None and minimum > spec.rhs[i] + SHORTFALL_TOLERANCE * spec.scale[i]:
            found.append(_shortfall(elastic.economy, spec, i, minimum - float(spec.rhs[i])))
    return found


class _Elastic:
    """The program with a slack on every budget, SLA and capacity row."""

    def __init__(self, economy: Economy, specs):
        self.economy, self.status = economy, ""
        self.specs = {spec.name: spec for spec in specs}
        self.slacks: dict = {}
        self.usage: dict = {}
        self.rhs: dict = {}
        self.routing: list[cp.Constraint] = []
        for spec in specs:
            usage, rhs = economy.market_constraints[spec.name].args
            if spec.mode == "equality":
                self.routing.append(usage == rhs)
                continue
            self.usage[spec.name], self.rhs[spec.name] = usage, rhs
            self.slacks[spec.name] = cp.Variable(len(spec.rows), nonneg=True, name=f"elastic.{spec.name}")

    def weighted_violation(self) -> cp.Expression:
        terms = []
        for name, slack in self.slacks.items():
            spec = self.specs[name]
            weight = PHYSICAL_WEIGHT if spec.mode == "balance" or spec.kind == "gpu" else 1.0
            terms.append(weight * cp.sum(slack))
        return cp.sum(cp.hstack(terms))

    def solve(self, solver: str, objective: cp.Expression, extra=()) -> bool:
        constraints = list(self.economy.builder.constraints) + self.routing + list(extra)
        constraints += [self.usage[name] <= self.rhs[name] + slack
                        for name, slack in self.slacks.items()]
        problem = cp.Problem(cp.Minimize(objective), constraints)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver)
        except cp.SolverError as error:
            self.status = f"failed: {error}"
            logger.warning("elastic relaxation failed: %s", error)
            return False
        self.status = problem.status
        return problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)

    def minimum_usage(self, solver: str, spec, row: int, allowed: dict) -> float | None:
        """Minimise one row's usage with the other rows met (plus their ``allowed`` slack)."""
        fixed = []
        for name, slack in self.slacks.items():
            bound = np.zeros(len(self.specs[name].rows))
            for (other, j), value in allowed.items():
                if other == name:
                    bound[j] = value
            if name == spec.name:
                bound[row] = np.inf
            finite = np.flatnonzero(np.isfinite(bound))
            if len(finite):
                fixed.append(slack[finite] <= bound[finite])
        target = self.usage[spec.name][row]
        if not self.solve(solver, target, fixed):
            return None
        return float(target.value * spec.scale[row])


def _shortfall(economy: Economy, spec, row: int, amount: float) -> Shortfall:
    rhs = float(spec.rhs[row])
    minimum = rhs + amount
    label, path = spec.labels[row], spec.rhs_paths[row]
    if spec.kind == "latency":
        task = label[label.index("[") + 1:-1]
        text = (f"the latency SLA of {task} ({rhs:.4g} s) cannot be met: the minimum achievable mean "
                f"service latency is {minimum:.4g} s; raise {path} to at least {minimum:.4g}")
    elif spec.kind == "gpu":
        text = (f"{label} needs {minimum:.4g} GPUs but has {rhs:.4g}; "
                f"raise {path} to at least {minimum:.4g} or rent GPUs with a priced gpu market")
    elif spec.mode == "balance":
        text = (f"{label} capacity is short by {amount:.4g} {spec.unit} per period; "
                "add GPUs to the pool or raise its per-GPU throughput")
    else:
        text = (f"{label} budget {rhs:.4g} {spec.unit} cannot be met: the minimum achievable "
                f"{spec.description} is {minimum:.4g} {spec.unit}; raise {path} to at least {minimum:.4g}")
    return Shortfall(label, spec.kind, rhs, path, minimum, amount, spec.unit, text)


def _defer_hint(economy: Economy) -> str:
    disabled = [task for task, enabled in zip(economy.data.tasks, economy.data.defer_enabled, strict=True)
                if not enabled]
    if not disabled:
        return ""
    return (". Deferral to a human is off for " + ", ".join(disabled[:5])
            + (" and others" if len(disabled) > 5 else "")
            + "; set defer.enabled=true to let those requests go to a human instead")


def unbounded_directions(economy: Economy) -> list[str]:
    """Return the directions in which welfare keeps rising without an optimum being attained.

    Welfare is bounded above by the value of every request succeeding, so
    tokenomy's programs are never truly unbounded. A solver may still fail to
    converge when a variable can grow without limit at no cost; these are
    the cases checked.
    """
    data, messages = economy.data, []
    agent = economy.layer("agent")
    k, a = agent.index.pair_option, agent.index.pair_use
    share_in = data.input_share[a]
    models = data.option_model[k]
    list_price = share_in * data.price_input[models] + (1 - share_in) * data.price_output[models]
    unpooled = data.model_pool[models] < 0
    latency_priced = any(spec.kind == "latency" for spec in economy.markets)
    free = (list_price == 0) & unpooled & ~latency_priced & ~np.isfinite(data.fixed_tokens[k, a])
    for j in np.flatnonzero(free)[:5]:
        task, model = data.option_label(int(k[j]))
        messages.append(f"tokens of use {data.uses[a[j]]} on model {model} for task {task} cost nothing "
                        f"and no pool or latency market limits them; give models.{model}.prices a "
                        "positive price or assign the model to a pool")
    for spec in economy.markets:
        if spec.kind == "gpu" and spec.mode == "price" and np.any(spec.price == 0):
            delayed = [name for name, pool in economy.instance.pools.items() if pool.delay is not None]
            if delayed:
                messages.append(f"markets.{spec.name}.price is 0, so GPUs are free and keep cutting "
                                f"queueing delay in {', '.join(delayed)}; give GPUs a positive price")
    return messages
