"""Command-line import of public data: ``tokenomy import ...`` and ``tokenomy build-instance``.

:func:`register` adds the commands to the main ``tokenomy`` app. Each import
command prints a summary table, or with ``--json`` the derived figures as
JSON on stdout. Invalid input exits with code 2 and the message on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model.errors import DataError, InstanceError, TokenomyError
from ..model.importers import (
    build_instance,
    cache_curve,
    derive_task_classes,
    import_distserve,
    import_quality,
    import_splitwise,
    prefix_reuse,
    read_prices,
    read_trace,
    render_instance,
)
from ..model.importers.traces import DEFAULT_BYTES_PER_TOKEN
from .report import write_atomic

EXIT_INVALID = 2
EXIT_FAILED = 3

console = Console(width=max(Console().width, 120))
errors = Console(stderr=True, soft_wrap=True)

import_app = typer.Typer(no_args_is_help=True, help="Derive instance figures from public data files.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the derived figures as JSON on stdout.")]
VerboseOption = Annotated[int, typer.Option("--verbose", "-v", count=True,
                                            help="Log progress (-v) or details (-vv) on stderr.")]


def register(app: typer.Typer) -> None:
    """Add ``import traces|prices|quality|serving`` and ``build-instance`` to ``app``."""
    app.add_typer(import_app, name="import")
    app.command("build-instance")(build_instance_command)


def _configure_logging(verbose: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _fail(error: TokenomyError) -> typer.Exit:
    errors.print(str(error), markup=False, highlight=False)
    invalid = isinstance(error, (DataError, InstanceError))
    return typer.Exit(EXIT_INVALID if invalid else EXIT_FAILED)


def _echo_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2))


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:,.{digits}g}"


@import_app.command("traces")
def import_traces(
    file: Annotated[Path, typer.Argument(help="Azure trace CSV or Mooncake trace JSONL.")],
    format: Annotated[str | None, typer.Option(
        help="Trace format: azure or mooncake (default: by file suffix).")] = None,
    classes: Annotated[int, typer.Option(help="Number of task classes (length quantiles).")] = 3,
    by: Annotated[str, typer.Option(help="Length that defines the classes: input, output or total.")] = "input",
    period: Annotated[float, typer.Option(help="Period length in seconds for volumes.")] = 3600.0,
    duration: Annotated[float | None, typer.Option(
        help="Seconds the trace covers (default: last minus first arrival).")] = None,
    bytes_per_token: Annotated[float, typer.Option(
        help="KV-cache bytes per token, to convert cached blocks to GB.")] = DEFAULT_BYTES_PER_TOKEN,
    points: Annotated[int, typer.Option(help="Number of cache sizes simulated.")] = 12,
    json_output: JsonOption = False,
    verbose: VerboseOption = 0,
) -> None:
    """Derive task classes, arrival rates and (for Mooncake) prefix reuse and a cache curve."""
    _configure_logging(verbose)
    try:
        trace = read_trace(file, format)
        summary = derive_task_classes(trace, classes, period, by, duration)
        reuse = curve = None
        if trace.block_ids is not None:
            reuse = prefix_reuse(trace)
            curve = cache_curve(trace, points=points, bytes_per_token=bytes_per_token)
    except TokenomyError as error:
        raise _fail(error) from None
    if json_output:
        _echo_json({"classes": summary.to_dict(),
                    "prefix_reuse": reuse.to_dict() if reuse else None,
                    "cache_curve": curve.to_dict() if curve else None})
        return

    console.print(f"{escape(summary.source)}: {summary.requests:,} requests over "
                  f"{summary.duration_seconds:,.0f} s ({summary.arrival_rate:.4g} requests/s)")
    table = Table(title=f"task classes by {by} tokens, volume per {period:g} s")
    for column in ("class", f"{by} tokens", "requests", "volume", "rate (req/s)",
                   "input mean / p50 / p90 / p99", "output mean / p50 / p90 / p99"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for item in summary.classes:
        table.add_row(item.name, f"{item.lower_tokens:,.0f}-{item.upper_tokens:,.0f}", f"{item.requests:,}",
                      f"{item.volume:,.1f}", f"{item.arrival_rate:.4g}",
                      " / ".join(_number(v) for v in (item.input.mean, item.input.p50, item.input.p90,
                                                      item.input.p99)),
                      " / ".join(_number(v) for v in (item.output.mean, item.output.p50, item.output.p90,
                                                      item.output.p99)))
    console.print(table)
    if reuse is not None and curve is not None:
        console.print(f"prefix reuse: {reuse.reuse_share:.2%} of input tokens are in blocks seen before "
                      f"({reuse.distinct_blocks:,} distinct of {reuse.blocks:,} blocks)")
        cache = Table(title="LRU prefix cache: hit share of reusable tokens")
        for column in ("blocks", "GB", "hit share", "fitted"):
            cache.add_column(column, justify="right")
        for blocks, size, share, fitted in zip(curve.sizes_blocks, curve.sizes_gb, curve.hit_share,
                                               curve.fitted_share, strict=True):
            cache.add_row(f"{blocks:,}", _number(size), f"{share:.3f}", f"{fitted:.3f}")
        console.print(cache)
        console.print(f"size_scale: {curve.size_scale_gb:,.4g} GB for 1 - exp(-size / size_scale) "
                      f"(RMSE {curve.fit_rmse:.3g}, largest error {curve.fit_max_error:.3g}; "
                      f"{curve.bytes_per_token:,.0f} bytes per token)")


@import_app.command("prices")
def import_prices(
    file: Annotated[Path, typer.Argument(help="genai-prices JSON or compact price CSV.")],
    as_of: Annotated[str | None, typer.Option(
        help="UTC timestamp at which date and time-of-day prices are resolved (required for JSON), "
             "e.g. 2025-11-01T12:00:00Z.")] = None,
    prompt_tokens: Annotated[int | None, typer.Option(
        help="Prompt length in tokens that selects a price tier (default: the base tier).")] = None,
    provider: Annotated[list[str] | None, typer.Option(help="Show only this provider (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Show only this model id (repeatable).")] = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = 0,
) -> None:
    """List input, cached-input and output prices in USD per million tokens."""
    _configure_logging(verbose)
    try:
        prices = read_prices(file, as_of, prompt_tokens)
    except TokenomyError as error:
        raise _fail(error) from None
    rows = [price for price in prices.prices
            if (not provider or price.provider in provider) and (not model or price.model in model)]
    if json_output:
        result = prices.to_dict()
        result["prices"] = [price.to_dict() for price in rows]
        _echo_json(result)
        return
    title = "USD per million tokens" + (f" at {prices.as_of}" if prices.as_of else "")
    table = Table(title=title)
    for column in ("provider", "model", "input", "cached input", "output", "rule"):
        table.add_column(column, justify="right" if column in ("input", "cached input", "output") else "left")
    for price in rows:
        table.add_row(escape(price.provider), escape(price.model), _number(price.input),
                      _number(price.cached_input), _number(price.output), escape(price.rule))
    console.print(table)
    console.print(f"{len(rows)} of {len(prices.prices)} models shown; "
                  f"{len(prices.skipped)} entries without input and output token prices left out")


@import_app.command("quality")
def import_quality_command(
    file: Annotated[Path, typer.Argument(help="Resolved matrix CSV (tasks x model runs).")],
    subset_column: Annotated[str | None, typer.Option(
        help="Keep only tasks where this column is 1, e.g. in_leaderboard_730_set.")] = None,
    min_attempts: Annotated[int, typer.Option(
        help="Minimum number of runs that attempted a task for it to get a group.")] = 3,
    json_output: JsonOption = False,
    verbose: VerboseOption = 0,
) -> None:
    """Form difficulty groups and print each run's success rate with a Wilson 95% interval."""
    _configure_logging(verbose)
    try:
        summary = import_quality(file, subset_column=subset_column, min_attempts=min_attempts)
    except TokenomyError as error:
        raise _fail(error) from None
    if json_output:
        _echo_json(summary.to_dict())
        return
    sizes = ", ".join(f"{name} {count}" for name, count in summary.group_sizes.items())
    console.print(f"{escape(summary.source)}: {summary.tasks} tasks, {summary.grouped_tasks} grouped "
                  f"({sizes})")
    console.print(escape(summary.group_rule))
    groups = [*summary.group_sizes, "all"]
    table = Table(title="success rate (resolved / attempted) [Wilson 95% interval]")
    table.add_column("run")
    for group in groups:
        table.add_column(group, justify="right")
    for run in summary.runs:
        cells = []
        for group in groups:
            rate = summary.rate(run, group)
            if rate.success_rate is None:
                cells.append("not attempted")
                continue
            cells.append(f"{rate.success_rate:.3f} ({rate.resolved}/{rate.attempted}) "
                         f"[{rate.wilson_low:.3f}, {rate.wilson_high:.3f}]")
        table.add_row(escape(run), *cells)
    console.print(table)


@import_app.command("serving")
def import_serving(
    file: Annotated[Path, typer.Argument(help="Splitwise performance CSV or DistServe profiler JSON.")],
    kv_file: Annotated[Path | None, typer.Option(
        help="DistServe KV capacity CSV (model, tp, pp, max_num_tokens).")] = None,
    model: Annotated[str | None, typer.Option(help="Model to select, e.g. llama2-70b.")] = None,
    hardware: Annotated[str | None, typer.Option(help="Hardware to select, e.g. h100-80gb.")] = None,
    tensor_parallel: Annotated[int | None, typer.Option(help="Tensor-parallel degree to select.")] = None,
    prompt_size: Annotated[int, typer.Option(help="Prompt tokens per request for prefill.")] = 2048,
    prefill_batch_size: Annotated[int, typer.Option(help="Prompts per prefill batch.")] = 1,
    decode_batch_size: Annotated[int, typer.Option(help="Requests per decode step.")] = 16,
    decode_context: Annotated[int | None, typer.Option(
        help="DistServe only: context tokens per decoding request (default: the prompt size).")] = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = 0,
) -> None:
    """Derive prefill and decode tokens per GPU-second, KV capacity and a delay scale."""
    _configure_logging(verbose)
    sizes = dict(prompt_size=prompt_size, prefill_batch_size=prefill_batch_size,
                 decode_batch_size=decode_batch_size, model=model, tensor_parallel=tensor_parallel)
    try:
        if file.suffix.lower() == ".json":
            found = import_distserve(file, kv_file, decode_context=decode_context,
                                     hardware=hardware or "a100-80gb", **sizes)
        else:
            found = import_splitwise(file, hardware=hardware, **sizes)
    except TokenomyError as error:
        raise _fail(error) from None
    if json_output:
        _echo_json([figures.to_dict() for figures in found])
        return
    table = Table(title=f"serving figures: prefill batch {prefill_batch_size} x {prompt_size} tokens, "
                        f"decode batch {decode_batch_size}")
    for column in ("model", "hardware", "tp", "prefill tok/GPU-s", "decode tok/GPU-s", "KV tok/GPU",
                   "delay scale (s)", "request output tok/s", "request prefill tok/s"):
        table.add_column(column, justify="left" if column in ("model", "hardware") else "right")
    for item in found:
        table.add_row(escape(item.model), escape(item.hardware), str(item.tensor_parallel),
                      _number(item.prefill_tokens_per_gpu_second), _number(item.decode_tokens_per_gpu_second),
                      _number(item.kv_tokens_per_gpu), _number(item.delay_scale),
                      _number(item.output_tokens_per_second), _number(item.prefill_tokens_per_second))
    console.print(table)


def build_instance_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML naming the data files and assumptions.")],
    out: Annotated[Path, typer.Option("--out", help="Instance file to write (YAML).")],
    verbose: VerboseOption = 0,
) -> None:
    """Build an instance from the public data files named in a recipe and write it as YAML."""
    _configure_logging(verbose)
    try:
        instance = build_instance(recipe)
    except TokenomyError as error:
        raise _fail(error) from None
    if not out.parent.is_dir():
        errors.print(f"cannot write {out}: the folder {out.parent} does not exist; create it first",
                     markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID)
    write_atomic(out, render_instance(instance, recipe, out))
    console.print(f"wrote {escape(str(out))} ({len(instance['tasks'])} tasks, "
                  f"{len(instance['models'])} models, {len(instance['metadata']['sources'])} sources, "
                  f"{len(instance['metadata']['assumptions'])} assumptions)")
