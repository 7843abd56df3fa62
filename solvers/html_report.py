"""The HTML report of a JSON report (the ``tokenomy report`` command is in ``cli_report``).

:func:`render_html` turns a checked JSON report (solve, compare, or either with
a ``decomposition`` trajectory) into one self-contained HTML page. Figures are
SVG images embedded as base64 ``data:`` URIs, the page has no script and
links no font or image, and its Content-Security-Policy forbids any fetch. Jinja2
autoescaping escapes every string that comes from the instance.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import jinja2

from .evaluation import COST_COLUMNS
from .failures import failure_location
from .html_figures import (
    MAX_PRICE_PANELS,
    MAX_ROWS,
    bounds_figure,
    data_uri,
    equimarginal_figure,
    gap_figure,
    price_figure,
    token_figure,
)
from .html_template import TEMPLATE
from .report import write_atomic
from .report_input import load_report, report_kinds

logger = logging.getLogger(__name__)

IN_USE = 1e-6
"""Routing share below which a model is left out of a task's allocation table."""

COST_TITLES = {"compute_cost": "compute", "latency_cost": "latency", "risk_cost": "risk",
               "serving_cost": "serving", "review_cost": "review", "other_cost": "other"}
ROW_TITLES = {"shared": "shared (serving and capital)", "budgets": "budgets at their prices"}


def render_html(report: dict, source: str = "") -> str:
    """Return the HTML page of a checked report; ``source`` names the file it came from."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(usd=format_usd, num=format_number, pct=format_percent,
                               share=format_share)
    template = environment.from_string(TEMPLATE)
    return template.render(**build_context(report, source))


def write_html(report_path: str | Path, html_path: str | Path) -> Path:
    """Read the report at ``report_path`` and write its HTML page to ``html_path`` atomically."""
    report = load_report(report_path)
    html = render_html(report, Path(report_path).name)
    path = write_atomic(Path(html_path), html)
    logger.info("wrote %s (%d characters)", path, len(html))
    return path


# -- context ------------------------------------------------------------------


def build_context(report: dict, source: str = "") -> dict:
    """Return the values the template needs, with figures rendered to ``data:`` URIs."""
    kinds = report_kinds(report)
    instance = report.get("instance") or "instance"
    context = {
        "title": f"tokenomy report: {instance}",
        "max_rows": MAX_ROWS,
        "max_price_panels": MAX_PRICE_PANELS,
        "instance": instance,
        "source": source,
        "kinds": kinds,
        "report": report,
        "solve": _solve_context(report) if "solve" in kinds else None,
        "compare": _compare_context(report) if "compare" in kinds else None,
        "evaluation": _evaluation_context(report.get("evaluation")),
        "decomposition": (_decomposition_context(report["decomposition"], report)
                          if "decomposition" in kinds else None),
    }
    context["sections"] = _sections(context)
    return context


def _sections(context: dict) -> list[tuple[str, str]]:
    sections = [("summary", "Summary")]
    if context["solve"]:
        sections += [("prices", "Prices"), ("allocation", "Routing and tokens")]
        if context["solve"]["equimarginal"]:
            sections.append(("equimarginal", "Equimarginal check"))
    if context["compare"]:
        sections.append(("comparison", "Siloed versus global"))
    if context["evaluation"]:
        sections.append(("evaluation", "Token-aware evaluation"))
    if context["decomposition"]:
        sections.append(("decomposition", "Decomposition"))
    return sections


def _solve_context(report: dict) -> dict:
    prices = [_price_row(row) for row in report.get("prices") or []]
    equimarginal = report.get("equimarginal") or []
    equimarginal_chart = equimarginal_figure(equimarginal)
    token_chart = token_figure(report.get("tokens") or [])
    return {
        "certified": bool(report.get("certified", report.get("status") == "optimal")),
        "prices": prices,
        "withheld": [row for row in prices if row["withheld"]],
        "withheld_reasons": list(dict.fromkeys(row.get("reason") for row in prices
                                               if row["withheld"] and row.get("reason"))),
        "welfare_parts": sorted((report.get("welfare_parts") or {}).items()),
        "normalized": report.get("normalized_prices") or {},
        "tasks": allocation_tables(report.get("routing") or [], report.get("tokens") or []),
        "pools": report.get("pools") or [],
        "capital": report.get("capital") or {},
        "token_figure": data_uri(token_chart) if token_chart else None,
        "equimarginal": equimarginal,
        "equimarginal_figure": data_uri(equimarginal_chart) if equimarginal_chart else None,
    }


def allocation_tables(routing: list[dict], tokens: list[dict]) -> list[dict]:
    """Return one table per task: each model in use, its share, requests and amount per use."""
    tasks: dict[str, dict] = {}
    for row in routing:
        table = tasks.setdefault(row["task"], {"task": row["task"], "uses": [], "models": []})
        share = row.get("share")
        if share is not None and share <= IN_USE:
            continue
        table["models"].append({"model": row["model"], "share": share,
                                "requests": row.get("requests"), "amounts": {}})
    for row in tokens:
        table = tasks.setdefault(row["task"], {"task": row["task"], "uses": [], "models": []})
        use = (row["use"], row["unit"])
        if use not in table["uses"]:
            table["uses"].append(use)
        model = next((item for item in table["models"] if item["model"] == row["model"]), None)
        if model is None:
            model = {"model": row["model"], "share": None, "requests": None, "amounts": {}}
            table["models"].append(model)
        model["amounts"][use] = row["per_request"]
    return list(tasks.values())


def _price_row(row: dict) -> dict:
    withheld = row["price"] is None
    meaning = price_meaning(row)
    return {**row, "withheld": withheld, "meaning": meaning,
            "mode_text": "set in the instance" if row.get("mode") == "price" else row.get("mode") or ""}


def price_meaning(row: dict) -> str:
    """Return one sentence saying what the price of a price-table row means."""
    label = row["market"]
    kind = row.get("kind") or label.split("[")[0]
    mode = row.get("mode")
    index = label[label.index("[") + 1:-1] if "[" in label and label.endswith("]") else None
    name = row.get("market_name") or label
    pool = index if index and index.startswith("pool") else f"pool {index}"
    per = (row.get("unit") or "").removeprefix("USD per ") or "unit"
    set_here = mode == "price"
    sentences = {
        "routing": f"Surplus of serving one more {index} request at the current allocation; "
                   "the right-hand side is the task's volume.",
        "compute": ("Charge per dollar of list-price compute spend." if set_here else
                    "Welfare that one more dollar of compute budget adds beyond the dollar itself; "
                    "a compute dollar is worth 1 + this price."),
        "latency": ("Cost of one request-second of service time." if set_here else
                    f"Welfare from relaxing the mean-latency SLA of {index} by one second; divide "
                    "by the task's volume for USD per request-second."),
        "risk": ("Charge per dollar of expected loss from wrong irreversible actions." if set_here
                 else "Welfare from allowing one more dollar of expected loss from wrong "
                      "irreversible actions."),
        "oversight": ("Charge per minute of human review." if set_here else
                      "Value of one more minute of human review."),
        "gpu": f"Value of one more GPU in {pool}; inference and training compete for it.",
        "prefill": f"Full marginal cost of one more prefill token in {pool}: the GPU capacity "
                   "it takes plus the queueing delay it adds for every other request.",
        "decode": f"Full marginal cost of one more decode token in {pool}: the GPU capacity "
                  "it takes plus the queueing delay it adds for every other request.",
        "kv": f"Value of one more token of KV-cache capacity held during decode in {pool}.",
        "resource": (f"Price of one {per} of {name}." if set_here else
                     f"Welfare from one more {per} of the {name} cap."),
    }
    return sentences.get(kind, "Change in optimal welfare per unit of this market's "
                               "right-hand side.")


def _compare_context(report: dict) -> dict:
    chart = gap_figure(report)
    views = report.get("views") or {}
    policies = report.get("policies") or {}
    differences = report.get("differences") or {}
    return {
        "views": [(layer, views[layer], policies.get(layer)) for layer in views],
        "gap_by_layer": list((report.get("gap_by_layer") or {}).items()),
        "gap_by_part": list((report.get("gap_by_part") or {}).items()),
        "gap_by_market": report.get("gap_by_market") or [],
        "overruns": report.get("overruns") or [],
        "failure_modes": [failure_mode_row(row) for row in report.get("failure_modes") or []],
        "attribution": report.get("attribution"),
        "routing": differences.get("routing") or [],
        "tokens": differences.get("tokens") or [],
        "pools": differences.get("pools") or [],
        "equilibrium": report.get("serving_equilibrium"),
        "figure": data_uri(chart) if chart else None,
    }


def failure_mode_row(row: dict) -> dict:
    """Return a failure mode as ``mode``, ``where`` and the numbers that triggered it."""
    where = failure_location(row)
    skip = {"mode", "task", "pool", "phase", "chosen", "better", "model", "unit"}
    numbers = [(key.replace("_", " "), value) for key, value in row.items()
               if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool)]
    return {"mode": row["mode"], "where": where, "numbers": numbers, "unit": row.get("unit")}


def _evaluation_context(evaluation: dict | None) -> dict | None:
    if not evaluation:
        return None
    rows = []
    for row in evaluation.get("rows") or []:
        title = row["task"] if row.get("row") == "task" else ROW_TITLES.get(row["row"], row["row"])
        rows.append({**row, "title": title, "own": row.get("row") == "task"})
    columns = [(key, COST_TITLES[key]) for key in COST_COLUMNS
               if any(key in row for row in rows)]
    return {"rows": rows, "columns": columns, "totals": evaluation.get("totals") or {},
            "realized": evaluation.get("realized"), "optimal": evaluation.get("optimal"),
            "reason": evaluation.get("reason"),
            "compare": evaluation.get("realized") != evaluation.get("optimal")}


def _decomposition_context(decomposition: dict, report: dict) -> dict:
    iterations = decomposition["iterations"]
    units = {row["market"]: row.get("unit") for row in report.get("prices") or []}
    bounds_chart = bounds_figure(iterations)
    price_chart = price_figure(iterations, units)
    labels = list(dict.fromkeys(label for row in iterations for label in row["prices"]))
    last = iterations[-1] if iterations else None
    return {
        "method": decomposition["method"],
        "termination": decomposition["termination"],
        "iterations": iterations,
        "last": last,
        "price_labels": labels,
        "final_prices": [(label, (last or {}).get("prices", {}).get(label),
                          (last or {}).get("excess", {}).get(label), units.get(label))
                         for label in labels],
        "layers": list(dict.fromkeys(layer for row in iterations for layer in row["distance"])),
        "bounds_figure": data_uri(bounds_chart) if bounds_chart else None,
        "price_figure": data_uri(price_chart) if price_chart else None,
    }


# -- number formats -----------------------------------------------------------


def format_usd(value) -> str:
    """Format USD with thousands separators and cents; ``—`` for a missing value."""
    if value is None:
        return "—"
    return f"{round(value, 2) + 0.0:,.2f}"      # + 0.0 turns -0.0 into 0.0


def format_number(value, digits: int = 4) -> str:
    """Format a number to ``digits`` significant digits, with thousands separators."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    if -3 <= magnitude < 9:
        return f"{value:,.{max(0, digits - 1 - magnitude)}f}"
    return f"{value:.{digits - 1}e}"


def format_percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def format_share(value) -> str:
    return "—" if value is None else f"{value:.3f}"
