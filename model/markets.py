"""Markets: the constraints the layers share, and their prices.

A market turns a usage quantity that layers contribute to into either

* a **budget** row ``usage <= right-hand side`` whose dual is the endogenous price,
* a **price**: an exogenous charge ``price * weight * usage`` in the objective,
* a **balance** row ``demand - supply <= 0`` between layers (serving loads), or
* an **equality** row (routing shares sum to one).

Every price is reported as the derivative of optimal welfare with respect to
the row's right-hand side, in USD per unit of that right-hand side, so it is
non-negative for a budget or capacity of a maximisation.

New kinds register with :func:`register_market_kind`, which stores them in
:data:`tokenomy.model.registry.REGISTRY`. A market with ``scope: tenant`` has
one row per tenant over the usage of that tenant's tasks. :func:`meter_markets`
builds that split from the contributions' ``tasks``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .data import EconomyData
from .errors import ExtensionError, FieldProblem
from .formulation import Builder
from .layers.base import resource_usage, tenant_usage, usage
from .registry import BUILTIN, REGISTRY
from .schema import Instance

logger = logging.getLogger(__name__)

Mode = Literal["budget", "price", "balance", "equality"]


@dataclass
class MarketSpec:
    """One market as it enters the program.

    Attributes
    ----------
    name:
        Market name: the instance key, or the kind for implicit markets.
    kind:
        Registered market kind.
    mode:
        ``budget``, ``price``, ``balance`` or ``equality``.
    quantity:
        Name of the usage quantity the layers contribute to.
    rows:
        Rows of that quantity this market covers.
    labels:
        One label per row, e.g. ``latency[fix-failing-test]``.
    unit:
        Unit of the usage (per period), e.g. ``USD`` or ``tokens``.
    price_unit:
        Unit of the reported price.
    rhs:
        Right-hand side per row (budget, balance and equality modes).
    rhs_paths:
        Dotted instance path of each right-hand side, ``None`` for internal ones.
    price:
        Exogenous price per row (price mode), in ``price_unit``.
    weight:
        Converts the usage into the unit the exogenous price is quoted in.
    report_factor:
        Converts ``dW/d(rhs)`` into the reported price (e.g. per request).
    scale:
        Row scale: the row passed to the solver is ``usage / scale``.
    offset:
        Added to ``rhs`` in the program (``Economy(offsets=...)``), per row.
    scope:
        ``total``, or ``tenant`` for one row per tenant.
    """

    name: str
    kind: str
    mode: Mode
    quantity: str
    rows: np.ndarray
    labels: list[str]
    unit: str
    price_unit: str
    rhs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rhs_paths: list[str | None] = field(default_factory=list)
    price: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    report_factor: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0))
    description: str = ""
    scope: str = "total"

    @property
    def is_constraint(self) -> bool:
        return self.mode != "price"


MarketFactory = Callable[[str, Instance, EconomyData], list[MarketSpec]]
Meter = Callable[[Builder, EconomyData, Instance, str], None]


def register_market_kind(kind: str, factory: MarketFactory, **options) -> None:
    """Register a market kind: ``factory(name, instance, data)`` returns its specs.

    ``options`` are those of :meth:`tokenomy.model.registry.Registry.add_market_kind`
    (``settings``, ``meter``, ``single``, ``physical``, ``tenant_quantity``,
    ``check``, ``description``, ``replace``). A kind registered twice raises
    :class:`~tokenomy.model.errors.ExtensionError` unless ``replace=True``.
    """
    REGISTRY.add_market_kind(kind, factory, **options)


def market_kinds() -> list[str]:
    """Return the names of the registered market kinds."""
    return sorted(REGISTRY.market_kinds())


def meter_markets(builder: Builder, data: EconomyData, instance: Instance) -> None:
    """Add the usage that markets derive from the layers' contributions.

    Runs each declared market's meter, then splits the usage quantity of
    every kind with a ``scope: tenant`` market into one row per tenant. Call
    it after the layers have declared and before the market rows are built.
    """
    for name, market in instance.markets.items():
        kind = REGISTRY.market_kind(market.kind)
        if kind.meter is not None:
            _run_hook(kind.source, f"meter of market kind {kind.name}", kind.meter,
                      builder, data, instance, name)
    split: set[str] = set()
    for market in instance.markets.values():
        quantity = REGISTRY.market_kind(market.kind).tenant_quantity
        if market.scope != "tenant" or quantity is None or quantity in split:
            continue
        split.add(quantity)
        untagged = builder.derive_by_task(tenant_usage(quantity), quantity, data.task_tenant,
                                          len(data.tenants))
        for layer in untagged:
            logger.warning("layer %s adds to %s without saying which tasks it serves, so that "
                           "usage counts in no tenant's row; pass tasks= to builder.contribute",
                           layer, quantity)


def define_markets(instance: Instance, data: EconomyData) -> list[MarketSpec]:
    """Return the implicit markets followed by the instance's declared markets."""
    specs = _implicit_markets(instance, data)
    declared_kinds = {market.kind for market in instance.markets.values()}
    for name, market in instance.markets.items():
        kind = REGISTRY.market_kind(market.kind)
        kind_specs = _run_hook(kind.source, f"factory of market kind {kind.name}", kind.factory,
                               name, instance, data)
        if kind.source != BUILTIN and not all(isinstance(spec, MarketSpec) for spec in kind_specs):
            raise ExtensionError(kind.source, [FieldProblem(
                f"markets.{name}", market.kind, "has a factory that returned something other "
                "than a list of MarketSpec", "return [MarketSpec(...), ...] from the factory")])
        specs += kind_specs
    if "gpu" not in declared_kinds:
        specs += _gpu_market("gpu", instance, data)
    if "latency" not in declared_kinds and np.isfinite(data.sla).any():
        specs += _latency_market("latency", instance, data)
    return specs


def _rows(count: int) -> np.ndarray:
    return np.arange(count, dtype=int)


def _run_hook(source: str, hook_label: str, hook: Callable, *arguments):
    """Call an extension's hook, and turn its unexpected exceptions into an ExtensionError."""
    if source == BUILTIN:
        return hook(*arguments)
    try:
        return hook(*arguments)
    except ExtensionError:
        raise
    except Exception as error:
        raise ExtensionError(source, [FieldProblem(
            f"({hook_label})", type(error).__name__, f"failed: {error}",
            "fix the extension (TOKENOMY_DEBUG=1 shows the traceback)")]) from error


def scalar_market(name: str, instance: Instance, quantity: str, unit: str, per: str,
                  description: str) -> list[MarketSpec]:
    """Return the one-row spec of market ``name``: a budget or a price on ``quantity``.

    ``unit`` is the usage unit and ``per`` what the price is quoted per
    (the price unit is ``USD per <per>``). Kinds registered by extensions
    may use it as their factory body.
    """
    market = instance.markets[name]
    spec = MarketSpec(
        name=name, kind=market.kind, mode="budget" if market.budget is not None else "price",
        quantity=quantity, rows=_rows(1), labels=[name], unit=unit,
        price_unit=f"USD per {per}", description=description,
        weight=np.ones(1), report_factor=np.ones(1),
    )
    if spec.mode == "budget":
        spec.rhs = np.array([market.budget])
        spec.rhs_paths = [f"markets.{name}.budget"]
        spec.scale = np.array([market.budget if market.budget > 0 else 1.0])
    else:
        spec.price = np.array([market.price])
        spec.scale = np.ones(1)
    return [spec]


def tenant_market(name: str, instance: Instance, data: EconomyData, quantity: str, unit: str,
                  per: str, description: str) -> list[MarketSpec]:
    """Return the spec of a ``scope: tenant`` market: one row per tenant of ``tenant_usage(quantity)``.

    A priced market charges every tenant. A budgeted one has a row for each
    tenant listed in ``budgets`` or covered by the default ``budget``.
    ``description`` describes what one tenant's row meters.
    """
    market = instance.markets[name]
    tenants = np.arange(len(data.tenants))
    spec = MarketSpec(
        name=name, kind=market.kind, mode="price" if market.price is not None else "budget",
        quantity=tenant_usage(quantity), rows=tenants,
        labels=[f"{name}[{tenant}]" for tenant in data.tenants], unit=unit,
        price_unit=f"USD per {per}", description=description,
        weight=np.ones(len(tenants)), report_factor=np.ones(len(tenants)), scope="tenant",
    )
    if spec.mode == "price":
        spec.price = np.full(len(tenants), market.price)
        spec.scale = np.ones(len(tenants))
        return [spec]
    budgets = [market.budgets.get(tenant, market.budget) for tenant in data.tenants]
    rows = np.array([t for t, budget in enumerate(budgets) if budget is not None], dtype=int)
    spec.rows = rows
    spec.labels = [spec.labels[t] for t in rows]
    spec.rhs = np.array([budgets[t] for t in rows], dtype=float)
    spec.rhs_paths = [f"markets.{name}.budgets.{data.tenants[t]}" if data.tenants[t] in market.budgets
                      else f"markets.{name}.budget" for t in rows]
    spec.weight, spec.report_factor = np.ones(len(rows)), np.ones(len(rows))
    spec.scale = np.where(spec.rhs > 0, spec.rhs, 1.0)
    return [spec]


def _compute_market(name: str, instance: Instance, data: EconomyData) -> list[MarketSpec]:
    description = "list-price spend on model and training tokens per period"
    if instance.markets[name].scope == "tenant":
        return tenant_market(name, instance, data, usage("compute"), "USD", "USD",
                             "list-price spend on the tenant's model tokens per period")
    return scalar_market(name, instance, usage("compute"), "USD", "USD", description)


def _risk_market(name: str, instance: Instance, data: EconomyData) -> list[MarketSpec]:
    return scalar_market(name, instance, usage("risk"), "USD", "USD of expected loss",
                         "expected loss from wrong irreversible actions per period")


def _oversight_market(name: str, instance: Instance, data: EconomyData) -> list[MarketSpec]:
    return scalar_market(name, instance, usage("oversight"), "minutes", "review minute",
                         "human review minutes per period")


def _resource_market(name: str, instance: Instance, data: EconomyData) -> list[MarketSpec]:
    unit = instance.markets[name].unit or "unit"
    return scalar_market(name, instance, resource_usage(name), unit, unit,
                         "resource use declared by agent-use footprints per period")


def _latency_market(name: str, instance: Instance, data: EconomyData) -> list[MarketSpec]:
    market = instance.markets.get(name)
    priced = market is not None and market.price is not None
    tasks = _rows(len(data.tasks)) if priced else np.flatnonzero(np.isfinite(data.sla))
    spec = MarketSpec(
        name=name, kind="latency", mode="price" if priced else "budget",
        quantity=usage("latency"), rows=tasks,
        labels=[f"{name}[{data.tasks[x]}]" for x in tasks], unit="s",
        price_unit="USD per request-second" if priced else "USD per second of SLA",
        description="mean service latency per request of each task class",
        weight=data.volume[tasks], report_factor=np.ones(len(tasks)),
    )
    if priced:
        spec.price = np.full(len(tasks), market.price)
        spec.scale = np.ones(len(tasks))
        ignored = [data.tasks[x] for x in np.flatnonzero(np.isfinite(data.sla))]
        if ignored:
            logger.warning("markets.%s prices latency, so the latency_sla of %s is not enforced; "
                           "remove the price to enforce the SLAs", name, ", ".join(ignored[:5]))
    else:
        spec.rhs = data.sla[tasks]
        spec.rhs_paths = [data.sla_path[x] for x in tasks]
        spec.scale = data.sla[tasks].copy()
    return [spec]


def _gpu_market(name: str, instance: Instance, data: EconomyData) -> list[MarketSpec]:
    if not data.pools:
        return []
    market = instance.markets.get(name)
    count = len(data.pools)
    spec = MarketSpec(
        name=name, kind="gpu", mode="budget", quantity=usage("gpu"), rows=_rows(count),
        labels=[f"{name}[{pool}]" for pool in data.pools], unit="GPUs",
        price_unit="USD per GPU per period",
        description="GPUs of each pool shared by prefill, decode and training",
        weight=np.ones(count), report_factor=np.ones(count),
    )
    if market is not None and market.price is not None:
        spec.mode = "price"
        spec.price = np.full(count, market.price)
        spec.scale = np.ones(count)
        return [spec]
    gpus = np.array([instance.pools[p].gpus for p in data.pools], dtype=float)
    spec.rhs = gpus
    spec.rhs_paths = [f"pools.{p}.gpus" for p in data.pools]
    spec.scale = np.maximum(gpus, 1.0)
    return [spec]


def _implicit_markets(instance: Instance, data: EconomyData) -> list[MarketSpec]:
    task_count = len(data.tasks)
    specs = [MarketSpec(
        name="routing", kind="routing", mode="equality", quantity=usage("routing"),
        rows=_rows(task_count), labels=[f"routing[{t}]" for t in data.tasks],
        unit="share", price_unit="USD per request",
        rhs=np.ones(task_count), rhs_paths=[f"tasks.{t}.volume" for t in data.tasks],
        weight=np.ones(task_count), report_factor=1.0 / data.volume,
        scale=np.ones(task_count),
        description="every request of a class is routed to a model or deferred",
    )]
    if not data.pools:
        return specs
    pools = [instance.pools[p] for p in data.pools]
    gpus = np.array([max(p.gpus or 1.0, 1.0) for p in pools])
    for phase, throughput in (
        ("prefill", [p.prefill_tokens_per_gpu_second for p in pools]),
        ("decode", [p.decode_tokens_per_gpu_second for p in pools]),
    ):
        count = len(pools)
        specs.append(MarketSpec(
            name=phase, kind=phase, mode="balance", quantity=usage(phase), rows=_rows(count),
            labels=[f"{phase}[{p}]" for p in data.pools], unit="tokens",
            price_unit="USD per token", rhs=np.zeros(count), rhs_paths=[None] * count,
            weight=np.ones(count), report_factor=np.ones(count),
            scale=np.array(throughput) * data.period * gpus,
            description=f"{phase} tokens routed to each pool against the load it serves",
        ))
    kv = np.array([p.kv_tokens_per_gpu or 0.0 for p in pools])
    limited = np.flatnonzero(kv > 0)
    if len(limited):
        specs.append(MarketSpec(
            name="kv", kind="kv", mode="balance", quantity=usage("kv"), rows=limited,
            labels=[f"kv[{data.pools[p]}]" for p in limited], unit="resident tokens",
            price_unit="USD per resident KV token", rhs=np.zeros(len(limited)),
            rhs_paths=[None] * len(limited), weight=np.ones(len(limited)),
            report_factor=np.ones(len(limited)), scale=kv[limited] * gpus[limited],
            description="KV-cache tokens held during decode against decode GPUs' memory",
        ))
    return specs


def _register_builtin_kinds() -> None:
    builtin = [
        ("compute", _compute_market, {"single": True, "tenant_quantity": usage("compute"),
                                      "description": "list-price spend (USD)"}),
        ("latency", _latency_market, {"single": True,
                                      "description": "mean service latency per task (s)"}),
        ("risk", _risk_market, {"single": True, "description": "expected loss (USD)"}),
        ("oversight", _oversight_market, {"single": True, "description": "review minutes"}),
        ("gpu", _gpu_market, {"single": True, "physical": True, "description": "GPUs per pool"}),
        ("resource", _resource_market, {"description": "footprint of agent uses (declared unit)"}),
    ]
    for kind, factory, options in builtin:
        REGISTRY.add_builtin_kind(kind, factory, **options)


_register_builtin_kinds()
