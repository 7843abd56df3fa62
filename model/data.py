"""Numpy arrays compiled from an instance: the index sets and their data.

Units inside these arrays are the instance's units except list prices, which
are converted from USD per million tokens to USD per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .schema import (
    CobbDouglasCurve,
    ConstantCurve,
    EffortCurve,
    Instance,
    LeontiefCurve,
    SaturatingCurve,
)
from .validation import quality_curve

PER_MILLION = 1e-6
DEFAULT_TOKEN_SCALE = 1000.0
"""Token scale (tokens per request) for uses that a curve does not name."""

FAMILIES = ("constant", "saturating", "cobb_douglas", "leontief")
"""Families the agent layer formulates itself. Other families come from the registry."""


@dataclass
class EconomyData:
    """Index sets and data arrays of one instance.

    Options are the (task, model) pairs for which the model has a quality
    curve. Arrays indexed ``[k]`` run over options, ``[k, a]`` over options
    and token uses, ``[x]`` over tasks, ``[m]`` over models, ``[p]`` over pools.
    """

    period: float
    tasks: list[str]
    models: list[str]
    uses: list[str]
    reviews: list[str]
    pools: list[str]
    # tasks
    volume: np.ndarray
    value: np.ndarray
    context: np.ndarray
    loss: np.ndarray
    sla: np.ndarray
    sla_path: list[str | None]
    reuse: np.ndarray
    cache_quality_loss: np.ndarray
    defer_enabled: np.ndarray
    defer_success: np.ndarray
    defer_cost: np.ndarray
    defer_latency: np.ndarray
    # models (USD per token, seconds per token)
    price_input: np.ndarray
    price_output: np.ndarray
    price_cached: np.ndarray
    seconds_per_output: np.ndarray
    seconds_per_input: np.ndarray
    model_pool: np.ndarray
    # options
    option_task: np.ndarray
    option_model: np.ndarray
    family: np.ndarray
    max_success: np.ndarray
    rate: np.ndarray
    wrong_action: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    in_curve: np.ndarray
    fixed_tokens: np.ndarray
    # uses
    input_share: np.ndarray
    risk_scale: np.ndarray
    review_risk_scale: np.ndarray
    review_wage: np.ndarray
    footprint: dict[str, np.ndarray] = field(default_factory=dict)
    review_footprint: dict[str, np.ndarray] = field(default_factory=dict)
    # tenants: declared under ``tenants``, or else named by the tasks (task_tenant -1: none)
    tenants: list[str] = field(default_factory=list)
    task_tenant: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    # the quality entry of each option (families from extensions read their parameters here)
    curves: list = field(default_factory=list)

    @property
    def option_count(self) -> int:
        return len(self.option_task)

    def option_label(self, k: int) -> tuple[str, str]:
        return self.tasks[self.option_task[k]], self.models[self.option_model[k]]


def effort_groups(data: EconomyData, options: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split options into those whose effort is bounded input by input and Cobb-Douglas ones.

    Returns boolean masks over ``options``: ``linear`` (saturating, Leontief and
    single-input Cobb-Douglas curves: effort <= each input over its scale) and
    ``cobb`` (Cobb-Douglas curves with several inputs: a geometric mean).
    """
    families = data.family[options]
    support = data.in_curve[options]
    cobb = (families == "cobb_douglas") & (support.sum(axis=1) > 1)
    linear = np.isin(families, ["saturating", "leontief", "cobb_douglas"]) & ~cobb
    return linear, cobb


def compile_data(instance: Instance) -> EconomyData:
    """Compile a validated instance into :class:`EconomyData`."""
    tasks = list(instance.tasks)
    models = list(instance.models)
    uses = [name for name, use in instance.uses.items() if use.kind == "tokens"]
    reviews = [name for name, use in instance.uses.items() if use.kind == "review"]
    pools = list(instance.pools)
    latency_market = next(
        (name for name, market in instance.markets.items() if market.kind == "latency"), None
    )
    default_sla = instance.markets[latency_market].budget if latency_market else None

    sla = np.full(len(tasks), np.nan)
    sla_path: list[str | None] = [None] * len(tasks)
    for x, name in enumerate(tasks):
        task = instance.tasks[name]
        if task.latency_sla is not None:
            sla[x], sla_path[x] = task.latency_sla, f"tasks.{name}.latency_sla"
        elif default_sla is not None:
            sla[x], sla_path[x] = default_sla, f"markets.{latency_market}.budget"

    defers = [instance.tasks[name].defer or instance.defer for name in tasks]
    task_array = _task_arrays(instance, tasks)
    model_array = _model_arrays(instance, models, pools)
    option_array = _option_arrays(instance, tasks, models, uses)
    use_objects = [instance.uses[name] for name in uses]
    review_objects = [instance.uses[name] for name in reviews]
    resources = [name for name, market in instance.markets.items() if market.kind == "resource"]
    tenants = tenant_names(instance)

    return EconomyData(
        period=instance.period_seconds,
        tasks=tasks, models=models, uses=uses, reviews=reviews, pools=pools,
        sla=sla, sla_path=sla_path,
        defer_enabled=np.array([float(d.enabled) for d in defers]),
        defer_success=np.array([d.success for d in defers]),
        defer_cost=np.array([d.cost for d in defers]),
        defer_latency=np.array([d.latency for d in defers]),
        input_share=np.array([u.input_share for u in use_objects]),
        risk_scale=np.array([u.risk_scale or np.inf for u in use_objects]),
        review_risk_scale=np.array([u.risk_scale or np.inf for u in review_objects]),
        review_wage=np.array([u.wage for u in review_objects]),
        footprint={r: np.array([u.footprint.get(r, 0.0) for u in use_objects]) for r in resources},
        review_footprint={
            r: np.array([u.footprint.get(r, 0.0) for u in review_objects]) for r in resources
        },
        tenants=tenants,
        task_tenant=np.array([tenants.index(instance.tasks[name].tenant)
                              if instance.tasks[name].tenant in tenants else -1 for name in tasks],
                             dtype=int),
        **task_array, **model_array, **option_array,
    )


def tenant_names(instance: Instance) -> list[str]:
    """Return the declared tenants, or the tenants the tasks name in order of appearance."""
    if instance.tenants:
        return list(instance.tenants)
    return list(dict.fromkeys(task.tenant for task in instance.tasks.values() if task.tenant))


def _task_arrays(instance: Instance, tasks: list[str]) -> dict[str, np.ndarray]:
    items = [instance.tasks[name] for name in tasks]
    return {
        "volume": np.array([t.volume for t in items]),
        "value": np.array([t.value for t in items]),
        "context": np.array([t.context_tokens for t in items]),
        "loss": np.array([t.loss for t in items]),
        "reuse": np.array([t.prefix_reuse for t in items]),
        "cache_quality_loss": np.array([t.cache_quality_loss for t in items]),
    }


def _model_arrays(instance: Instance, models: list[str], pools: list[str]) -> dict[str, np.ndarray]:
    items = [instance.models[name] for name in models]
    cached = [
        m.prices.input if m.prices.cached_input is None else m.prices.cached_input for m in items
    ]
    return {
        "price_input": np.array([m.prices.input for m in items]) * PER_MILLION,
        "price_output": np.array([m.prices.output for m in items]) * PER_MILLION,
        "price_cached": np.array(cached) * PER_MILLION,
        "seconds_per_output": 1.0 / np.array([m.output_tokens_per_second for m in items]),
        "seconds_per_input": 1.0 / np.array([m.prefill_tokens_per_second for m in items]),
        "model_pool": np.array([pools.index(m.pool) if m.pool else -1 for m in items], dtype=int),
    }


def _option_arrays(
    instance: Instance, tasks: list[str], models: list[str], uses: list[str]
) -> dict[str, np.ndarray]:
    rows = []
    for x, task_name in enumerate(tasks):
        for m, model_name in enumerate(models):
            curve = quality_curve(instance, task_name, model_name)
            if curve is not None:
                rows.append((x, m, curve))
    count, width = len(rows), len(uses)
    scale = np.full((count, width), DEFAULT_TOKEN_SCALE)
    weight = np.zeros((count, width))
    in_curve = np.zeros((count, width), dtype=bool)
    fixed = np.full((count, width), np.nan)
    family = np.empty(count, dtype=object)
    max_success, rate, wrong = np.zeros(count), np.ones(count), np.zeros(count)
    position = {name: a for a, name in enumerate(uses)}
    risk_scale = [instance.uses[name].risk_scale for name in uses]
    for a, value in enumerate(risk_scale):
        if value:
            scale[:, a] = value

    for k, (_, _, curve) in enumerate(rows):
        family[k] = curve.curve
        wrong[k] = curve.wrong_action
        if isinstance(curve, ConstantCurve):
            max_success[k] = curve.success
            for use, tokens in curve.tokens.items():
                a = position[use]
                fixed[k, a] = tokens
                scale[k, a] = tokens if tokens > 0 else DEFAULT_TOKEN_SCALE
            continue
        max_success[k], rate[k] = curve.max_success, curve.rate
        if isinstance(curve, SaturatingCurve):
            a = position[curve.use]
            scale[k, a], weight[k, a], in_curve[k, a] = curve.scale, 1.0, True
        elif isinstance(curve, CobbDouglasCurve):
            total = sum(curve.weights.values())
            for use, beta in curve.weights.items():
                a = position[use]
                scale[k, a], weight[k, a], in_curve[k, a] = curve.scales[use], beta / total, True
        elif isinstance(curve, (LeontiefCurve, EffortCurve)):
            # An extension's family also bounds effort through its token scales.
            for use, tokens in curve.scales.items():
                a = position[use]
                scale[k, a], weight[k, a], in_curve[k, a] = tokens, 1.0, True

    return {
        "option_task": np.array([r[0] for r in rows], dtype=int),
        "option_model": np.array([r[1] for r in rows], dtype=int),
        "family": family, "max_success": max_success, "rate": rate, "wrong_action": wrong,
        "scale": scale, "weight": weight, "in_curve": in_curve, "fixed_tokens": fixed,
        "curves": [r[2] for r in rows],
    }
