"""Importers of public data: request traces, price lists, quality matrices, serving tables.

Each importer reads a file from a path the caller gives and returns derived
figures in the instance schema's units; :func:`build_instance` combines them
as a recipe directs. Invalid input raises :class:`~tokenomy.model.errors.DataError`.
"""

from .prices import ModelPrice, PriceList, read_compact_prices, read_genai_prices, read_prices
from .quality import (
    QualitySummary,
    difficulty_groups,
    import_quality,
    read_resolved_matrix,
    success_rates,
    wilson_interval,
)
from .recipe import build_instance, load_recipe, render_instance
from .serving import ServingFigures, import_distserve, import_splitwise, kv_tokens_per_gpu
from .traces import (
    CacheCurve,
    PrefixReuse,
    Trace,
    TraceClasses,
    cache_curve,
    derive_task_classes,
    fit_size_scale,
    prefix_reuse,
    read_azure_trace,
    read_mooncake_trace,
    read_trace,
)

__all__ = [
    "CacheCurve",
    "ModelPrice",
    "PrefixReuse",
    "PriceList",
    "QualitySummary",
    "ServingFigures",
    "Trace",
    "TraceClasses",
    "build_instance",
    "cache_curve",
    "derive_task_classes",
    "difficulty_groups",
    "fit_size_scale",
    "import_distserve",
    "import_quality",
    "import_splitwise",
    "kv_tokens_per_gpu",
    "load_recipe",
    "prefix_reuse",
    "read_azure_trace",
    "read_compact_prices",
    "read_genai_prices",
    "read_mooncake_trace",
    "read_prices",
    "read_resolved_matrix",
    "read_trace",
    "render_instance",
    "success_rates",
    "wilson_interval",
]
