"""Import request traces: task classes, arrival rates, prefix reuse and cache curves.

Two public formats are read:

- the Azure LLM inference trace CSV, with columns ``TIMESTAMP`` (wall clock),
  ``ContextTokens`` and ``GeneratedTokens``;
- the Mooncake trace JSONL, one object per request with ``timestamp``
  (milliseconds from the start), ``input_length``, ``output_length`` and
  ``hash_ids``, the ids of the request's prompt blocks of 512 tokens.

Task classes split the requests by token-length quantiles. Mooncake block ids
are chained hashes, because a block's id depends on every block before it.
A block seen before therefore means that the whole prefix up to it was seen
before, and the share of input tokens in such blocks is the prefix-reuse
potential.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MISSING, DataError
from ._files import file_name, read_table, read_text, significant

logger = logging.getLogger(__name__)

AZURE_COLUMNS = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
MOONCAKE_FIELDS = ["timestamp", "input_length", "output_length", "hash_ids"]
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per prompt block in the Mooncake trace (its hash_ids cover 512 tokens each)."""

DEFAULT_BYTES_PER_TOKEN = 327_680
"""KV-cache bytes per token of Llama-2-70B in 16-bit precision.

2 (key and value) x 80 layers x 8 KV heads x 128 dimensions x 2 bytes, from
the model's published architecture. Used to turn cached blocks into GB.
"""

LENGTH_KEYS = ("input", "output", "total")


@dataclass
class Trace:
    """Requests of a trace in arrival order (token counts as float arrays)."""

    source: str
    format: str
    arrival_seconds: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    block_ids: np.ndarray | None = None
    block_counts: np.ndarray | None = None
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    @property
    def requests(self) -> int:
        return len(self.input_tokens)

    @property
    def duration_seconds(self) -> float:
        return float(self.arrival_seconds[-1] - self.arrival_seconds[0])


@dataclass
class TokenStats:
    """Mean and percentiles of tokens per request."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float


@dataclass
class TaskClass:
    """One length class of a trace, with its volume per period and arrival rate."""

    name: str
    lower_tokens: float
    upper_tokens: float
    requests: int
    share: float
    volume: float
    arrival_rate: float
    input: TokenStats
    output: TokenStats


@dataclass
class TraceClasses:
    """Task classes of a trace by token-length quantiles."""

    source: str
    format: str
    requests: int
    duration_seconds: float
    period_seconds: float
    by: str
    arrival_rate: float
    classes: list[TaskClass]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PrefixReuse:
    """Share of input tokens in prompt blocks seen before, in arrival order."""

    source: str
    block_tokens: int
    requests: int
    blocks: int
    distinct_blocks: int
    input_tokens: float
    reusable_tokens: float
    reuse_share: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CacheCurve:
    """Hit share of reusable prefix tokens against LRU cache size, and its exponential fit.

    ``hit_share[i]`` is the share of reusable tokens (those in blocks seen
    before) that an LRU cache of ``sizes_blocks[i]`` blocks serves. The fit is
    ``1 - exp(-size_gb / size_scale_gb)``, the capital layer's cache curve.
    """

    source: str
    block_tokens: int
    bytes_per_token: float
    sizes_blocks: list[int]
    sizes_gb: list[float]
    hit_share: list[float]
    size_scale_gb: float
    fit_rmse: float
    fit_max_error: float
    fitted_share: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --- Reading ------------------------------------------------------------------


def read_trace(path: str | Path, format: str | None = None) -> Trace:
    """Read an Azure CSV or a Mooncake JSONL trace; ``format`` defaults by file suffix."""
    path = Path(path)
    chosen = format or ("mooncake" if path.suffix.lower() in (".jsonl", ".json") else "azure")
    if chosen == "azure":
        return read_azure_trace(path)
    if chosen == "mooncake":
        return read_mooncake_trace(path)
    raise DataError(file_name(path), "format", format, "is not a known trace format",
                    "use 'azure' (CSV) or 'mooncake' (JSONL)")


def read_azure_trace(path: str | Path) -> Trace:
    """Read the Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    table = read_table(path, AZURE_COLUMNS)
    if not len(table):
        raise DataError(table.source, "(rows)", 0, "contains no requests",
                        "give a trace with at least two requests")
    stamps = table.column("TIMESTAMP")
    try:
        times = np.asarray(stamps, dtype="datetime64[ns]")
    except ValueError:
        times = None
    if times is None or np.isnat(times).any():
        index = _first_bad_timestamp(stamps)
        raise DataError(table.source, f"{table.line(index)}, column TIMESTAMP", str(stamps[index]),
                        "is not a timestamp", "write it as YYYY-MM-DD HH:MM:SS[.fraction]")
    seconds = (times - times.min()) / np.timedelta64(1, "s")
    inputs = table.numbers("ContextTokens", integer=True)
    outputs = table.numbers("GeneratedTokens", integer=True)
    return _ordered(Trace(table.source, "azure", seconds, inputs, outputs))


def read_mooncake_trace(path: str | Path) -> Trace:
    """Read the Mooncake trace JSONL (timestamp in ms, input_length, output_length, hash_ids)."""
    name = file_name(path)
    text = read_text(path)
    records, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            truncated = "; the line looks truncated" if number == len(text.splitlines()) else ""
            raise DataError(name, f"line {number}", line[:60], f"is not valid JSON ({error.msg}){truncated}",
                            "restore the line or delete it") from None
        if not isinstance(record, dict):
            raise DataError(name, f"line {number}", line[:60], "is not a JSON object",
                            "write one object per line with " + ", ".join(MOONCAKE_FIELDS))
        records.append(record)
        lines.append(number)
    if not records:
        raise DataError(name, "(rows)", 0, "contains no requests",
                        "give a trace with at least two requests")

    columns = {}
    for key in MOONCAKE_FIELDS:
        values = [record.get(key, MISSING) for record in records]
        absent = [i for i, value in enumerate(values) if value is MISSING]
        if absent:
            raise DataError(name, f"line {lines[absent[0]]}, field {key}", MISSING, "is missing",
                            "give every request " + ", ".join(MOONCAKE_FIELDS))
        columns[key] = values
    numbers = {key: _integers(columns[key], name, key, lines) for key in MOONCAKE_FIELDS[:3]}
    counts, ids = _block_ids(columns["hash_ids"], name, lines)

    inputs = numbers["input_length"]
    capacity = counts * MOONCAKE_BLOCK_TOKENS
    short = (capacity < inputs) | (capacity - MOONCAKE_BLOCK_TOKENS >= np.maximum(inputs, 1))
    if short.any():
        index = int(np.flatnonzero(short)[0])
        raise DataError(name, f"line {lines[index]}, field hash_ids", f"{int(counts[index])} blocks",
                        f"does not cover input_length {int(inputs[index])} in blocks of "
                        f"{MOONCAKE_BLOCK_TOKENS} tokens",
                        f"give ceil(input_length / {MOONCAKE_BLOCK_TOKENS}) block ids per request")
    seconds = (numbers["timestamp"] - numbers["timestamp"].min()) / 1000.0
    trace = Trace(name, "mooncake", seconds, inputs, numbers["output_length"], ids, counts)
    return _ordered(trace)


def _first_bad_timestamp(stamps: np.ndarray) -> int:
    for index, stamp in enumerate(stamps):
        try:
            if np.isnat(np.datetime64(str(stamp), "ns")):
                return index
        except ValueError:
            return index
    return 0


def _integers(values: list, source: str, key: str, lines: list[int]) -> np.ndarray:
    if all(type(value) is int for value in values):
        numbers = np.asarray(values, dtype=np.float64)
        if (numbers >= 0).all():
            return numbers
    index = next(i for i, value in enumerate(values) if type(value) is not int or value < 0)
    raise DataError(source, f"line {lines[index]}, field {key}", values[index],
                    "is not a non-negative whole number",
                    "give a whole number of tokens (of milliseconds for timestamp)")


def _block_ids(values: list, source: str, lines: list[int]) -> tuple[np.ndarray, np.ndarray]:
    for index, value in enumerate(values):
        if not isinstance(value, list):
            raise DataError(source, f"line {lines[index]}, field hash_ids", value, "is not a list",
                            "give the list of prompt block ids")
    counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    try:
        ids = np.fromiter(itertools.chain.from_iterable(values), dtype=np.int64, count=int(counts.sum()))
    except (TypeError, ValueError, OverflowError):
        for index, value in enumerate(values):
            if not all(type(item) is int for item in value):
                raise DataError(source, f"line {lines[index]}, field hash_ids", value,
                                "contains an id that is not a whole number",
                                "give integer block ids") from None
        raise
    return counts, ids


def _ordered(trace: Trace) -> Trace:
    """Return the trace sorted by arrival time (stable), logging when it was not."""
    order = np.argsort(trace.arrival_seconds, kind="stable")
    if np.all(order == np.arange(len(order))):
        return trace
    logger.info("%s: requests sorted by arrival time", trace.source)
    trace.arrival_seconds = trace.arrival_seconds[order]
    trace.input_tokens = trace.input_tokens[order]
    trace.output_tokens = trace.output_tokens[order]
    if trace.block_ids is not None:
        starts = np.concatenate([[0], np.cumsum(trace.block_counts)[:-1]])
        pieces = [trace.block_ids[starts[i]:starts[i] + trace.block_counts[i]] for i in order]
        trace.block_ids = np.concatenate(pieces) if pieces else trace.block_ids
        trace.block_counts = trace.block_counts[order]
    return trace


# --- Task classes ---------------------------------------------------------------


def derive_task_classes(trace: Trace, classes: int = 3, period_seconds: float = 3600.0,
                        by: str = "input", duration_seconds: float | None = None) -> TraceClasses:
    """Split a trace into task classes by token-length quantiles.

    Class ``i`` contains the requests whose length (input, output or total
    tokens, chosen by ``by``) lies between the ``i/classes`` and
    ``(i+1)/classes`` quantiles. A length equal to a boundary goes to the upper
    class, and classes left empty by ties are dropped. The trace spans ``duration_seconds``
    (default: last minus first arrival), so a class's volume per period is its
    request count times ``period_seconds / duration_seconds`` and its arrival
    rate is the count over the duration.
    """
    source = trace.source
    if classes < 1:
        raise DataError(source, "classes", classes, "must be at least 1", "give 1 or more classes")
    if by not in LENGTH_KEYS:
        raise DataError(source, "by", by, "is not a length key", "use one of: " + ", ".join(LENGTH_KEYS))
    if period_seconds <= 0:
        raise DataError(source, "period_seconds", period_seconds, "must be positive",
                        "give the period length in seconds")
    if trace.requests == 0:
        raise DataError(source, "(rows)", 0, "contains no requests", "give a non-empty trace")
    duration = trace.duration_seconds if duration_seconds is None else float(duration_seconds)
    if duration <= 0:
        raise DataError(source, "duration", duration,
                        "is zero, so no arrival rate can be derived (every request has the same timestamp)",
                        "give the trace's duration in seconds explicitly")

    lengths = {"input": trace.input_tokens, "output": trace.output_tokens,
               "total": trace.input_tokens + trace.output_tokens}[by]
    edges = np.quantile(lengths, np.linspace(0.0, 1.0, classes + 1))
    label = np.searchsorted(edges[1:-1], lengths, side="right")
    counts = np.bincount(label, minlength=classes)
    if (counts == 0).any():
        logger.warning("%s: %d of %d length classes are empty because of tied lengths; dropped",
                       source, int((counts == 0).sum()), classes)

    scale = period_seconds / duration
    result = []
    for index in np.flatnonzero(counts):
        members = label == index
        result.append(TaskClass(
            name=f"class-{len(result) + 1}",
            lower_tokens=float(lengths[members].min()),
            upper_tokens=float(lengths[members].max()),
            requests=int(counts[index]),
            share=significant(counts[index] / trace.requests),
            volume=significant(counts[index] * scale),
            arrival_rate=significant(counts[index] / duration),
            input=_stats(trace.input_tokens[members]),
            output=_stats(trace.output_tokens[members]),
        ))
    return TraceClasses(
        source=source, format=trace.format, requests=trace.requests,
        duration_seconds=significant(duration), period_seconds=float(period_seconds), by=by,
        arrival_rate=significant(trace.requests / duration), classes=result,
    )


def _stats(values: np.ndarray) -> TokenStats:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return TokenStats(mean=significant(values.mean()), p50=significant(p50), p90=significant(p90),
                      p99=significant(p99), min=float(values.min()), max=float(values.max()))


# --- Prefix reuse and cache ------------------------------------------------------


def block_token_counts(trace: Trace) -> np.ndarray:
    """Return the tokens in each prompt block: full blocks, and the remainder in each last block."""
    _require_blocks(trace)
    counts = trace.block_counts
    tokens = np.full(int(counts.sum()), float(trace.block_tokens))
    ends = np.cumsum(counts)[counts > 0] - 1
    with_blocks = counts > 0
    tokens[ends] = trace.input_tokens[with_blocks] - trace.block_tokens * (counts[with_blocks] - 1)
    return tokens


def prefix_reuse(trace: Trace) -> PrefixReuse:
    """Return the share of input tokens in blocks that an earlier request (or block) already had."""
    tokens = block_token_counts(trace)
    ids = trace.block_ids
    distinct, first = np.unique(ids, return_index=True)
    seen = np.ones(len(ids), dtype=bool)
    seen[first] = False
    total = float(tokens.sum())
    reusable = float(tokens[seen].sum())
    return PrefixReuse(
        source=trace.source, block_tokens=trace.block_tokens, requests=trace.requests,
        blocks=int(len(ids)), distinct_blocks=int(len(distinct)), input_tokens=total,
        reusable_tokens=reusable, reuse_share=significant(reusable / total if total else 0.0),
    )


def lru_hit_tokens(ids: np.ndarray, tokens: np.ndarray, size: int) -> float:
    """Return the tokens served by an LRU cache of ``size`` blocks over the block accesses.

    NOTE: one Python step per block access, because each eviction depends on
    every access before it; about 0.1 s per size for 300,000 accesses.
    """
    cache: OrderedDict[int, None] = OrderedDict()
    hits = np.zeros(len(ids), dtype=bool)
    for position, block in enumerate(ids.tolist()):
        if block in cache:
            hits[position] = True
            cache.move_to_end(block)
        else:
            cache[block] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return float(tokens[hits].sum())


def cache_curve(trace: Trace, sizes_blocks: list[int] | None = None, points: int = 12,
                bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN) -> CacheCurve:
    """Simulate an LRU prefix cache at several sizes and fit the capital layer's size scale.

    Sizes default to ``points`` sizes spaced geometrically from 16 blocks to the
    number of distinct blocks. A block of ``block_tokens`` tokens takes
    ``block_tokens * bytes_per_token`` bytes, and 1 GB is 1e9 bytes.
    """
    if bytes_per_token <= 0:
        raise DataError(trace.source, "bytes_per_token", bytes_per_token, "must be positive",
                        "give the KV-cache bytes per token of the served model")
    tokens = block_token_counts(trace)
    reuse = prefix_reuse(trace)
    if reuse.reusable_tokens <= 0:
        raise DataError(trace.source, "hash_ids", "no repeated block",
                        "has no reusable prefix, so no cache curve can be fitted",
                        "use a trace whose requests share prompt prefixes")
    if sizes_blocks is None:
        top = max(reuse.distinct_blocks, 32)
        sizes_blocks = np.unique(np.round(np.geomspace(16, top, points)).astype(int)).tolist()
    sizes = [int(size) for size in sizes_blocks]
    if not sizes or min(sizes) < 1:
        raise DataError(trace.source, "sizes_blocks", sizes, "must be positive block counts",
                        "give cache sizes of at least one block")
    shares = np.array([lru_hit_tokens(trace.block_ids, tokens, size) for size in sizes])
    shares /= reuse.reusable_tokens
    gigabytes = np.array(sizes, dtype=float) * trace.block_tokens * bytes_per_token / 1e9
    scale, rmse, worst = fit_size_scale(gigabytes, shares)
    fitted = 1.0 - np.exp(-gigabytes / scale)
    logger.info("%s: cache size scale %.4g GB (fit RMSE %.3g)", trace.source, scale, rmse)
    return CacheCurve(
        source=trace.source, block_tokens=trace.block_tokens, bytes_per_token=float(bytes_per_token),
        sizes_blocks=sizes, sizes_gb=[significant(v) for v in gigabytes],
        hit_share=[significant(v) for v in shares], size_scale_gb=significant(scale),
        fit_rmse=significant(rmse), fit_max_error=significant(worst),
        fitted_share=[significant(v) for v in fitted],
    )


def fit_size_scale(sizes: np.ndarray, shares: np.ndarray) -> tuple[float, float, float]:
    """Fit ``share = 1 - exp(-size / scale)`` by least squares; return scale, RMSE and max error.

    A grid of 2,001 scales, spaced geometrically over six decades around the
    sizes, brackets the minimum, and a golden-section search refines it.
    """
    sizes = np.asarray(sizes, dtype=float)
    shares = np.asarray(shares, dtype=float)

    def loss(log_scale: float) -> float:
        return float(np.sum((1.0 - np.exp(-sizes / np.exp(log_scale)) - shares) ** 2))

    grid = np.linspace(np.log(sizes.min()) - 3 * np.log(10), np.log(sizes.max()) + 3 * np.log(10), 2001)
    losses = np.array([loss(value) for value in grid])
    best = int(np.argmin(losses))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if loss(left) < loss(right):
            high = right
        else:
            low = left
    scale = float(np.exp((low + high) / 2.0))
    residual = 1.0 - np.exp(-sizes / scale) - shares
    return scale, float(np.sqrt(np.mean(residual ** 2))), float(np.max(np.abs(residual)))


def _require_blocks(trace: Trace) -> None:
    if trace.block_ids is None or trace.block_counts is None:
        raise DataError(trace.source, "hash_ids", MISSING,
                        "is required for prefix reuse and cache curves",
                        "use a trace with prompt block ids (the Mooncake JSONL format)")
