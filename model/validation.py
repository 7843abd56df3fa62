"""Cross-reference checks that the field-level schema cannot express."""

from __future__ import annotations

from collections.abc import Callable

from .errors import MISSING, ExtensionError, FieldProblem
from .registry import REGISTRY
from .schema import (
    CobbDouglasCurve,
    ConstantCurve,
    EffortCurve,
    Instance,
    LeontiefCurve,
    SaturatingCurve,
)
from .views import default_views, view_keys

SINGLE_MARKET_KINDS = ("compute", "latency", "risk", "oversight", "gpu")
"""Built-in kinds of which an instance declares at most one market per scope.

The check itself reads ``single`` from the registry, which also covers kinds of extensions.
"""

RESERVED_MARKET_NAMES: dict[str, str | None] = {
    "routing": None, "prefill": None, "decode": None, "kv": None, "gpu": "gpu", "latency": "latency",
}
"""Names of implicit markets; ``gpu`` and ``latency`` may name a market of that kind."""


def curve_uses(curve: object) -> list[str]:
    """Return the agent uses a quality curve refers to."""
    if isinstance(curve, ConstantCurve):
        return list(curve.tokens)
    if isinstance(curve, SaturatingCurve):
        return [curve.use]
    if isinstance(curve, CobbDouglasCurve):
        return sorted(set(curve.weights) | set(curve.scales))
    if isinstance(curve, (LeontiefCurve, EffortCurve)):
        return list(curve.scales)
    return []


def cross_check(instance: Instance) -> list[FieldProblem]:
    """Return every broken reference and inconsistent entry of a schema-valid instance."""
    problems: list[FieldProblem] = []
    problems += _check_quality(instance)
    problems += _check_pools(instance)
    problems += _check_markets(instance)
    problems += _check_tasks(instance)
    problems += _check_tenants(instance)
    problems += _check_views(instance)
    problems += _check_extensions(instance)
    return problems


def _check_views(instance: Instance) -> list[FieldProblem]:
    problems = []
    layers = default_views()
    keys_allowed = view_keys()
    for layer, keys in instance.views.items():
        if layer not in layers:
            problems.append(FieldProblem(
                f"views.{layer}", layer, "is not a layer",
                f"use one of: {', '.join(layers)}; an extension's layer must be registered"))
            continue
        unknown = sorted(set(keys) - keys_allowed)
        if unknown:
            problems.append(FieldProblem(
                f"views.{layer}", keys, f"names unknown prices {', '.join(unknown)}",
                "use any of " + ", ".join(sorted(keys_allowed))))
    return problems


def _check_tenants(instance: Instance) -> list[FieldProblem]:
    """Check that tasks and per-tenant budgets name tenants, and that scoped markets have some."""
    problems = []
    declared = set(instance.tenants)
    named = {task.tenant for task in instance.tasks.values() if task.tenant}
    tenants = declared or named
    listing = ", ".join(sorted(tenants)) or "(no task names a tenant)"
    if declared:
        for task_name, task in instance.tasks.items():
            if task.tenant is not None and task.tenant not in declared:
                problems.append(FieldProblem(
                    f"tasks.{task_name}.tenant", task.tenant, "is not a declared tenant",
                    f"use one of: {listing}, or add it under tenants"))
    for market_name, market in instance.markets.items():
        if market.scope != "tenant":
            continue
        kind = REGISTRY.market_kind(market.kind)
        if kind.tenant_quantity is None:
            scoped = sorted(name for name, entry in REGISTRY.market_kinds().items()
                            if entry.tenant_quantity is not None)
            problems.append(FieldProblem(
                f"markets.{market_name}.scope", "tenant",
                f"is not supported by markets of kind {market.kind}",
                f"use scope: tenant with a kind that splits by tenant ({', '.join(scoped)}), "
                "or remove scope"))
        if not tenants:
            problems.append(FieldProblem(
                f"markets.{market_name}.scope", "tenant", "needs tenants, and no task names one",
                "set tasks.<task>.tenant on the tasks each tenant owns"))
        for tenant in market.budgets:
            if tenant not in tenants:
                problems.append(FieldProblem(
                    f"markets.{market_name}.budgets.{tenant}", tenant, "is not a tenant",
                    f"use one of: {listing}"))
    return problems


def _check_extensions(instance: Instance) -> list[FieldProblem]:
    """Run the cross-reference checks of the extension layers and market kinds in use."""
    problems = []
    for name, settings in instance.layers.items():
        entry = REGISTRY.layer(name)
        if entry is not None and entry.check is not None:
            problems += _run_check(entry.source, f"check of layer {name}", entry.check,
                                   instance, settings)
    for name, market in instance.markets.items():
        kind = REGISTRY.market_kind(market.kind)
        if kind.check is not None:
            problems += _run_check(kind.source, f"check of market kind {kind.name}", kind.check,
                                   instance, name, market.settings)
    return problems


def _run_check(source: str, hook_label: str, check: Callable[..., list[FieldProblem]],
               *arguments) -> list[FieldProblem]:
    try:
        found = list(check(*arguments) or [])
    except Exception as error:
        raise ExtensionError(source, [FieldProblem(
            f"({hook_label})", type(error).__name__, f"failed: {error}",
            "fix the extension's check function")]) from error
    if not all(isinstance(item, FieldProblem) for item in found):
        raise ExtensionError(source, [FieldProblem(
            f"({hook_label})", repr(found)[:80], "returned something other than FieldProblem items",
            "return a list of tokenomy.model.errors.FieldProblem")])
    return found


def _check_quality(instance: Instance) -> list[FieldProblem]:
    problems = []
    groups = {task.group for task in instance.tasks.values() if task.group}
    keys = set(instance.tasks) | groups | {"default"}
    token_uses = {name for name, use in instance.uses.items() if use.kind == "tokens"}
    for model_name, model in instance.models.items():
        for key, curve in model.quality.items():
            path = f"models.{model_name}.quality.{key}"
            if key not in keys:
                problems.append(FieldProblem(
                    path, key, "is not a task name, a task group or 'default'",
                    "use one of: " + ", ".join(sorted(keys))))
            for use in curve_uses(curve):
                if use not in token_uses:
                    problems.append(FieldProblem(
                        path, use, f"names the use '{use}', which is not a token use",
                        "use one of the token uses: " + ", ".join(sorted(token_uses))))
            if isinstance(curve, CobbDouglasCurve):
                if set(curve.weights) != set(curve.scales):
                    problems.append(FieldProblem(
                        path + ".scales", sorted(curve.scales),
                        f"must list the same uses as weights ({sorted(curve.weights)})",
                        "give one scale per weighted use"))
    return problems


def _check_pools(instance: Instance) -> list[FieldProblem]:
    problems = []
    pools = set(instance.pools)
    rented = any(market.kind == "gpu" and market.price is not None
                 for market in instance.markets.values())
    for model_name, model in instance.models.items():
        if model.pool is not None and model.pool not in pools:
            problems.append(FieldProblem(
                f"models.{model_name}.pool", model.pool, "is not a defined pool",
                "use one of: " + (", ".join(sorted(pools)) or "(define pools first)")))
    for pool_name, pool in instance.pools.items():
        if pool.gpus is None and not rented:
            problems.append(FieldProblem(
                f"pools.{pool_name}.gpus", MISSING, "is required unless GPUs are rented",
                "give the pool's GPU count, or add a market of kind gpu with a price"))
    for pool_name in instance.capital.cache:
        if pool_name not in pools:
            problems.append(FieldProblem(
                f"capital.cache.{pool_name}", pool_name, "is not a defined pool",
                "key each cache by the pool it serves"))
    training = instance.capital.training
    if training is not None:
        if training.pool not in pools:
            problems.append(FieldProblem(
                "capital.training.pool", training.pool, "is not a defined pool",
                "use one of: " + (", ".join(sorted(pools)) or "(define pools first)")))
        if set(training.weights) != set(training.scales):
            problems.append(FieldProblem(
                "capital.training.scales", sorted(training.scales),
                f"must list the same inputs as weights ({sorted(training.weights)})",
                "give one scale per weighted training input"))
    return problems


def _check_markets(instance: Instance) -> list[FieldProblem]:
    problems = []
    seen: dict[tuple[str, str], str] = {}
    for market_name, market in instance.markets.items():
        reserved_for = RESERVED_MARKET_NAMES.get(market_name)
        if market_name in RESERVED_MARKET_NAMES and market.kind != reserved_for:
            problems.append(FieldProblem(
                f"markets.{market_name}", market_name,
                "is the name of a market tokenomy defines itself"
                + (f" (kind {reserved_for})" if reserved_for else ""),
                "give this market another name"))
        if REGISTRY.market_kind(market.kind).single:
            key = (market.kind, market.scope)
            if key in seen:
                problems.append(FieldProblem(
                    f"markets.{market_name}.kind", market.kind,
                    f"repeats the market kind of markets.{seen[key]}",
                    "keep one market of each kind (one per scope) except kinds such as "
                    "'resource' that allow several"))
            seen[key] = market_name
    resources = {name for name, market in instance.markets.items() if market.kind == "resource"}
    for use_name, use in instance.uses.items():
        for market_name in use.footprint:
            if market_name not in resources:
                problems.append(FieldProblem(
                    f"uses.{use_name}.footprint.{market_name}", market_name,
                    "is not a market of kind 'resource'",
                    "add it under markets with kind: resource, or remove the footprint"))
        if use.kind == "review" and use.risk_scale is None:
            problems.append(FieldProblem(
                f"uses.{use_name}.risk_scale", MISSING,
                "is required for a review use, which only buys risk down",
                "give the review minutes per request that cut risk by a factor e"))
    oversight = next((name for (kind, _), name in seen.items() if kind == "oversight"), None)
    if oversight and not any(u.kind == "review" for u in instance.uses.values()):
        problems.append(FieldProblem(
            f"markets.{oversight}", "oversight", "has no review use to constrain",
            "add a use with kind: review, or remove the market"))
    return problems


def _check_tasks(instance: Instance) -> list[FieldProblem]:
    problems = []
    for task_name, task in instance.tasks.items():
        served = any(_curve_for(model.quality, task_name, task.group) is not None
                     for model in instance.models.values())
        defer = task.defer or instance.defer
        if not served and not defer.enabled:
            problems.append(FieldProblem(
                f"tasks.{task_name}", task_name, "has no model with a quality curve for it "
                "and deferral is off", "add a quality entry for it (or 'default') to a model, "
                "or enable defer"))
    return problems


def _curve_for(quality: dict, task_name: str, group: str | None) -> object | None:
    for key in (task_name, group, "default"):
        if key is not None and key in quality:
            return quality[key]
    return None


def quality_curve(instance: Instance, task_name: str, model_name: str) -> object | None:
    """Return the curve of ``model_name`` for ``task_name`` (by task, then group, then default)."""
    task = instance.tasks[task_name]
    return _curve_for(instance.models[model_name].quality, task_name, task.group)


SPAN_LIMIT = 1e8
"""Ratio of largest to smallest non-zero value of one field above which a warning is issued."""

_COLLECTIONS = {("tasks",), ("models",), ("uses",), ("pools",), ("markets",), ("capital", "cache")}


def scale_warnings(instance: Instance) -> list[str]:
    """Return a warning for every field whose non-zero values span more than SPAN_LIMIT.

    Values of one field (say ``tasks.*.volume``) that differ by eight orders
    of magnitude usually mean a unit mistake, and they strain the solver even
    after tokenomy's internal rescaling.
    """
    extremes: dict[str, tuple[float, str, float, str]] = {}
    for path, value in _numeric_leaves(instance.model_dump(exclude={"metadata"}), ()):
        size = abs(value)
        if size == 0:
            continue
        pattern = _pattern(path)
        dotted = ".".join(path)
        low, low_path, high, high_path = extremes.get(pattern, (size, dotted, size, dotted))
        if size < low:
            low, low_path = size, dotted
        if size > high:
            high, high_path = size, dotted
        extremes[pattern] = (low, low_path, high, high_path)
    return [
        f"values of {pattern} span {low:.3g} ({low_path}) to {high:.3g} ({high_path}), "
        f"more than a factor of {SPAN_LIMIT:.0e}; check their units"
        for pattern, (low, low_path, high, high_path) in sorted(extremes.items())
        if high / low > SPAN_LIMIT
    ]


def _numeric_leaves(node, path):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_leaves(value, (*path, str(key)))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, float(node)


def _pattern(path: tuple[str, ...]) -> str:
    parts = list(path)
    for index in range(len(parts)):
        prefix = tuple(parts[:index])
        is_quality = len(prefix) == 3 and prefix[0] == "models" and prefix[2] == "quality"
        if prefix in _COLLECTIONS or is_quality:
            parts[index] = "*"
    return ".".join(parts)
