"""The layer protocol and the quantity names layers write into.

Welfare parts are in USD per period. Market usages are in the market's unit
per period (see :mod:`tokenomy.model.markets`). A layer contributes to a
usage; whether the market is budgeted or priced is decided by the core.
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
