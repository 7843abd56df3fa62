"""Importers of public data: figures checked against direct recounts, and malformed input."""

import csv
import json
import math
import statistics
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tokenomy.model.errors import DataError
from tokenomy.model.importers import (
    cache_curve,
    derive_task_classes,
    fit_size_scale,
    import_distserve,
    import_quality,
    import_splitwise,
    prefix_reuse,
    read_prices,
    read_resolved_matrix,
    read_trace,
    wilson_interval,
)
from tokenomy.model.importers.traces import block_token_counts, lru_hit_tokens
from tokenomy.solvers.cli import app

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(),
    reason="the shared public data folder is not beside the repository, so real-data checks cannot run")

AZURE = DATA / "azure_llm_2023_code.csv"
MOONCAKE = DATA / "mooncake_fast25_conversation_trace.jsonl"
GENAI = DATA / "genai_prices_v2_data.json"
COMPACT = DATA / "llm_prices_compact.csv"
MATRIX = DATA / "swebench_pro_resolved_matrix.csv"
SPLITWISE = DATA / "splitwise_sim_perf_model.csv"
DISTSERVE = DATA / "distserve_profiler_a100_80g_distserve.json"
DISTSERVE_KV = DATA / "distserve_max_num_tokens.csv"

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def raises_data_error(function, *args, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        function(*args, **kwargs)
    return str(caught.value)


# --- Request traces on the real files ------------------------------------------------


@needs_data
def test_azure_classes_match_recount():
    with AZURE.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    times = [datetime.fromisoformat(row["TIMESTAMP"][:26]) for row in rows]
    duration = (max(times) - min(times)).total_seconds()
    context = [int(row["ContextTokens"]) for row in rows]

    summary = derive_task_classes(read_trace(AZURE), classes=3, period_seconds=3600.0)

    assert summary.requests == len(rows)
    assert summary.duration_seconds == pytest.approx(duration, rel=1e-5)
    assert sum(item.requests for item in summary.classes) == len(rows)
    total_volume = sum(item.volume for item in summary.classes)
    assert total_volume == pytest.approx(len(rows) * 3600.0 / duration, rel=1e-5)
    for item in summary.classes:
        members = [c for c in context if item.lower_tokens <= c <= item.upper_tokens]
        assert item.requests == len(members)
        assert item.input.mean == pytest.approx(statistics.fmean(members), rel=1e-5)
        assert item.arrival_rate == pytest.approx(len(members) / duration, rel=1e-5)
    assert [item.name for item in summary.classes] == ["class-1", "class-2", "class-3"]


@needs_data
def test_azure_output_classes_percentiles():
    summary = derive_task_classes(read_trace(AZURE), classes=2, by="output")
    with AZURE.open(newline="") as stream:
        outputs = sorted(int(row["GeneratedTokens"]) for row in csv.DictReader(stream))
    low = summary.classes[0]
    members = [v for v in outputs if v <= low.upper_tokens]
    assert low.output.p50 == pytest.approx(float(np.percentile(members, 50)))
    assert low.output.max == max(members)


@needs_data
def test_mooncake_reuse_matches_plain_loop(tmp_path):
    lines = MOONCAKE.read_text(encoding="utf-8").splitlines()[:400]
    prefix = write(tmp_path / "prefix.jsonl", "\n".join(lines) + "\n")

    seen, reusable, total = set(), 0, 0
    for line in lines:
        record = json.loads(line)
        remaining = record["input_length"]
        for block in record["hash_ids"]:
            tokens = min(512, remaining)
            remaining -= tokens
            total += tokens
            if block in seen:
                reusable += tokens
            seen.add(block)

    reuse = prefix_reuse(read_trace(prefix))
    assert reuse.input_tokens == total
    assert reuse.reusable_tokens == reusable
    assert reuse.reuse_share == pytest.approx(reusable / total, rel=1e-5)
    assert reuse.requests == 400


@needs_data
def test_mooncake_lru_matches_plain_cache(tmp_path):
    lines = MOONCAKE.read_text(encoding="utf-8").splitlines()[:300]
    trace = read_trace(write(tmp_path / "prefix.jsonl", "\n".join(lines)))
    size = 64

    cache, hits = [], 0.0
    tokens = block_token_counts(trace)
    for block, count in zip(trace.block_ids.tolist(), tokens.tolist(), strict=True):
        if block in cache:
            hits += count
            cache.remove(block)
        elif len(cache) == size:
            cache.pop(0)
        cache.append(block)

    assert lru_hit_tokens(trace.block_ids, tokens, size) == hits


@needs_data
def test_mooncake_cache_curve_and_fit():
    trace = read_trace(MOONCAKE)
    curve = cache_curve(trace, points=6)
    shares = curve.hit_share
    assert shares == sorted(shares)
    assert shares[-1] == pytest.approx(1.0)
    assert curve.sizes_blocks[-1] == prefix_reuse(trace).distinct_blocks
    fitted = [1 - math.exp(-size / curve.size_scale_gb) for size in curve.sizes_gb]
    errors = [abs(a - b) for a, b in zip(fitted, shares, strict=True)]
    assert curve.fit_max_error == pytest.approx(max(errors), rel=1e-3, abs=1e-6)
    assert curve.size_scale_gb > 0


def test_size_scale_fit_recovers_exponential():
    sizes = np.array([1.0, 3.0, 10.0, 30.0, 100.0])
    scale, rmse, worst = fit_size_scale(sizes, 1 - np.exp(-sizes / 17.0))
    assert scale == pytest.approx(17.0, rel=1e-6)
    assert rmse < 1e-9
    assert worst < 1e-9


# --- Prices on the real files -----------------------------------------------------


def _raw_model(provider: str, model: str) -> dict:
    data = json.loads(GENAI.read_text(encoding="utf-8"))
    entry = next(p for p in data if p["id"] == provider)
    return next(m for m in entry["models"] if m["id"] == model)


@needs_data
def test_genai_price_equals_listed_figure():
    prices = read_prices(GENAI, "2025-11-01T12:00:00Z")
    listed = _raw_model("openai", "gpt-5")["prices"]
    found = prices.find("openai", "gpt-5")
    assert found.input == listed["input_mtok"]
    assert found.output == listed["output_mtok"]
    assert found.cached_input == listed["cache_read_mtok"]
    assert found.rule == "single price set"


@needs_data
def test_genai_tiered_price_uses_base_tier():
    listed = _raw_model("anthropic", "claude-sonnet-4-5")["prices"]
    base = read_prices(GENAI, "2025-11-01T12:00:00Z").find("anthropic", "claude-sonnet-4-5")
    assert base.input == listed["input_mtok"]["base"]
    assert base.output == listed["output_mtok"]["base"]
    assert "base tier" in base.rule
    long = read_prices(GENAI, "2025-11-01T12:00:00Z", prompt_tokens=250_000).find(
        "anthropic", "claude-sonnet-4-5")
    assert long.input == listed["input_mtok"]["tiers"][0]["price"]
    assert "tier above 200000" in long.rule


@needs_data
def test_genai_dated_price_follows_as_of():
    entries = _raw_model("openai", "o3")["prices"]
    before = read_prices(GENAI, "2025-05-01T00:00:00Z").find("openai", "o3")
    after = read_prices(GENAI, "2025-11-01T00:00:00Z").find("openai", "o3")
    assert before.input == entries[0]["prices"]["input_mtok"]
    assert after.input == entries[1]["prices"]["input_mtok"]
    assert after.rule.startswith("entry 2 of 2")


@needs_data
def test_compact_price_equals_csv_cell():
    with COMPACT.open(newline="") as stream:
        row = next(r for r in csv.DictReader(stream) if r["model_id"] == "claude-sonnet-4-5")
    found = read_prices(COMPACT).find("anthropic", "claude-sonnet-4-5")
    assert found.input == float(row["input_usd_per_mtok"])
    assert found.cached_input == float(row["cached_input_read_usd_per_mtok"])
    assert found.output == float(row["output_usd_per_mtok"])
    assert "from 200000 input tok" in found.note


@needs_data
def test_ambiguous_model_needs_provider():
    message = raises_data_error(read_prices(GENAI, "2025-11-01T12:00:00Z").find, None, "gpt-oss-120b")
    assert "genai_prices_v2_data.json" in message
    assert "several providers" in message


# --- Quality on the real file -----------------------------------------------------


@needs_data
def test_success_rate_equals_direct_count():
    with MATRIX.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    summary = import_quality(MATRIX, min_attempts=1)
    run_columns = [c for c in rows[0] if c not in ("instance_id", "in_leaderboard_730_set")]
    assert summary.runs == run_columns
    for run in run_columns:
        attempted = sum(1 for row in rows if row[run] != "")
        resolved = sum(1 for row in rows if row[run] == "1")
        overall = summary.rate(run, "all")
        assert overall.attempted == attempted, run
        assert overall.resolved == resolved, run
        assert overall.success_rate == pytest.approx(resolved / attempted, rel=1e-5)


@needs_data
def test_difficulty_groups_match_direct_count():
    with MATRIX.open(newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if r["in_leaderboard_730_set"] == "1"]
    runs = [c for c in rows[0] if c not in ("instance_id", "in_leaderboard_730_set")]
    summary = import_quality(MATRIX, subset_column="in_leaderboard_730_set")
    run = "kimi-k2-instruct-10132025"
    resolved = attempted = 0
    for row in rows:
        cells = [row[r] for r in runs if row[r] != ""]
        share = cells.count("1") / len(cells)
        if len(cells) >= 3 and share >= 2 / 3 and row[run] != "":
            attempted += 1
            resolved += row[run] == "1"
    easy = summary.rate(run, "easy")
    assert summary.tasks == len(rows)
    assert (easy.resolved, easy.attempted) == (resolved, attempted)
    low, high = wilson_interval(resolved, attempted)
    assert easy.wilson_low == pytest.approx(low, rel=1e-5)
    assert easy.wilson_high == pytest.approx(high, rel=1e-5)


def test_wilson_interval_known_value():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- Serving on the real files ----------------------------------------------------


@needs_data
def test_splitwise_throughput_matches_rows():
    with SPLITWISE.open(newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if r["model"] == "llama2-70b"
                and r["hardware"] == "h100-80gb" and r["tensor_parallel"] == "4"]
    prefill = statistics.median(float(r["prompt_time"]) for r in rows
                                if r["prompt_size"] == "2048" and r["batch_size"] == "1")
    step = statistics.median(float(r["token_time"]) for r in rows if r["batch_size"] == "64")

    (figures,) = import_splitwise(SPLITWISE, prompt_size=2048, decode_batch_size=64,
                                  model="llama2-70b", hardware="h100-80gb", tensor_parallel=4)
    assert figures.prefill_tokens_per_gpu_second == pytest.approx(2048 / (prefill / 1000) / 4, rel=1e-5)
    assert figures.decode_tokens_per_gpu_second == pytest.approx(64 / (step / 1000) / 4, rel=1e-5)
    assert figures.delay_scale == pytest.approx(step / 1000, rel=1e-5)
    assert figures.kv_tokens_per_gpu is None


@needs_data
def test_distserve_figures_match_formula():
    profile = json.loads(DISTSERVE.read_text(encoding="utf-8"))["facebook/opt-66b"]["4"]
    a, b, c = profile["prefill"]
    prefill_ms = a + b * 2 * 1024 + c * 2 * 1024 ** 2
    a, b, c = profile["decoding_smallbs"]
    step_ms = a + b * 32 * 1500 + c * 32
    with DISTSERVE_KV.open(newline="") as stream:
        capacity = next(int(r["max_num_tokens"]) for r in csv.DictReader(stream)
                        if r["model"] == "facebook/opt-66b" and r["tp"] == "4" and r["pp"] == "1")

    (figures,) = import_distserve(DISTSERVE, DISTSERVE_KV, prompt_size=1024, prefill_batch_size=2,
                                  decode_batch_size=32, decode_context=1500,
                                  model="facebook/opt-66b", tensor_parallel=4)
    assert figures.prefill_tokens_per_gpu_second == pytest.approx(2048 / (prefill_ms / 1000) / 4,
                                                                  rel=1e-5)
    assert figures.decode_tokens_per_gpu_second == pytest.approx(32 / (step_ms / 1000) / 4, rel=1e-5)
    assert figures.kv_tokens_per_gpu == pytest.approx(capacity / 4, rel=1e-5)


@needs_data
def test_splitwise_unknown_batch_lists_choices():
    message = raises_data_error(import_splitwise, SPLITWISE, decode_batch_size=3)
    assert "splitwise_sim_perf_model.csv" in message
    assert "batch_size" in message
    assert "[1, 2, 4, 8, 16, 32, 64]" in message


# --- Malformed traces -----------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE_ROWS = ("2023-11-16 18:17:03.9799600,4808,10\n"
              "2023-11-16 18:17:04.0319600,3180,8\n"
              "2023-11-16 18:17:05.0781490,110,27\n")


def test_truncated_csv_names_line(tmp_path):
    path = write(tmp_path / "trace.csv", AZURE_HEADER + AZURE_ROWS + "2023-11-16 18:17:06.1,549\n")
    message = raises_data_error(read_trace, path)
    assert "trace.csv" in message
    assert "line 5" in message
    assert "truncated" in message


def test_missing_column_is_named(tmp_path):
    path = write(tmp_path / "trace.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,4808\n")
    message = raises_data_error(read_trace, path)
    assert "trace.csv" in message
    assert "column GeneratedTokens" in message
    assert "missing" in message


def test_non_numeric_tokens_are_named(tmp_path):
    rows = AZURE_ROWS.replace("3180", "abc")
    message = raises_data_error(read_trace, write(tmp_path / "trace.csv", AZURE_HEADER + rows))
    assert "trace.csv" in message
    assert "line 3, column ContextTokens" in message
    assert "'abc'" in message
    assert "not a number" in message


def test_fractional_tokens_are_rejected(tmp_path):
    rows = AZURE_ROWS.replace(",10\n", ",10.5\n")
    message = raises_data_error(read_trace, write(tmp_path / "trace.csv", AZURE_HEADER + rows))
    assert "column GeneratedTokens" in message
    assert "whole number" in message


def test_bad_timestamp_is_named(tmp_path):
    rows = AZURE_ROWS.replace("2023-11-16 18:17:04.0319600", "yesterday")
    message = raises_data_error(read_trace, write(tmp_path / "trace.csv", AZURE_HEADER + rows))
    assert "line 3, column TIMESTAMP" in message
    assert "'yesterday'" in message


def test_empty_trace_is_rejected(tmp_path):
    message = raises_data_error(read_trace, write(tmp_path / "trace.csv", AZURE_HEADER))
    assert "trace.csv" in message
    assert "no requests" in message
    message = raises_data_error(read_trace, write(tmp_path / "empty.csv", ""))
    assert "empty.csv" in message
    assert "empty" in message


def test_single_timestamp_has_no_rate(tmp_path):
    trace = read_trace(write(tmp_path / "trace.csv", AZURE_HEADER + AZURE_ROWS.splitlines()[0] + "\n"))
    message = raises_data_error(derive_task_classes, trace)
    assert "duration" in message
    classes = derive_task_classes(trace, classes=1, duration_seconds=60.0)
    assert classes.classes[0].volume == pytest.approx(60.0)


def test_tied_lengths_drop_empty_classes(tmp_path):
    rows = "".join(f"2023-11-16 18:17:{second:02d},100,5\n" for second in range(10))
    summary = derive_task_classes(read_trace(write(tmp_path / "t.csv", AZURE_HEADER + rows)), classes=3)
    assert len(summary.classes) == 1
    assert summary.classes[0].requests == 10


def test_unsorted_trace_is_ordered(tmp_path):
    rows = AZURE_ROWS.splitlines()
    trace = read_trace(write(tmp_path / "t.csv", AZURE_HEADER + "\n".join(reversed(rows)) + "\n"))
    assert list(trace.arrival_seconds) == sorted(trace.arrival_seconds)
    assert trace.input_tokens[0] == 4808


MOONCAKE_LINES = [
    {"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [0, 1]},
    {"timestamp": 5, "input_length": 700, "output_length": 20, "hash_ids": [0, 2]},
    {"timestamp": 9, "input_length": 1100, "output_length": 30, "hash_ids": [0, 1, 3]},
]


def _mooncake(tmp_path, records, name="trace.jsonl") -> Path:
    return write(tmp_path / name, "\n".join(json.dumps(r) for r in records) + "\n")


def test_mooncake_small_reuse(tmp_path):
    reuse = prefix_reuse(read_trace(_mooncake(tmp_path, MOONCAKE_LINES)))
    # Repeated blocks: id 0 twice (512 tokens each) and id 1 once (its 488 tokens in request 1).
    assert reuse.reusable_tokens == 512 + 512 + 512
    assert reuse.input_tokens == 2800
    assert reuse.distinct_blocks == 4


def test_mooncake_bad_json_line(tmp_path):
    text = "\n".join(json.dumps(r) for r in MOONCAKE_LINES) + '\n{"timestamp": 12, "input_len'
    message = raises_data_error(read_trace, write(tmp_path / "trace.jsonl", text))
    assert "trace.jsonl" in message
    assert "line 4" in message
    assert "truncated" in message


def test_mooncake_missing_field(tmp_path):
    records = [dict(MOONCAKE_LINES[0]), {"timestamp": 3, "input_length": 5, "output_length": 1}]
    message = raises_data_error(read_trace, _mooncake(tmp_path, records))
    assert "line 2, field hash_ids" in message
    assert "missing" in message


def test_mooncake_non_numeric_length(tmp_path):
    records = [dict(MOONCAKE_LINES[0]), dict(MOONCAKE_LINES[1], output_length="many")]
    message = raises_data_error(read_trace, _mooncake(tmp_path, records))
    assert "line 2, field output_length" in message
    assert "'many'" in message


def test_mooncake_blocks_must_cover_input(tmp_path):
    records = [dict(MOONCAKE_LINES[0], input_length=5000)]
    message = raises_data_error(read_trace, _mooncake(tmp_path, records))
    assert "line 1, field hash_ids" in message
    assert "does not cover input_length 5000" in message


def test_azure_trace_has_no_blocks(tmp_path):
    trace = read_trace(write(tmp_path / "trace.csv", AZURE_HEADER + AZURE_ROWS))
    message = raises_data_error(prefix_reuse, trace)
    assert "hash_ids" in message
    assert "Mooncake" in message


# --- Malformed and conditional prices ------------------------------------------------


def _genai(tmp_path, prices, name="prices.json") -> Path:
    data = [{"id": "acme", "models": [{"id": "coder", "prices": prices}]}]
    return write(tmp_path / name, json.dumps(data))


TIERED = {"input_mtok": {"base": 2, "tiers": [{"start": 100000, "price": 4},
                                              {"start": 500000, "price": 8}]},
          "output_mtok": 10}


def test_tier_rule_by_prompt_length(tmp_path):
    path = _genai(tmp_path, TIERED)
    assert read_prices(path, "2025-01-01").find("acme", "coder").input == 2
    assert read_prices(path, "2025-01-01", prompt_tokens=100000).find("acme", "coder").input == 2
    assert read_prices(path, "2025-01-01", prompt_tokens=100001).find("acme", "coder").input == 4
    found = read_prices(path, "2025-01-01", prompt_tokens=900000).find("acme", "coder")
    assert found.input == 8
    assert found.output == 10
    assert "tier above 500000 prompt tokens" in found.rule


def test_time_window_rule(tmp_path):
    entries = [{"prices": {"input_mtok": 1, "output_mtok": 2}},
               {"constraint": {"start_time": "00:30:00Z", "end_time": "16:30:00Z"},
                "prices": {"input_mtok": 3, "output_mtok": 6}}]
    path = _genai(tmp_path, entries)
    inside = read_prices(path, "2025-03-01T10:00:00Z").find("acme", "coder")
    outside = read_prices(path, "2025-03-01T20:00:00Z").find("acme", "coder")
    assert inside.input == 3
    assert "window" in inside.rule
    assert outside.input == 1
    assert outside.rule.startswith("entry 1 of 2")
    offset = read_prices(path, "2025-03-01T22:00:00+12:00").find("acme", "coder")
    assert offset.input == 3  # 10:00 UTC


def test_time_window_across_midnight(tmp_path):
    entries = [{"prices": {"input_mtok": 1, "output_mtok": 2}},
               {"constraint": {"start_time": "22:00:00Z", "end_time": "06:00:00Z"},
                "prices": {"input_mtok": 0.5, "output_mtok": 1}}]
    path = _genai(tmp_path, entries)
    assert read_prices(path, "2025-03-01T23:00:00Z").find("acme", "coder").input == 0.5
    assert read_prices(path, "2025-03-01T03:00:00Z").find("acme", "coder").input == 0.5
    assert read_prices(path, "2025-03-01T12:00:00Z").find("acme", "coder").input == 1


def test_start_date_rule(tmp_path):
    entries = [{"prices": {"input_mtok": 10, "output_mtok": 40}},
               {"constraint": {"start_date": "2025-06-10"}, "prices": {"input_mtok": 2, "output_mtok": 8}}]
    path = _genai(tmp_path, entries)
    assert read_prices(path, "2025-06-09T23:59:59Z").find("acme", "coder").input == 10
    assert read_prices(path, "2025-06-10T00:00:00Z").find("acme", "coder").input == 2


def test_bad_tier_is_named(tmp_path):
    path = _genai(tmp_path, {"input_mtok": {"base": 2, "tiers": [{"start": "big", "price": 4}]},
                             "output_mtok": 10})
    message = raises_data_error(read_prices, path, "2025-01-01")
    assert "prices.json" in message
    assert "providers[acme].models[coder].prices.input_mtok.tiers[0]" in message


def test_bad_constraint_is_named(tmp_path):
    entries = [{"prices": {"input_mtok": 1, "output_mtok": 2}},
               {"constraint": {"weekday": "monday"}, "prices": {"input_mtok": 3, "output_mtok": 6}}]
    message = raises_data_error(read_prices, _genai(tmp_path, entries), "2025-01-01")
    assert "providers[acme].models[coder].prices[1].constraint" in message
    assert "not a known constraint" in message


def test_non_numeric_price_is_named(tmp_path):
    message = raises_data_error(read_prices, _genai(tmp_path, {"input_mtok": "cheap", "output_mtok": 1}),
                                "2025-01-01")
    assert "prices.input_mtok" in message
    assert "'cheap'" in message


def test_json_prices_need_as_of(tmp_path):
    message = raises_data_error(read_prices, _genai(tmp_path, TIERED))
    assert "as_of" in message
    message = raises_data_error(read_prices, _genai(tmp_path, TIERED), "next tuesday")
    assert "'next tuesday'" in message


def test_model_without_output_price_is_left_out(tmp_path):
    prices = read_prices(_genai(tmp_path, {"input_mtok": 0.1}), "2025-01-01")
    assert prices.prices == []
    message = raises_data_error(prices.find, "acme", "coder")
    assert "no usable price" in message


def test_compact_csv_bad_cell(tmp_path):
    header = ("provider,model_id,model_name,input_usd_per_mtok,cached_input_read_usd_per_mtok,"
              "output_usd_per_mtok\n")
    path = write(tmp_path / "compact.csv", header + "acme,coder,Coder,1,,free\n")
    message = raises_data_error(read_prices, path)
    assert "compact.csv" in message
    assert "line 2, column output_usd_per_mtok" in message


def test_compact_csv_blank_cached_price(tmp_path):
    header = ("provider,model_id,model_name,input_usd_per_mtok,cached_input_read_usd_per_mtok,"
              "output_usd_per_mtok\n")
    found = read_prices(write(tmp_path / "c.csv", header + "acme,coder,Coder,1,,4\n")).find("acme", "coder")
    assert (found.input, found.cached_input, found.output) == (1.0, None, 4.0)


# --- Malformed quality matrices --------------------------------------------------------

MATRIX_TEXT = ("instance_id,run-a,run-b,run-c\n"
               "t1,1,1,1\n"
               "t2,1,,\n"
               "t3,0,0,\n"
               "t4,,,\n")


def test_blank_is_not_a_failure(tmp_path):
    matrix = read_resolved_matrix(write(tmp_path / "m.csv", MATRIX_TEXT))
    assert matrix.runs == ["run-a", "run-b", "run-c"]
    summary = import_quality(tmp_path / "m.csv", min_attempts=1)
    run_b = summary.rate("run-b", "all")
    assert (run_b.resolved, run_b.attempted) == (1, 2)
    assert summary.grouped_tasks == 3  # t4 was attempted by no run
    # t2 has one success in one attempt: easy. Counting its blanks as failures would make it 1/3.
    assert summary.group_sizes == {"hard": 1, "medium": 0, "easy": 2}


def test_bad_matrix_cell_is_named(tmp_path):
    path = write(tmp_path / "m.csv", MATRIX_TEXT.replace("t3,0,0,", "t3,0,yes,"))
    message = raises_data_error(read_resolved_matrix, path)
    assert "m.csv" in message
    assert "line 4, column run-b" in message
    assert "'yes'" in message


def test_missing_subset_column_is_named(tmp_path):
    message = raises_data_error(read_resolved_matrix, write(tmp_path / "m.csv", MATRIX_TEXT),
                                subset_column="in_leaderboard_730_set")
    assert "column in_leaderboard_730_set" in message
    assert "missing" in message


def test_bad_thresholds_are_rejected(tmp_path):
    path = write(tmp_path / "m.csv", MATRIX_TEXT)
    message = raises_data_error(import_quality, path, thresholds=(0.7, 0.3))
    assert "thresholds" in message


# --- Malformed serving tables ----------------------------------------------------------


def test_splitwise_missing_column(tmp_path):
    path = write(tmp_path / "perf.csv", "model,hardware,prompt_size,batch_size\nx,y,1,1\n")
    message = raises_data_error(import_splitwise, path)
    assert "perf.csv" in message
    assert "prompt_time" in message


def test_distserve_bad_coefficients(tmp_path):
    path = write(tmp_path / "profile.json", json.dumps({"m": {"1": {
        "decoding_large_small_bs_threshold": 95, "prefill": [1, 2], "decoding_smallbs": [1, 1, 1],
        "decoding_largebs": [1, 1, 1]}}}))
    message = raises_data_error(import_distserve, path)
    assert "profile.json" in message
    assert "m.1.prefill" in message


# --- Command line -------------------------------------------------------------------------


def test_cli_import_bad_trace_exits_2(tmp_path):
    path = write(tmp_path / "trace.csv", AZURE_HEADER + AZURE_ROWS.replace("3180", "abc"))
    result = runner.invoke(app, ["import", "traces", str(path)])
    assert result.exit_code == 2
    assert "line 3, column ContextTokens" in result.stderr
    assert "Traceback" not in result.output


def test_cli_import_traces_json(tmp_path):
    path = _mooncake(tmp_path, MOONCAKE_LINES)
    result = runner.invoke(app, ["import", "traces", str(path), "--classes", "1", "--json",
                                 "--points", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["classes"]["classes"][0]["requests"] == 3
    assert data["prefix_reuse"]["reusable_tokens"] == 1536
    assert len(data["cache_curve"]["sizes_blocks"]) == 3


def test_cli_import_prices_table(tmp_path):
    result = runner.invoke(app, ["import", "prices", str(_genai(tmp_path, TIERED)),
                                 "--as-of", "2025-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "coder" in result.stdout
    assert "base tier" in result.stdout


def test_cli_import_quality_json(tmp_path):
    path = write(tmp_path / "m.csv", MATRIX_TEXT)
    result = runner.invoke(app, ["import", "quality", str(path), "--min-attempts", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["group_sizes"]["easy"] == 2


@needs_data
def test_cli_import_serving_table():
    result = runner.invoke(app, ["import", "serving", str(SPLITWISE), "--model", "llama2-70b",
                                 "--hardware", "h100-80gb"])
    assert result.exit_code == 0, result.output
    assert "llama2-70b" in result.stdout
    assert "delay scale" in result.stdout
