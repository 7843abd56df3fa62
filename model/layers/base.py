"""The layer protocol and the quantity names layers write into.

Welfare parts are in USD per period. Market usages are in the market's unit
per period (see :mod:`tokenomy.model.markets`). A layer contributes to a
usage; whether the market is budgeted or priced is decided by the core.

Besides the market usages, the layers that make models process tokens add
them to two token flows, ``usage.tokens.input`` and ``usage.tokens.output``,
with one row per model (tokens per period; input tokens served from a
prefix cache are subtracted). No market meters the flows directly; market
kinds that charge per token (an energy cap, say) derive their usage from
them with ``Builder.derive_weighted``.
"""

from __future__ import annotations

from typing import Protocol

from ..data import EconomyData
from ..formulation import Builder
from ..schema import Instance

WELFARE = "welfare."
USAGE = "usage."


class Layer(Protocol):
    """A component of the economy: declares variables, constraints and contributions.

    ``decisions`` names the variables the layer chooses; its other variables
    (epigraphs of curves and delays) follow from those choices. A siloed run
    fixes each layer's decisions in turn.
    """

    name: str
    decisions: tuple[str, ...]

    def declare(self, builder: Builder, data: EconomyData, instance: Instance) -> None:
        """Add this layer's variables, own constraints and linear contributions."""


def usage(market: str) -> str:
    """Return the quantity name of a market's usage."""
    return USAGE + market


def resource_usage(market: str) -> str:
    """Return the quantity name of a resource market's usage (apart from market kinds)."""
    return USAGE + "resource." + market


def welfare(part: str) -> str:
    """Return the quantity name of a welfare part."""
    return WELFARE + part


def token_flow(direction: str) -> str:
    """Return the quantity name of the ``input`` or ``output`` tokens per model."""
    if direction not in ("input", "output"):
        raise ValueError(f"token flow direction must be 'input' or 'output', got {direction!r}")
    return USAGE + "tokens." + direction


def tenant_usage(quantity: str) -> str:
    """Return the name of ``quantity`` split into one row per tenant, e.g. ``usage.compute.tenant``."""
    return quantity + ".tenant"


def kind_usage(kind: str, market: str) -> str:
    """Return a usage quantity name for market ``market`` of an extension kind ``kind``.

    Naming the kind keeps the quantity apart from the built-in ones even when
    the market's name is that of a built-in kind.
    """
    return f"{USAGE}{kind}.{market}"
