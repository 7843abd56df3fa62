"""Instance file schema (pydantic models).

An instance describes one period of an agentic AI system. Units are fixed:
tokens, USD, seconds, and quantities per period (the period length is
``period_seconds``). List prices are in USD per million tokens, the way
providers publish them. Named collections are mappings keyed by name, so every
field has a dotted path such as ``tasks.fix-failing-test.value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticKnownError, core_schema

from .registry import ENTRY_POINT_GROUP, REGISTRY, known_names, validate_settings

SCHEMA_VERSION = 1

MAX_MAGNITUDE = 1e15
"""Largest number accepted in any field; beyond it double precision cannot price."""

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+$")]


ActionClass = Literal["reversible", "irreversible"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


# --- Quality curves -------------------------------------------------------


class ConstantCurve(Strict):
    """Fixed success probability and fixed tokens per request (no token choice)."""

    curve: Literal["constant"]
    success: Probability = Field(description="Success probability per request.")
    tokens: dict[Name, NonNegative] = Field(
        default_factory=dict, description="Tokens per request by agent use (tokens)."
    )
    wrong_action: Probability = Field(
        0.0, description="Probability of a wrong irreversible action per request."
    )


class SaturatingCurve(Strict):
    """Single-input saturating curve ``p = max_success * (1 - exp(-rate * tokens / scale))``."""

    curve: Literal["saturating"]
    max_success: Probability
    rate: Positive = Field(description="Rate kappa of the saturating curve (dimensionless).")
    use: Name = Field(description="The agent use whose tokens drive success.")
    scale: Positive = Field(description="Token scale s (tokens per request).")
    wrong_action: Probability = 0.0


class CobbDouglasCurve(Strict):
    """Saturating Cobb-Douglas curve over several uses.

    ``p = max_success * (1 - exp(-rate * prod_a (tokens_a / scale_a) ** weight_a))`` with
    weights summing to one, so the geometric mean is homogeneous of degree one.
    """

    curve: Literal["cobb_douglas"]
    max_success: Probability
    rate: Positive
    weights: dict[Name, Positive] = Field(description="Weight per use; normalised to sum to 1.")
    scales: dict[Name, Positive] = Field(description="Token scale per use (tokens per request).")
    wrong_action: Probability = 0.0


class LeontiefCurve(Strict):
    """Saturating Leontief curve ``p = max_success * (1 - exp(-rate * min_a tokens_a / scale_a))``."""

    curve: Literal["leontief"]
    max_success: Probability
    rate: Positive
    scales: dict[Name, Positive] = Field(description="Tokens per request of each use per unit of effort.")
    wrong_action: Probability = 0.0


class EffortCurve(Strict):
    """Base of registered curve families: ``p = max_success * (1 - exp(-rate * G))``.

    A family adds ``curve: Literal["<name>"]`` and any parameters of its
    effort G. ``scales`` names the uses G depends on, and the agent passes G
    the tokens of use a divided by ``scales[a]``.
    """

    max_success: Probability
    rate: Positive = Field(description="Rate kappa of the curve (dimensionless).")
    scales: dict[Name, Positive] = Field(
        min_length=1, description="Tokens per request of each use per unit of effort.")
    wrong_action: Probability = 0.0


BUILTIN_CURVES = (ConstantCurve, SaturatingCurve, CobbDouglasCurve, LeontiefCurve)


class QualityCurve:
    """A quality entry, validated by the model registered for its ``curve`` tag.

    The built-in families are :data:`BUILTIN_CURVES`. Extensions add more with
    ``REGISTRY.add_curve_family``.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: GetCoreSchemaHandler):
        return core_schema.no_info_plain_validator_function(cls.validate)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: object, handler: GetJsonSchemaHandler):
        models = [family.model for family in REGISTRY.curve_families().values()]
        return {"oneOf": [handler(model.__pydantic_core_schema__) for model in models]}

    @staticmethod
    def validate(value: object) -> BaseModel:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if not isinstance(value, Mapping):
            raise PydanticKnownError("dict_type")
        tag = value.get("curve")
        family = REGISTRY.curve_family(tag) if isinstance(tag, str) else None
        if family is None and isinstance(tag, str):
            REGISTRY.load_extensions()  # picks up a package installed since the last scan
            family = REGISTRY.curve_family(tag)
        if family is None:
            names = ", ".join(sorted(REGISTRY.curve_families()))
            fix = f"set 'curve' to one of: {names}"
            if isinstance(tag, str):
                fix += (f". A family from an extension needs its package installed (it registers "
                        f"through the entry-point group {ENTRY_POINT_GROUP})")
            raise problem_error("has an unknown or missing curve type", fix)
        return family.model.model_validate(value)


def problem_error(message: str, fix: str) -> PydanticCustomError:
    """Return a validation error that the loader reports with this message and fix."""
    return PydanticCustomError("tokenomy_problem", "{message}", {"message": message, "fix": fix})


for _curve in BUILTIN_CURVES:
    REGISTRY.add_builtin_family(_curve)


# --- Sections --------------------------------------------------------------


class DeferOption(Strict):
    """Send the request back to a human: no tokens, no model risk."""

    enabled: bool = True
    success: Probability = Field(0.0, description="Success probability of the human path.")
    cost: NonNegative = Field(0.0, description="Human cost per deferred request (USD).")
    latency: NonNegative = Field(0.0, description="Latency of a deferred request (seconds).")


class Task(Strict):
    """A class of requests (or a single request when ``volume`` is 1)."""

    volume: Positive = Field(description="Requests per period.")
    value: NonNegative = Field(description="Value of one successful request (USD).")
    context_tokens: NonNegative = Field(0.0, description="Prompt context per request (tokens).")
    loss: NonNegative = Field(0.0, description="Loss on a wrong irreversible action (USD).")
    latency_sla: Positive | None = Field(
        None, description="Mean service latency limit for this class (seconds)."
    )
    prefix_reuse: Probability = Field(
        0.0, description="Share of context tokens in prefixes a cache can reuse."
    )
    cache_quality_loss: Probability = Field(
        0.0, description="Drop in success probability of a request whose prefix is served "
        "from a shared cache (a stale or mismatched prefix)."
    )
    group: Name | None = Field(None, description="Task group used to look up model quality.")
    tenant: Name | None = Field(
        None, description="Owner of the task. Markets with scope 'tenant' budget each tenant's usage.")
    defer: DeferOption | None = Field(None, description="Overrides the top-level defer option.")


class ModelPrices(Strict):
    input: NonNegative = Field(description="USD per million input tokens.")
    output: NonNegative = Field(description="USD per million output tokens.")
    cached_input: NonNegative | None = Field(
        None, description="USD per million cached input tokens (defaults to input)."
    )


class Model(Strict):
    """A model tier that can serve requests."""

    prices: ModelPrices
    pool: Name | None = Field(None, description="Serving pool that runs this model.")
    output_tokens_per_second: Positive = Field(
        50.0, description="Decode speed seen by one request (tokens per second)."
    )
    prefill_tokens_per_second: Positive = Field(
        5000.0, description="Prefill speed seen by one request (tokens per second)."
    )
    quality: dict[Name, QualityCurve] = Field(
        description="Quality curve per task name, task group or 'default'."
    )


class Use(Strict):
    """An agent token use (read, plan, edit, verify) or human review."""

    kind: Literal["tokens", "review"] = Field(
        "tokens", description="'tokens' for model tokens, 'review' for human minutes."
    )
    input_share: Probability = Field(
        0.5, description="Share of this use's tokens billed and served as input tokens."
    )
    action: ActionClass = "reversible"
    risk_scale: Positive | None = Field(
        None,
        description="Tokens (or review minutes) per request that cut the wrong-action "
        "probability by a factor e; empty when the use does not reduce risk.",
    )
    wage: NonNegative = Field(0.0, description="Review only: USD per review minute.")
    footprint: dict[Name, NonNegative] = Field(
        default_factory=dict,
        description="Usage of 'resource' markets per token or review minute, keyed by market name.",
    )


class DelayCurve(Strict):
    """Queueing delay of a pool phase, in seconds per token.

    ``mm1``: ``scale * load / (capacity - load)``. ``polynomial``:
    ``free_flow + slope * (load / capacity) ** power``; the BPR curve
    ``t0 * (1 + a * x ** k)`` is ``free_flow = t0``, ``slope = t0 * a``, ``power = k``.
    """

    curve: Literal["mm1", "polynomial"] = "mm1"
    scale: Positive | None = Field(None, description="mm1: delay scale d (seconds).")
    free_flow: NonNegative = Field(0.0, description="polynomial: delay at zero load (seconds).")
    slope: NonNegative = Field(0.0, description="polynomial: added delay at full load (seconds).")
    power: Annotated[float, Field(ge=1.0, le=10.0)] = Field(
        1.0, description="polynomial: exponent k of the load ratio."
    )
    value_of_time: NonNegative = Field(
        description="Cost of one request-second of waiting (USD)."
    )

    @model_validator(mode="after")
    def _curve_fields(self) -> DelayCurve:
        if self.curve == "mm1" and self.scale is None:
            raise ValueError("an mm1 delay curve needs 'scale' (seconds)")
        return self


class Pool(Strict):
    """A serving pool of GPUs split between prefill and decode."""

    gpus: NonNegative | None = Field(None, description="GPUs in the pool.")
    prefill_tokens_per_gpu_second: Positive
    decode_tokens_per_gpu_second: Positive
    kv_tokens_per_gpu: Positive | None = Field(
        None, description="KV-cache capacity per decode GPU (tokens); empty for no KV limit."
    )
    delay: DelayCurve | None = None


class Cache(Strict):
    """A prefix cache in front of one pool."""

    cost: NonNegative = Field(description="USD per GB of cache per period.")
    max_size: Positive = Field(description="Largest cache that may be bought (GB).")
    size_scale: Positive = Field(
        description="Cache size at which 63% of reusable prefix tokens hit (GB)."
    )
    fixed_cost: NonNegative = Field(
        0.0, description="Mixed-integer form only: USD per period for enabling the cache "
        "at any size (a fixed charge on top of the cost per GB)."
    )


class Training(Strict):
    """An RL post-training investment: rollout, verifier and update tokens."""

    pool: Name = Field(description="Pool whose GPUs run training.")
    value: NonNegative = Field(description="USD per unit of capability gain per period.")
    max_gain: Positive = Field(1.0, description="Capability gain of unlimited training.")
    rate: Positive = 1.0
    weights: dict[Literal["rollout", "verifier", "update"], Positive] = Field(
        default_factory=lambda: {"rollout": 0.5, "verifier": 0.25, "update": 0.25}
    )
    scales: dict[Literal["rollout", "verifier", "update"], Positive] = Field(
        description="Token scale of each training input (tokens per period)."
    )
    price: NonNegative = Field(description="USD per million training tokens.")
    tokens_per_gpu_second: Positive
    depreciation: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="Share of capability lost per period."
    )
    rollout_lag: NonNegative = Field(
        0.0, description="Periods between generating rollouts and deploying what they teach."
    )
    fixed_cost: NonNegative = Field(
        0.0, description="Mixed-integer form only: USD per period for running the job at all "
        "(a fixed charge on top of the token price)."
    )


class Capital(Strict):
    cache: dict[Name, Cache] = Field(default_factory=dict, description="Caches keyed by pool.")
    training: Training | None = None


AutonomyLevelName = Literal["free", "confirm", "multi-party"]


class AutonomyLevel(Strict):
    """How much human oversight an action class gets (mixed-integer form only)."""

    risk_multiplier: Probability = Field(
        description="Factor on the expected loss of wrong actions of the class (1: no oversight)."
    )
    review_minutes: NonNegative = Field(
        0.0, description="Human minutes per routed request, counted in the oversight market."
    )
    cost: NonNegative = Field(0.0, description="Oversight cost per routed request (USD).")


def _default_levels() -> dict[str, AutonomyLevel]:
    return {
        "free": AutonomyLevel(risk_multiplier=1.0),
        "confirm": AutonomyLevel(risk_multiplier=0.2, review_minutes=0.5, cost=0.25),
        "multi-party": AutonomyLevel(risk_multiplier=0.05, review_minutes=2.0, cost=1.0),
    }


class Autonomy(Strict):
    """The autonomy schedule's menu: one level is chosen per action class.

    The convex form ignores this section. It counts the full expected loss of
    every wrong action, as the mixed-integer form does with every class at
    ``free`` and the default loss shares.
    """

    levels: dict[AutonomyLevelName, AutonomyLevel] = Field(
        default_factory=_default_levels, min_length=1,
        description="Levels the schedule may choose, keyed by level name.",
    )
    loss_share: dict[ActionClass, Probability] = Field(
        default_factory=lambda: {"irreversible": 1.0, "reversible": 0.0},
        description="Share of a task's loss on a wrong action that actions of each class "
        "carry; a class left out carries 1 (irreversible) or 0 (reversible).",
    )


MarketKind = Literal["compute", "latency", "risk", "oversight", "gpu", "resource"]
"""The built-in market kinds. ``Market.kind`` accepts any registered kind, built-in or not."""


class Tenant(Strict):
    """An owner of tasks, whose usage markets with ``scope: tenant`` budget separately."""

    description: str | None = None


class RequestRows(Strict):
    """Per-request rows of the task classes, read by ``tokenomy decompose``."""

    file: str = Field(description="CSV file of requests (task, count, value, difficulty), "
                      "relative to the instance file.")


class Market(Strict):
    """A shared constraint: either budgeted (its dual is the price) or priced."""

    kind: Name = Field(description="A registered market kind: compute, latency, risk, oversight, "
                       "gpu, resource, or one an extension registers.")
    scope: Literal["total", "tenant"] = Field(
        "total", description="'total': one row for all usage. 'tenant': one row per tenant, "
        "over the usage of that tenant's tasks.")
    budget: NonNegative | None = Field(
        None, description="Right-hand side in the market's unit per period (scope tenant: the "
        "budget of every tenant not listed in 'budgets')."
    )
    budgets: dict[Name, NonNegative] = Field(
        default_factory=dict, description="Scope tenant only: budget per tenant, in the market's "
        "unit per period.")
    price: NonNegative | None = Field(None, description="Exogenous price in USD per unit.")
    unit: str | None = Field(
        None, max_length=40, description="Unit of a resource market's usage, e.g. 'kWh'."
    )
    settings: Any = Field(
        None, validate_default=True,
        description="Settings of a kind registered by an extension, validated by its own model.")

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, kind: str) -> str:
        if REGISTRY.market_kind(kind) is None:
            REGISTRY.load_extensions()  # picks up a package installed since the last scan
        if REGISTRY.market_kind(kind) is None:
            raise problem_error(
                "is not a registered market kind",
                f"use one of: {known_names(REGISTRY.market_kinds())}. A kind from an extension "
                f"needs its package installed (it registers through the entry-point group "
                f"{ENTRY_POINT_GROUP}) or a call to tokenomy.model.register_market_kind")
        return kind

    @field_validator("settings")
    @classmethod
    def _kind_settings(cls, value: object, info: ValidationInfo) -> object:
        kind = REGISTRY.market_kind(info.data["kind"]) if "kind" in info.data else None
        if kind is None:
            return value
        if kind.settings is None:
            if value not in (None, {}):
                raise problem_error(f"is not read by markets of kind {kind.name}",
                                    "remove 'settings'")
            return None
        return kind.settings.model_validate({} if value is None else value)

    @model_validator(mode="after")
    def _one_mode(self) -> Market:
        if self.budgets and self.scope != "tenant":
            raise ValueError("'budgets' gives one budget per tenant and needs scope: tenant")
        if self.kind == "gpu":
            if self.budget is not None:
                raise ValueError(
                    "a gpu market takes its capacities from pools.<pool>.gpus; "
                    "give 'price' to rent GPUs or leave both fields out"
                )
            return self
        if self.kind == "latency" and self.budget is None and self.price is None:
            return self
        budgeted = self.budget is not None or bool(self.budgets)
        if budgeted == (self.price is not None):
            if self.scope == "tenant":
                raise ValueError("give 'price', or 'budget' and 'budgets' (per tenant), not both")
            raise ValueError("give exactly one of 'budget' (a constraint) or 'price' (exogenous)")
        return self


class Instance(Strict):
    """A tokenomy instance: one period of a four-layer agentic AI system."""

    schema_version: Literal[1] = Field(description="Version of this schema; currently 1.")
    name: str | None = None
    description: str | None = None
    metadata: dict[str, object] = Field(default_factory=dict)
    period_seconds: Positive = Field(3600.0, description="Length of one period (seconds).")
    defer: DeferOption = Field(default_factory=lambda: DeferOption(enabled=False))
    tasks: dict[Name, Task] = Field(min_length=1)
    models: dict[Name, Model] = Field(min_length=1)
    uses: dict[Name, Use] = Field(min_length=1)
    pools: dict[Name, Pool] = Field(default_factory=dict)
    capital: Capital = Field(default_factory=Capital)
    markets: dict[Name, Market] = Field(default_factory=dict)
    tenants: dict[Name, Tenant] = Field(
        default_factory=dict,
        description="Tenants that own tasks. When given, every tasks.*.tenant must be one of them. "
        "When absent, the tenants are the names the tasks give.",
    )
    layers: dict[Name, Any] = Field(
        default_factory=dict,
        description="Extension layers to add to the default four, each with the settings its "
        "own model validates (an empty mapping for defaults).",
    )
    autonomy: Autonomy = Field(
        default_factory=Autonomy,
        description="Oversight levels per action class (mixed-integer form only).",
    )
    views: dict[Name, list[str]] = Field(
        default_factory=dict,
        description="Prices each layer sees in a siloed run; omitted layers keep the defaults.",
    )
    requests: RequestRows | None = Field(
        None, description="Per-request rows for decomposition; other commands use the class volumes.",
    )

    @field_validator("layers")
    @classmethod
    def _registered_layers(cls, layers: dict[str, Any]) -> dict[str, Any]:
        if any(REGISTRY.layer(name) is None for name in layers):
            REGISTRY.load_extensions()  # picks up a package installed since the last scan
        validated: dict[str, Any] = {}
        details: list = []
        for name, value in layers.items():
            entry = REGISTRY.layer(name)
            if entry is None:
                names = known_names(REGISTRY.layers())
                details.append({"type": problem_error(
                    "is not a registered layer",
                    f"use one of: {names}. A layer from an extension needs its package installed "
                    f"(it registers through the entry-point group {ENTRY_POINT_GROUP}) or a call "
                    "to REGISTRY.add_layer"), "loc": (name,), "input": name})
            elif entry.settings is None:
                if value not in (None, {}):
                    details.append({"type": problem_error(
                        f"is not read by the layer {name}, which takes no settings",
                        "leave the entry empty ({})"), "loc": (name,), "input": value})
                validated[name] = None
            else:
                settings, errors = validate_settings(entry.settings, value, (name,))
                validated[name] = settings
                details += errors
        if details:
            raise ValidationError.from_exception_data("layers", details)
        return validated
