"""Price views: the prices each layer takes into account when it optimises alone.

By default each layer uses the one or two prices it is usually given: the
router task value and compute cost, the agent risk and task value, serving
latency and compute cost, capital compute cost and risk. Each layer also
uses the prices of the markets it manages itself: oversight for the agent,
and GPUs and pool loads for serving and capital.

A layer registered by an extension starts from the ``view`` it declares
(``value`` and ``compute`` when it declares none). A market kind registered
by an extension is a price name of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from .registry import BUILTIN, REGISTRY

LAYER_ORDER = ("router", "agent", "serving", "capital")
"""Order in which a request meets the layers, and in which a siloed run executes them."""

VIEW_KEYS = frozenset({"value", "capability", "compute", "latency", "risk", "oversight",
                       "gpu", "prefill", "decode", "kv", "resource"})
"""Prices a view may contain, before extensions.

``value`` covers the task values and the quality a shared cache costs them.
``capability`` is the depreciated value of training, ``latency`` the latency
SLA price and the cost of queueing delay, and ``resource`` every resource
market. The other names are market kinds.
"""

DEFAULT_VIEWS: dict[str, frozenset[str]] = {
    "router": frozenset({"value", "compute"}),
    "agent": frozenset({"value", "risk", "oversight"}),
    "serving": frozenset({"latency", "compute", "gpu", "prefill", "decode", "kv"}),
    "capital": frozenset({"compute", "risk", "gpu"}),
}


def view_keys() -> frozenset[str]:
    """Return the price names a view may contain: :data:`VIEW_KEYS` and the extensions' kinds."""
    extension_kinds = {name for name, kind in REGISTRY.market_kinds().items() if kind.source != BUILTIN}
    return VIEW_KEYS | extension_kinds


def default_views() -> dict[str, frozenset[str]]:
    """Return :data:`DEFAULT_VIEWS` and the declared view of every registered layer."""
    views = dict(DEFAULT_VIEWS)
    views.update({name: entry.view for name, entry in REGISTRY.layers().items()})
    return views


def resolve_views(*overrides: Mapping[str, object] | None) -> dict[str, frozenset[str]]:
    """Return the default views with each ``{layer: [keys]}`` mapping applied in turn.

    Raises
    ------
    ValueError
        For an unknown layer or price name, naming the allowed ones.
    """
    views = default_views()
    keys_allowed = view_keys()
    for override in overrides:
        for layer, keys in (override or {}).items():
            if layer not in views:
                raise ValueError(f"unknown layer {layer!r} in a price view; "
                                 f"use one of {', '.join(views)}")
            keys = [keys] if isinstance(keys, str) else list(keys)
            unknown = sorted(set(keys) - keys_allowed)
            if unknown:
                raise ValueError(f"unknown price {', '.join(unknown)} in the view of {layer}; "
                                 f"use any of {', '.join(sorted(keys_allowed))}")
            views[layer] = frozenset(keys)
    return views


def full_views() -> dict[str, frozenset[str]]:
    """Return views that give every layer, registered ones included, every price."""
    keys = view_keys()
    return {layer: keys for layer in default_views()}
