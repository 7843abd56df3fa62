"""Cross-reference checks that the field-level schema cannot express."""

from __future__ import annotations

from .errors import MISSING, FieldProblem
from .schema import CobbDouglasCurve, ConstantCurve, Instance, LeontiefCurve, SaturatingCurve
from .views import VIEW_KEYS

SINGLE_MARKET_KINDS = ("compute", "latency", "risk", "oversight", "gpu")

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
    if isinstance(curve, LeontiefCurve):
        return list(curve.scales)
    return []


def cross_check(instance: Instance) -> list[FieldProblem]:
    """Return every broken reference and inconsistent entry of a schema-valid instance."""
    problems: list[FieldProblem] = []
    problems += _check_quality(instance)
    problems += _check_pools(instance)
    problems += _check_markets(instance)
    problems += _check_tasks(instance)
    problems += _check_views(instance)
    return problems


def _check_views(instance: Instance) -> list[FieldProblem]:
    problems = []
    for layer, keys in instance.views.items():
        unknown = sorted(set(keys) - VIEW_KEYS)
        if unknown:
            problems.append(FieldProblem(
                f"views.{layer}", keys, f"names unknown prices {', '.join(unknown)}",
                "use any of " + ", ".join(sorted(VIEW_KEYS))))
    return problems


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
    seen: dict[str, str] = {}
    for market_name, market in instance.markets.items():
        reserved_for = RESERVED_MARKET_NAMES.get(market_name)
        if market_name in RESERVED_MARKET_NAMES and market.kind != reserved_for:
            problems.append(FieldProblem(
                f"markets.{market_name}", market_name,
                "is the name of a market tokenomy defines itself"
                + (f" (kind {reserved_for})" if reserved_for else ""),
                "give this market another name"))
        if market.kind in SINGLE_MARKET_KINDS:
            if market.kind in seen:
                problems.append(FieldProblem(
                    f"markets.{market_name}.kind", market.kind,
                    f"repeats the market kind of markets.{seen[market.kind]}",
                    "keep one market of each kind except 'resource'"))
            seen[market.kind] = market_name
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
    if "oversight" in seen and not any(u.kind == "review" for u in instance.uses.values()):
        problems.append(FieldProblem(
            f"markets.{seen['oversight']}", "oversight", "has no review use to constrain",
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
