"""tokenomy.model: the economics of agentic token allocation.

Instance schema and loading, the four layers (router, agent, serving,
capital), the markets that couple them, and the joint convex program.
"""

from .economy import Economy, default_layers
from .errors import DataError, InstanceError, SolveError, TokenomyError
from .generate import generate_instance
from .loader import load_instance, read_document, validate
from .markets import MarketSpec, market_kinds, register_market_kind
from .schema import SCHEMA_VERSION, Instance

__all__ = [
    "SCHEMA_VERSION",
    "Economy",
    "DataError",
    "Instance",
    "InstanceError",
    "MarketSpec",
    "SolveError",
    "TokenomyError",
    "default_layers",
    "generate_instance",
    "load_instance",
    "market_kinds",
    "read_document",
    "register_market_kind",
    "validate",
]
