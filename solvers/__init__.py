"""tokenomy.solvers: algorithms that solve the economy and read its prices."""

from .analysis import equimarginal, tokens_per_request
from .joint import FALLBACK_ORDER, solve
from .report import build_report, write_outputs
from .result import Price, Result, SolutionStatus, TerminationReason
from .sweep import sweep

__all__ = [
    "FALLBACK_ORDER",
    "Price",
    "Result",
    "SolutionStatus",
    "TerminationReason",
    "build_report",
    "equimarginal",
    "solve",
    "sweep",
    "tokens_per_request",
    "write_outputs",
]
