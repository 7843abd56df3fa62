"""Build an instance from public data files named in a recipe.

A recipe is a small YAML file. It names the source files (paths relative to
the recipe, or absolute), maps quality-matrix runs to price-list models, and
gives every number that no public source provides (task values, losses,
token budgets, GPU counts, budgets of the markets). :func:`build_instance`
runs the importers and returns an instance mapping that passes
:func:`tokenomy.model.loader.validate`. Its ``metadata`` lists each source
file with its licence, attribution and what was derived from it, the rules
used to derive figures, and every assumed number with its instance path.

Quality calibration: a model's curve for a task group passes through the
measured success rate r of its run on that group at the typical token budget.
With the budgets as token scales, the curve's effort at the budget is 1, so
success there is ``max_success * (1 - exp(-rate))``. The importer sets
``max_success = r / (1 - exp(-rate))``; when that exceeds 1 it sets
``max_success = 1`` and ``rate = -ln(1 - r)`` instead. A run with r = 0 on a
group gets no curve for it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import MISSING, DataError
from ..loader import validate
from ..schema import Name
from ._files import file_name, read_text, significant
from .prices import PriceList, read_prices
from .quality import DEFAULT_GROUPS, DEFAULT_THRESHOLDS, QualitySummary, import_quality
from .serving import ServingFigures, import_distserve, import_splitwise, kv_tokens_per_gpu
from .traces import (
    DEFAULT_BYTES_PER_TOKEN,
    CacheCurve,
    PrefixReuse,
    TraceClasses,
    cache_curve,
    derive_task_classes,
    prefix_reuse,
    read_trace,
)

logger = logging.getLogger(__name__)

Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
MAX_SUCCESS_RATE = 0.999
"""Largest measured rate a curve is calibrated to (a rate of 1 would need an infinite curve rate)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SourceFile(Strict):
    file: str = Field(description="Path of the data file, relative to the recipe or absolute.")
    licence: str = Field(description="Licence of the data file, e.g. CC-BY-4.0.")
    attribution: str = Field(description="Attribution line the licence requires.")


class TraceRecipe(SourceFile):
    format: Literal["azure", "mooncake"] | None = None
    classes: int = Field(3, ge=1, le=50)
    by: Literal["input", "output", "total"] = "input"
    duration_seconds: Positive | None = None


class PriceRecipe(SourceFile):
    as_of: str = Field(description="ISO 8601 timestamp at which conditional prices are resolved.")
    prompt_tokens: int | None = Field(None, ge=0, description="Prompt length that selects a tier.")


class QualityRecipe(SourceFile):
    subset_column: str | None = None
    thresholds: list[Share] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    groups: list[Name] = Field(default_factory=lambda: list(DEFAULT_GROUPS))
    min_attempts: int = Field(3, ge=1)
    curve: Literal["cobb_douglas", "saturating"] = "cobb_douglas"
    rate: Positive = Field(2.0, description="Curve rate kappa before calibration (assumed).")
    use: Name | None = Field(None, description="Use driving a saturating curve.")
    wrong_action_per_failure: Share = Field(
        0.0, description="Wrong-action probability per failed request (assumed).")


class KvCapacity(Strict):
    gpu_memory_gb: Positive
    weights_gb: Positive
    bytes_per_token: Positive = DEFAULT_BYTES_PER_TOKEN
    usable_share: Share = 0.9


class ServingRecipe(SourceFile):
    format: Literal["splitwise", "distserve"] | None = None
    kv_file: str | None = None
    kv_licence: str | None = None
    kv_attribution: str | None = None
    model: str | None = None
    hardware: str | None = None
    tensor_parallel: int | None = Field(None, ge=1)
    pipeline_parallel: int = Field(1, ge=1)
    prompt_size: int = Field(2048, ge=1)
    prefill_batch_size: int = Field(1, ge=1)
    decode_batch_size: int = Field(16, ge=1)
    decode_context: int | None = Field(None, ge=1)
    kv_capacity: KvCapacity | None = None


class PoolRecipe(Strict):
    gpus: Positive
    value_of_time: NonNegative
    serving: ServingRecipe


class CacheRecipe(SourceFile):
    pool: Name
    bytes_per_token: Positive = DEFAULT_BYTES_PER_TOKEN
    points: int = Field(12, ge=2, le=40)
    cost: NonNegative = Field(description="USD per GB of cache per period (assumed).")
    max_size: Positive = Field(description="Largest cache that may be bought (GB, assumed).")


class TaskRecipe(Strict):
    name: Name
    group: Name
    value: NonNegative
    loss: NonNegative = 0.0
    latency_sla: Positive | None = None
    tenant: Name | None = None


class UseRecipe(Strict):
    kind: Literal["tokens"] = "tokens"
    input_share: Share = 0.5
    action: Literal["reversible", "irreversible"] = "reversible"
    risk_scale: Positive | None = None
    budget: Positive = Field(description="Typical tokens per request at which quality is calibrated.")
    weight: Positive = Field(1.0, description="Cobb-Douglas weight of the use.")


class ModelRecipe(Strict):
    run: str = Field(description="Column of the quality matrix.")
    provider: str | None = Field(None, description="Provider id in the price list.")
    model: str = Field(description="Model id in the price list.")
    pool: Name | None = None
    output_tokens_per_second: Positive | None = None
    prefill_tokens_per_second: Positive | None = None


class Recipe(Strict):
    recipe_version: Literal[1]
    name: str
    description: str | None = None
    period_seconds: Positive = 3600.0
    traces: TraceRecipe
    prices: PriceRecipe
    quality: QualityRecipe
    tasks: list[TaskRecipe] = Field(min_length=1)
    uses: dict[Name, UseRecipe] = Field(min_length=1)
    models: dict[Name, ModelRecipe] = Field(min_length=1)
    pools: dict[Name, PoolRecipe] = Field(default_factory=dict)
    cache: CacheRecipe | None = None
    defer: dict[str, Any] | None = None
    markets: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    notes: dict[str, str] = Field(default_factory=dict, description="Reason for an assumed number, by path.")


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file, raising DataError on the first invalid field."""
    source = file_name(path)
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())[:200]
        raise DataError(source, "(file)", MISSING, f"is not valid YAML ({detail})",
                        "correct the syntax at the position shown") from None
    if not isinstance(data, dict):
        raise DataError(source, "(top level)", type(data).__name__, "must be a mapping",
                        "start the recipe with 'recipe_version: 1'")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        value = first.get("input", MISSING)
        if first["type"] == "missing":
            value = MISSING
        others = len(error.errors()) - 1
        problem = first["msg"][0].lower() + first["msg"][1:]
        if others:
            problem += f" (and {others} more problem(s))"
        raise DataError(source, where, value, problem,
                        "correct the field as described (see docs/real-data.md for the recipe format)"
                        ) from None


class _Build:
    """Running state of one build: the recipe, its folder, sources and assumptions."""

    def __init__(self, recipe: Recipe, path: Path):
        self.recipe = recipe
        self.folder = path.parent
        self.name = file_name(path)
        self.sources: dict[str, dict] = {}
        self.assumptions: list[dict] = []
        self.rules: dict[str, str] = {}

    def resolve(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.folder / candidate

    def cite(self, entry: SourceFile, derived: str, file: str | None = None,
             licence: str | None = None, attribution: str | None = None) -> None:
        name = file_name(file or entry.file)
        record = self.sources.setdefault(name, {
            "file": name, "licence": licence or entry.licence,
            "attribution": attribution or entry.attribution, "derived": []})
        record["derived"].append(derived)

    def assume(self, path: str, value: Any, default_note: str = "assumed, no public source") -> Any:
        """Record an assumed number under its instance path (``recipe.`` + field when only in the recipe)."""
        note = self.recipe.notes.get(path, default_note)
        self.assumptions.append({"path": path, "value": value, "status": "assumed", "note": note})
        return value


def build_instance(recipe_path: str | Path) -> dict:
    """Run the importers named in a recipe and return a validated instance mapping."""
    path = Path(recipe_path)
    recipe = load_recipe(path)
    build = _Build(recipe, path)

    classes = _trace_classes(build)
    prices = _prices(build)
    quality = _quality(build)
    reuse, curve = _cache(build)
    serving = {name: _serving(build, name, pool) for name, pool in recipe.pools.items()}

    instance: dict[str, Any] = {"schema_version": 1, "name": recipe.name}
    if recipe.description:
        instance["description"] = recipe.description
    instance["period_seconds"] = build.assume("period_seconds", recipe.period_seconds,
                                              "chosen period length (seconds)")
    if recipe.defer is not None:
        instance["defer"] = _assumed_tree(build, "defer", recipe.defer)
    instance["tasks"] = _tasks(build, classes, reuse)
    instance["uses"] = _uses(build)
    instance["models"] = _models(build, prices, quality, serving)
    if serving:
        instance["pools"] = {name: figures.pool(
            build.assume(f"pools.{name}.gpus", recipe.pools[name].gpus),
            build.assume(f"pools.{name}.delay.value_of_time", recipe.pools[name].value_of_time))
            for name, figures in serving.items()}
    if curve is not None:
        instance["capital"] = {"cache": {recipe.cache.pool: {
            "cost": build.assume(f"capital.cache.{recipe.cache.pool}.cost", recipe.cache.cost),
            "max_size": build.assume(f"capital.cache.{recipe.cache.pool}.max_size", recipe.cache.max_size),
            "size_scale": curve.size_scale_gb,
        }}}
    if recipe.markets:
        instance["markets"] = {name: _assumed_tree(build, f"markets.{name}", market)
                               for name, market in recipe.markets.items()}

    instance["metadata"] = {
        "generated_from": build.name,
        "sources": list(build.sources.values()),
        "rules": build.rules,
        "figures": _figures(classes, prices, quality, reuse, curve, serving, build),
        "assumptions": build.assumptions,
    }
    validate(instance, build.name)
    return instance


def render_instance(instance: dict, recipe_path: str | Path, out_path: str | Path) -> str:
    """Return the instance as YAML text with a header naming the recipe it was generated from."""
    recipe = Path(os.path.relpath(Path(recipe_path).resolve(), Path(out_path).resolve().parent))
    header = (
        f"# Generated by `tokenomy build-instance` from the recipe {recipe.as_posix()}.\n"
        "# Do not edit by hand: change the recipe and rebuild. Derived figures and their\n"
        "# sources, licences and assumptions are listed under metadata.\n"
    )
    body = yaml.dump(instance, Dumper=_InstanceDumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body


class _InstanceDumper(yaml.SafeDumper):
    """YAML dumper that writes short mappings and lists of numbers on one line."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    short = len(data) <= 8 and all(
        isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= 40)
        for value in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=short)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    numbers = all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=numbers)


_InstanceDumper.add_representer(dict, _represent_dict)
_InstanceDumper.add_representer(list, _represent_list)


# --- Steps --------------------------------------------------------------------------


def _trace_classes(build: _Build) -> TraceClasses:
    spec = build.recipe.traces
    trace = read_trace(build.resolve(spec.file), spec.format)
    classes = derive_task_classes(trace, spec.classes, build.recipe.period_seconds, spec.by,
                                  spec.duration_seconds)
    names = [task.name for task in build.recipe.tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(build.name, "tasks", repeated, "repeats a task name",
                        "give each task a unique name")
    if len(classes.classes) != len(build.recipe.tasks):
        raise DataError(build.name, "tasks", [task.name for task in build.recipe.tasks],
                        f"lists {len(build.recipe.tasks)} tasks but the trace gave "
                        f"{len(classes.classes)} length classes",
                        "give one task per class, shortest class first")
    build.cite(spec, f"{len(classes.classes)} task classes by {spec.by}-token quantiles: volume per "
                     f"period, mean context tokens and arrival rate of each")
    build.rules["task_classes"] = (
        f"requests split into {spec.classes} classes at the {spec.by}-token quantiles (a length on a "
        f"boundary goes to the upper class); volume = requests x period_seconds / trace duration "
        f"({classes.duration_seconds:g} s, first to last arrival); context_tokens = mean input "
        "tokens of the class")
    return classes


def _prices(build: _Build) -> PriceList:
    spec = build.recipe.prices
    prices = read_prices(build.resolve(spec.file), spec.as_of, spec.prompt_tokens)
    build.cite(spec, f"USD per million input, cached-input and output tokens of each model at {spec.as_of}")
    tier = ("the base tier" if spec.prompt_tokens is None
            else f"the tier for a {spec.prompt_tokens}-token prompt, applied to every token")
    build.rules["prices"] = (
        f"conditional prices resolved at {spec.as_of} (the last entry whose constraint applies, else "
        f"the first); tiered prices take {tier}")
    return prices


def _quality(build: _Build) -> QualitySummary:
    spec = build.recipe.quality
    if len(spec.groups) != len(spec.thresholds) + 1:
        raise DataError(build.name, "quality.groups", spec.groups,
                        f"must have one name more than the {len(spec.thresholds)} thresholds",
                        "give as many group names as thresholds plus one")
    summary = import_quality(build.resolve(spec.file), spec.subset_column, tuple(spec.thresholds),
                             tuple(spec.groups), spec.min_attempts)
    build.cite(spec, "difficulty groups of tasks and each model run's success rate per group, "
                     "with Wilson 95% intervals")
    build.rules["difficulty_groups"] = summary.group_rule + (
        f"; only tasks with {spec.subset_column} = 1" if spec.subset_column else "")
    kind = ("Cobb-Douglas over the uses, with each use's budget as its token scale"
            if spec.curve == "cobb_douglas" else f"saturating in the use {spec.use}, scale = its budget")
    build.rules["quality_calibration"] = (
        f"{kind}; at the budgets the curve's effort is 1, so success = max_success x (1 - exp(-rate)); "
        f"max_success = r / (1 - exp(-rate)) with rate {spec.rate:g}, or max_success = 1 and "
        "rate = -ln(1 - r) when that would exceed 1; r is the run's measured rate on the task's "
        f"group (capped at {MAX_SUCCESS_RATE}); a run with r = 0 on a group gets no curve for it; "
        f"wrong_action = {spec.wrong_action_per_failure:g} x (1 - r)")
    for group in {task.group for task in build.recipe.tasks}:
        if group not in spec.groups:
            raise DataError(build.name, "tasks", group, "names a group that the quality section "
                            "does not define", "use one of: " + ", ".join(spec.groups))
    return summary


def _cache(build: _Build) -> tuple[PrefixReuse | None, CacheCurve | None]:
    spec = build.recipe.cache
    if spec is None:
        return None, None
    if spec.pool not in build.recipe.pools:
        raise DataError(build.name, "cache.pool", spec.pool, "is not a pool of the recipe",
                        "use one of: " + (", ".join(build.recipe.pools) or "(define pools first)"))
    trace = read_trace(build.resolve(spec.file), "mooncake")
    reuse = prefix_reuse(trace)
    curve = cache_curve(trace, points=spec.points,
                        bytes_per_token=build.assume("recipe.cache.bytes_per_token", spec.bytes_per_token))
    build.cite(spec, f"prefix-reuse share of input tokens ({reuse.reuse_share:g}) and the cache size "
                     f"scale ({curve.size_scale_gb:g} GB) fitted to a simulated LRU cache")
    build.rules["prefix_reuse"] = (
        "share of input tokens in prompt blocks seen earlier in arrival order (block ids are chained "
        "hashes, so a repeated block means a repeated prefix); applied to every task class")
    build.rules["cache_size_scale"] = (
        f"LRU cache of prompt blocks simulated at {len(curve.sizes_blocks)} sizes; hit share of "
        f"reusable tokens fitted by least squares to 1 - exp(-size / size_scale); a block of "
        f"{curve.block_tokens} tokens takes {curve.block_tokens} x {curve.bytes_per_token:g} bytes; "
        f"fit RMSE {curve.fit_rmse:g}, largest error {curve.fit_max_error:g}")
    return reuse, curve


def _serving(build: _Build, name: str, pool: PoolRecipe) -> ServingFigures:
    spec = pool.serving
    figures = _select_serving(build, name, spec)
    where = f"pools.{name}.serving"
    build.cite(spec, f"pool {name}: prefill and decode tokens per GPU-second of {figures.model} on "
                     f"{figures.hardware} (tp {figures.tensor_parallel}), prefill batch "
                     f"{figures.prefill_batch_size} of {figures.prompt_size}-token prompts, decode "
                     f"batch {figures.decode_batch_size}; delay scale = one decode step")

    if figures.kv_tokens_per_gpu is not None and spec.kv_file:
        build.cite(spec, f"pool {name}: KV tokens per GPU", file=spec.kv_file,
                   licence=spec.kv_licence, attribution=spec.kv_attribution)
    elif spec.kv_capacity is not None:
        kv = spec.kv_capacity
        for key in ("gpu_memory_gb", "weights_gb", "bytes_per_token", "usable_share"):
            build.assume(f"recipe.{where}.kv_capacity.{key}", getattr(kv, key))
        figures.kv_tokens_per_gpu = significant(kv_tokens_per_gpu(
            kv.gpu_memory_gb, kv.weights_gb, figures.tensor_parallel, kv.bytes_per_token,
            kv.usable_share, build.name))

    for key in ("prompt_size", "prefill_batch_size", "decode_batch_size"):
        build.assume(f"recipe.{where}.{key}", getattr(spec, key), "assumed operating point of the pool")
    return figures


def _select_serving(build: _Build, name: str, spec: ServingRecipe) -> ServingFigures:
    """Read a pool's serving table and return the one configuration the recipe selects."""
    path = build.resolve(spec.file)
    kind = spec.format or ("distserve" if path.suffix.lower() == ".json" else "splitwise")
    options = dict(prompt_size=spec.prompt_size, prefill_batch_size=spec.prefill_batch_size,
                   decode_batch_size=spec.decode_batch_size, model=spec.model,
                   tensor_parallel=spec.tensor_parallel)
    if kind == "splitwise":
        found = import_splitwise(path, hardware=spec.hardware, **options)
    else:
        kv_path = build.resolve(spec.kv_file) if spec.kv_file else None
        found = import_distserve(path, kv_path, decode_context=spec.decode_context,
                                 pipeline_parallel=spec.pipeline_parallel,
                                 hardware=spec.hardware or "a100-80gb", **options)
    if len(found) != 1:
        listed = ", ".join(f"{f.model} on {f.hardware} with tp {f.tensor_parallel}" for f in found)
        raise DataError(build.name, f"pools.{name}.serving", spec.model,
                        f"matches {len(found)} configurations ({listed})",
                        "give model, hardware and tensor_parallel to select one")
    return found[0]


def _tasks(build: _Build, classes: TraceClasses, reuse: PrefixReuse | None) -> dict:
    tasks = {}
    for spec, found in zip(build.recipe.tasks, classes.classes, strict=True):
        where = f"tasks.{spec.name}"
        task: dict[str, Any] = {
            "volume": found.volume,
            "value": build.assume(f"{where}.value", spec.value),
            "context_tokens": found.input.mean,
        }
        if spec.loss:
            task["loss"] = build.assume(f"{where}.loss", spec.loss)
        if spec.latency_sla is not None:
            task["latency_sla"] = build.assume(f"{where}.latency_sla", spec.latency_sla)
        if reuse is not None:
            task["prefix_reuse"] = reuse.reuse_share
        task["group"] = build.assume(f"{where}.group", spec.group,
                                     "assumed mapping of the length class to a difficulty group")
        if spec.tenant:
            task["tenant"] = spec.tenant
        tasks[spec.name] = task
    return tasks


def _uses(build: _Build) -> dict:
    uses = {}
    for name, spec in build.recipe.uses.items():
        where = f"uses.{name}"
        use: dict[str, Any] = {"input_share": build.assume(f"{where}.input_share", spec.input_share),
                               "action": spec.action}
        if spec.risk_scale is not None:
            use["risk_scale"] = build.assume(f"{where}.risk_scale", spec.risk_scale)
        build.assume(f"recipe.{where}.budget", spec.budget, "assumed typical tokens per request, the "
                     "point where quality curves match the measured rates")
        if build.recipe.quality.curve == "cobb_douglas":
            build.assume(f"recipe.{where}.weight", spec.weight, "assumed Cobb-Douglas weight")
        uses[name] = use
    return uses


def _models(build: _Build, prices: PriceList, quality: QualitySummary,
            serving: dict[str, ServingFigures]) -> dict:
    recipe = build.recipe
    spec_quality = recipe.quality
    if spec_quality.curve == "saturating" and spec_quality.use not in recipe.uses:
        raise DataError(build.name, "quality.use", spec_quality.use,
                        "must name a use of the recipe for a saturating curve",
                        "use one of: " + ", ".join(recipe.uses))
    build.assume("recipe.quality.rate", spec_quality.rate, "assumed curve rate before calibration")
    build.assume("recipe.quality.wrong_action_per_failure", spec_quality.wrong_action_per_failure,
                 "assumed share of failed requests that take a wrong irreversible action")
    groups = sorted({task.group for task in recipe.tasks}, key=spec_quality.groups.index)
    models = {}
    for name, spec in recipe.models.items():
        where = f"models.{name}"
        if spec.run not in quality.runs:
            raise DataError(build.name, f"{where}.run", spec.run,
                            f"is not a run column of {quality.source}",
                            "use one of: " + ", ".join(quality.runs))
        try:
            price = prices.find(spec.provider, spec.model)
        except DataError as error:
            raise DataError(build.name, f"{where}.model", error.value,
                            f"{error.problem} ({prices.source})", error.fix) from None
        model: dict[str, Any] = {"prices": price.schema_prices()}
        build.assume(f"{where}.prices", f"{price.provider}/{price.model}",
                     f"assumed: the price-list entry matching the quality run {spec.run}")
        if spec.pool is not None:
            if spec.pool not in serving:
                raise DataError(build.name, f"{where}.pool", spec.pool, "is not a pool of the recipe",
                                "use one of: " + (", ".join(serving) or "(define pools first)"))
            model["pool"] = build.assume(f"{where}.pool", spec.pool, "assumed: served on the pool, "
                                         "with the pool's measured model as a proxy for its speed")
        model.update(_speeds(build, where, spec, serving.get(spec.pool)))
        curves = {}
        for group in groups:
            curve = _calibrate(build, quality.rate(spec.run, group).success_rate or 0.0)
            if curve is None:
                logger.warning("%s: run %s has no resolved %s task; no curve for that group",
                               build.name, spec.run, group)
                continue
            curves[group] = curve
        if not curves:
            raise DataError(build.name, f"{where}.run", spec.run, "resolved no task of any used group",
                            "choose a run with measured successes, or remove the model")
        model["quality"] = curves
        models[name] = model
    return models


def _speeds(build: _Build, where: str, spec: ModelRecipe, figures: ServingFigures | None) -> dict:
    speeds = {}
    for key in ("output_tokens_per_second", "prefill_tokens_per_second"):
        configured = getattr(spec, key)
        if configured is not None:
            speeds[key] = build.assume(f"{where}.{key}", configured)
        elif figures is not None:
            speeds[key] = getattr(figures, key)
    return speeds


def _calibrate(build: _Build, measured: float) -> dict | None:
    spec = build.recipe.quality
    rate = min(measured, MAX_SUCCESS_RATE)
    if rate <= 0:
        return None
    kappa = spec.rate
    max_success = rate / (1.0 - math.exp(-kappa))
    if max_success > 1.0:
        max_success, kappa = 1.0, -math.log(1.0 - rate)
    curve: dict[str, Any] = {"curve": spec.curve, "max_success": significant(max_success),
                             "rate": significant(kappa)}
    uses = build.recipe.uses
    if spec.curve == "saturating":
        curve.update(use=spec.use, scale=uses[spec.use].budget)
    else:
        curve["weights"] = {name: use.weight for name, use in uses.items()}
        curve["scales"] = {name: use.budget for name, use in uses.items()}
    wrong = significant(spec.wrong_action_per_failure * (1.0 - measured))
    if wrong:
        curve["wrong_action"] = wrong
    return curve


def _assumed_tree(build: _Build, prefix: str, value: Any) -> Any:
    """Record every number in a recipe section copied into the instance as assumed."""
    if isinstance(value, dict):
        return {key: _assumed_tree(build, f"{prefix}.{key}", item) for key, item in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        build.assume(prefix, value)
    return value


def _figures(classes: TraceClasses, prices: PriceList, quality: QualitySummary,
             reuse: PrefixReuse | None, curve: CacheCurve | None,
             serving: dict[str, ServingFigures], build: _Build) -> dict:
    """Return the derived figures behind the instance, for readers checking it."""
    recipe = build.recipe
    figures: dict[str, Any] = {
        "task_classes": {
            spec.name: {
                "requests": found.requests, "arrival_rate": found.arrival_rate,
                "input_token_range": [found.lower_tokens, found.upper_tokens],
                "input_mean_p50_p90_p99": [found.input.mean, found.input.p50, found.input.p90,
                                           found.input.p99],
                "output_mean_p50_p90_p99": [found.output.mean, found.output.p50, found.output.p90,
                                            found.output.p99],
            }
            for spec, found in zip(recipe.tasks, classes.classes, strict=True)
        },
        "prices": {},
        "quality": {},
    }
    for name, spec in recipe.models.items():
        price = prices.find(spec.provider, spec.model)
        figures["prices"][name] = {"provider": price.provider, "model": price.model, "rule": price.rule}
        figures["quality"][name] = {"run": spec.run}
        for group in [*sorted({t.group for t in recipe.tasks}, key=recipe.quality.groups.index), "all"]:
            measured = quality.rate(spec.run, group)
            figures["quality"][name][group] = {
                "success_rate": measured.success_rate, "resolved": measured.resolved,
                "attempted": measured.attempted,
                "wilson_95": [measured.wilson_low, measured.wilson_high]}
    figures["difficulty_groups"] = quality.group_sizes
    if reuse is not None and curve is not None:
        figures["prefix_cache"] = {
            "reuse_share": reuse.reuse_share, "requests": reuse.requests,
            "distinct_blocks": reuse.distinct_blocks, "size_scale_gb": curve.size_scale_gb,
            "fit_rmse": curve.fit_rmse, "fit_max_error": curve.fit_max_error,
            "sizes_gb": curve.sizes_gb, "hit_share": curve.hit_share}
    for name, found in serving.items():
        figures.setdefault("pools", {})[name] = {
            "model": found.model, "hardware": found.hardware, "tensor_parallel": found.tensor_parallel,
            "prefill_seconds": found.prefill_seconds, "decode_step_seconds": found.decode_step_seconds,
            "measurements": found.measurements}
    return figures
