"""The JSON report of a solve and its CSV tables, written atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ..model.delay import delay_per_token
from ..model.economy import Economy
from ..model.schema import SCHEMA_VERSION
from .analysis import USED, equimarginal, review_minutes_per_request, tokens_per_request
from .evaluation import evaluate_solve
from .extensions import extension_sections
from .result import Result

logger = logging.getLogger(__name__)

REPORT_VERSION = 1

UNITS = {
    "welfare": "USD per period",
    "routing.share": "share of the task's requests",
    "routing.requests": "requests per period",
    "tokens.tokens_per_request": "tokens per routed request",
    "equimarginal": "USD per token (token, training), per review minute (review), per request (route, defer)",
    "pools.load": "tokens per second",
    "pools.waiting": "seconds per token",
    "evaluation": "USD per period at the joint optimum's prices",
}

CSV_TABLES = ("prices", "routing", "tokens", "equimarginal", "pools", "evaluation")


def build_report(economy: Economy, result: Result) -> dict:
    """Return the full report of a solve as JSON-ready data."""
    report: dict = {
        "report_version": REPORT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "instance": economy.instance.name,
        "source": economy.instance.metadata.get("source"),
        "status": result.status.value,
        "termination": result.termination.value,
        "certified": result.certified,
        "solver": result.solver,
        "attempts": result.attempts,
        "message": result.message or None,
        "time_limit": result.time_limit,
        "checks": result.checks,
        "diagnosis": result.diagnosis,
        "welfare": result.welfare,
        "bound": result.bound,
        "gap": result.gap,
        "welfare_parts": result.welfare_parts,
        "timings": {"build": result.timings.build, "compile": result.timings.compile,
                    "solve": result.timings.solve},
        "units": UNITS,
        "prices": [price.as_dict() for price in result.prices],
        "normalized_prices": normalized_prices(economy, result),
    }
    if result.welfare is None:
        report.update(routing=[], tokens=[], equimarginal=[], pools=[], capital={},
                      tenants={"tenants": [], "shared": []}, layers={},
                      evaluation=evaluate_solve(economy, result))
        return _clean(report)
    report["routing"] = routing_table(economy)
    report["tokens"] = token_table(economy)
    report["equimarginal"] = equimarginal(economy, result)
    report["pools"] = pool_table(economy)
    report["capital"] = capital_summary(economy)
    report["evaluation"] = evaluate_solve(economy, result)
    report.update(extension_sections(economy, result))
    return _clean(report)


def normalized_prices(economy: Economy, result: Result) -> dict:
    """Return (1, lambda, rho): latency and risk prices in compute dollars.

    A dollar of compute is worth ``1 + compute price`` of welfare, because list
    prices are already charged in welfare and the compute market's price is
    what one more dollar of budget adds on top.
    """
    if not result.certified:
        return {"reason": "prices are not certified for this solve"}
    by_kind: dict[str, list] = {}
    for price in result.prices:
        by_kind.setdefault(price.kind, []).append(price)
    # The total compute market: one row named like the market (tenant rows are name[tenant]).
    compute = [price for price in by_kind.get("compute", []) if price.row == price.market]
    dollar = 1.0 + (compute[0].price if compute else 0.0)
    normalized: dict = {"compute_dollar_value": dollar, "compute": 1.0}
    latency = by_kind.get("latency", [])
    if latency:
        volume = dict(zip(economy.data.tasks, economy.data.volume, strict=True))
        normalized["latency"] = {
            price.row: (price.price / volume[_index(price.row)] if price.mode == "budget"
                        else price.price) / dollar
            for price in latency
        }
        normalized["latency_unit"] = "compute dollars per request-second"
    risk = by_kind.get("risk", [])
    if risk:
        normalized["risk"] = risk[0].price / dollar
        normalized["risk_unit"] = "compute dollars per USD of expected loss"
    return normalized


def routing_table(economy: Economy) -> list[dict]:
    data = economy.data
    route = economy.builder.variables["route"].value
    defer = economy.builder.variables["defer"].value
    rows = [{"task": t, "model": m, "share": float(route[k]),
             "requests": float(route[k] * data.volume[data.option_task[k]])}
            for k in range(data.option_count) for t, m in [data.option_label(k)]]
    rows += [{"task": t, "model": "defer", "share": float(defer[x]),
              "requests": float(defer[x] * data.volume[x])}
             for x, t in enumerate(data.tasks) if data.defer_enabled[x]]
    return rows


def token_table(economy: Economy) -> list[dict]:
    data = economy.data
    route = economy.builder.variables["route"].value
    tau = tokens_per_request(economy)
    minutes = review_minutes_per_request(economy)
    rows = []
    for k in np.flatnonzero(route > USED):
        task, model = data.option_label(int(k))
        for a, use in enumerate(data.uses):
            if np.isfinite(tau[k, a]):
                rows.append({"task": task, "model": model, "use": use, "unit": "tokens",
                             "per_request": float(tau[k, a])})
        for h, use in enumerate(data.reviews):
            if minutes[k, h] > 0:
                rows.append({"task": task, "model": model, "use": use, "unit": "minutes",
                             "per_request": float(minutes[k, h])})
    return rows


def pool_table(economy: Economy) -> list[dict]:
    data, variables = economy.data, economy.builder.variables
    rows = []
    for p, name in enumerate(data.pools):
        rows.append(pool_row(name, economy.instance.pools[name],
                             {phase: float(variables[f"gpus_{phase}"].value[p]) for phase in PHASES},
                             {phase: float(variables[f"load_{phase}"].value[p]) for phase in PHASES}))
    return rows


PHASES = ("prefill", "decode")


def pool_row(name: str, pool, gpus: dict[str, float], load: dict[str, float]) -> dict:
    """Return one pool's row: GPUs, load in tokens, utilisation and waiting per phase.

    ``gpus`` and ``load`` map each phase to GPUs and to load in GPU-equivalents.
    """
    row: dict = {"pool": name}
    throughputs = {"prefill": pool.prefill_tokens_per_gpu_second,
                   "decode": pool.decode_tokens_per_gpu_second}
    for phase in PHASES:
        row[f"gpus_{phase}"] = gpus[phase]
        row[f"{phase}_load"] = load[phase] * throughputs[phase]
        row[f"{phase}_utilization"] = load[phase] / gpus[phase] if gpus[phase] > USED else 0.0
        if pool.delay is not None and gpus[phase] > USED:
            row[f"{phase}_waiting"] = delay_per_token(pool.delay, load[phase], gpus[phase])
    return row


def capital_summary(economy: Economy) -> dict:
    summary: dict = {}
    capital = economy.layer("capital")
    variables = economy.builder.variables
    cache_index = getattr(capital, "cache_index", None)
    if cache_index is not None and "cache_size" in variables:
        _, caches, size_scale = cache_index
        summary["cache"] = [
            {"pool": economy.data.pools[p], "size_gb": float(variables["cache_size"].value[i] * size_scale[i]),
             "hit_share_of_reusable": float(1 - variables["cache_miss"].value[i])}
            for i, p in enumerate(caches)]
    training = getattr(capital, "training_inputs", None)
    if training is not None and "training" in variables:
        inputs, scales = training
        summary["training"] = {
            "tokens": {name: float(variables["training"].value[i] * scales[i]) for i, name in enumerate(inputs)},
            "capability_gain_share": float(variables["capability"].value[0]),
        }
    return summary


# -- writing ------------------------------------------------------------------


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False)


def write_outputs(report: dict, directory: str | Path) -> list[Path]:
    """Write ``report.json`` and one CSV per table into ``directory``, atomically.

    Each file is written to a temporary file in the same directory and renamed,
    so an interrupted run never leaves a truncated file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_atomic(directory / "report.json", to_json(report))]
    for table in CSV_TABLES:
        rows = _table_rows(report.get(table))
        written.append(write_atomic(directory / f"{table}.csv", _csv(rows)))
    logger.info("wrote %d files to %s", len(written), directory)
    return written


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _table_rows(table) -> list[dict]:
    """Return the rows of a report table: a list, or the ``rows`` of a dict such as ``evaluation``."""
    if isinstance(table, dict):
        return table.get("rows") or []
    return table or []


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _index(row: str) -> str:
    return row[row.index("[") + 1:-1]


def _clean(value):
    """Replace NaN and infinity by None so the report is strict JSON."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
