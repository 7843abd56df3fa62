"""Import provider price lists: USD per million input, cached-input and output tokens.

Two formats are read:

- the genai-prices JSON: a list of providers, each with ``models``, each with
  ``prices`` that are either one price set or a list of conditional price sets;
- the compact CSV with one row per model (``provider``, ``model_id``,
  ``input_usd_per_mtok``, ``cached_input_read_usd_per_mtok``,
  ``output_usd_per_mtok``, ...).

Rules applied to the genai-prices JSON, reported per model in ``rule``:

- Conditional prices: the last entry whose constraint applies at ``as_of``
  is used, and the first entry when none applies (the rule genai-prices
  states for its own data). A ``start_date`` applies from that UTC date on.
  A ``start_time``/``end_time`` window applies when the UTC time of day is in
  [start, end), and a window whose end is before its start wraps past midnight.
- Tiers by prompt length: with ``prompt_tokens`` empty the base tier is used.
  Otherwise every token of the request is priced at the tier with the largest
  ``start`` below ``prompt_tokens``, which is how providers publish long-context
  prices (a prompt over 200,000 tokens pays the higher rate for all tokens).

The compact CSV lists only base-tier prices; tiers and conditions appear in
its ``genai_prices_notes`` column, which is passed through as ``note``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MISSING, DataError
from ._files import file_name, read_json, read_table

logger = logging.getLogger(__name__)

PRICE_FIELDS = {"input": "input_mtok", "cached_input": "cache_read_mtok", "output": "output_mtok"}
COMPACT_COLUMNS = {"input": "input_usd_per_mtok", "cached_input": "cached_input_read_usd_per_mtok",
                   "output": "output_usd_per_mtok"}
CONSTRAINT_KEYS = ({"start_date"}, {"start_time", "end_time"})


@dataclass
class ModelPrice:
    """Prices of one provider's model in USD per million tokens (the instance schema's unit)."""

    provider: str
    model: str
    name: str | None
    input: float
    output: float
    cached_input: float | None
    rule: str
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def schema_prices(self) -> dict:
        """Return the ``models.<m>.prices`` mapping of an instance."""
        prices = {"input": self.input, "output": self.output}
        if self.cached_input is not None:
            prices["cached_input"] = self.cached_input
        return prices


@dataclass
class PriceList:
    """Every model with an input and an output token price, and the ones left out."""

    source: str
    as_of: str | None
    prompt_tokens: int | None
    prices: list[ModelPrice]
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        return {"source": self.source, "as_of": self.as_of, "prompt_tokens": self.prompt_tokens,
                "prices": [price.to_dict() for price in self.prices], "skipped": self.skipped}

    def find(self, provider: str | None, model: str, location: str = "model") -> ModelPrice:
        """Return the price of ``model`` (of ``provider`` when given), raising DataError if absent.

        Without a provider the model id must be unique across providers.
        """
        matches = [p for p in self.prices
                   if p.model == model and (provider is None or p.provider == provider)]
        if len(matches) == 1:
            return matches[0]
        label = model if provider is None else f"{provider}/{model}"
        if len(matches) > 1:
            providers = ", ".join(sorted(p.provider for p in matches))
            raise DataError(self.source, location, label, "is listed by several providers",
                            f"name the provider as well (one of: {providers})")
        key = f"{provider}/{model}" if provider else model
        reason = self.skipped.get(key)
        if reason:
            raise DataError(self.source, location, label, f"has no usable price ({reason})",
                            "choose another model of the price list")
        similar = sorted(f"{p.provider}/{p.model}" for p in self.prices
                         if model.split("-")[0] in p.model)[:8]
        hint = f"similar entries: {', '.join(similar)}" if similar else "check the spelling"
        raise DataError(self.source, location, label, "is not in the price list", hint)


def read_prices(path: str | Path, as_of: datetime | str | None = None,
                prompt_tokens: int | None = None) -> PriceList:
    """Read a genai-prices JSON (``as_of`` required) or a compact price CSV, by file suffix."""
    if Path(path).suffix.lower() == ".json":
        if as_of is None:
            raise DataError(file_name(path), "as_of", MISSING,
                            "is required because JSON prices may depend on the date and time",
                            "give a timestamp such as 2025-11-01T12:00:00Z")
        return read_genai_prices(path, as_of, prompt_tokens)
    return read_compact_prices(path)


def parse_timestamp(value: datetime | str, source: str = "as_of") -> datetime:
    """Parse an ISO 8601 timestamp; a timestamp without a zone is taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise DataError(source, "as_of", value, "is not an ISO 8601 timestamp",
                            "write e.g. 2025-11-01T12:00:00Z") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# --- genai-prices JSON -----------------------------------------------------------


def read_genai_prices(path: str | Path, as_of: datetime | str,
                      prompt_tokens: int | None = None) -> PriceList:
    """Read the genai-prices JSON and resolve each model's prices at ``as_of``."""
    source = file_name(path)
    moment = parse_timestamp(as_of, source)
    if prompt_tokens is not None and prompt_tokens < 0:
        raise DataError(source, "prompt_tokens", prompt_tokens, "must not be negative",
                        "give the prompt length in tokens, or leave it out for the base tier")
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(source, "(top level)", type(data).__name__, "must be a list of providers",
                        "give the genai-prices data file (a JSON list of providers)")
    prices, skipped = [], {}
    for number, provider in enumerate(data):
        where = f"providers[{number}]"
        if not isinstance(provider, dict) or not isinstance(provider.get("id"), str):
            raise DataError(source, where, provider if not isinstance(provider, dict) else MISSING,
                            "must be an object with an 'id'", "give each provider an id")
        where = f"providers[{provider['id']}]"
        models = provider.get("models", MISSING)
        if not isinstance(models, list):
            raise DataError(source, f"{where}.models", models, "must be a list of models",
                            "give each provider a 'models' list")
        for model in models:
            price = _model_price(source, where, provider["id"], model, moment, prompt_tokens)
            if isinstance(price, ModelPrice):
                prices.append(price)
            else:
                skipped[f"{provider['id']}/{model['id']}"] = price
    if skipped:
        logger.info("%s: %d models have no input and output token price; left out",
                    source, len(skipped))
    return PriceList(source, moment.isoformat().replace("+00:00", "Z"), prompt_tokens, prices, skipped)


def _model_price(source: str, where: str, provider: str, model: Any, moment: datetime,
                 prompt_tokens: int | None) -> ModelPrice | str:
    """Return the model's resolved price, or the reason it has no usable token price."""
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        raise DataError(source, f"{where}.models", model, "must be an object with an 'id'",
                        "give each model an id")
    where = f"{where}.models[{model['id']}].prices"
    entries = model.get("prices", MISSING)
    if isinstance(entries, dict):
        chosen, rule = entries, "single price set"
    elif isinstance(entries, list) and entries:
        chosen, rule = _conditional(source, where, entries, moment)
    else:
        raise DataError(source, where, entries, "must be a price set or a non-empty list of them",
                        "give a mapping of prices or a list of {constraint, prices}")
    resolved, tiers = {}, {}
    for key, field in PRICE_FIELDS.items():
        if field in chosen:
            resolved[key], tier = _tier(source, f"{where}.{field}", chosen[field], prompt_tokens)
            if tier:
                tiers.setdefault(tier, []).append(key)
    if resolved.get("input") is None or resolved.get("output") is None:
        return "no input_mtok or no output_mtok"
    for tier, keys in tiers.items():
        rule += f"; {tier} for {', '.join(keys)}"
    # The model's price_comments are left out because they are free text that may contain links.
    return ModelPrice(provider, model["id"], model.get("name"), resolved["input"], resolved["output"],
                      resolved.get("cached_input"), rule)


def _conditional(source: str, where: str, entries: list, moment: datetime) -> tuple[dict, str]:
    """Pick the last entry whose constraint applies at ``moment`` (the first when none applies)."""
    active = []
    for index, entry in enumerate(entries):
        place = f"{where}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("prices"), dict):
            raise DataError(source, place, entry, "must be an object with a 'prices' mapping",
                            "write {constraint: ..., prices: {...}}")
        constraint = entry.get("constraint")
        if constraint is None or _applies(source, f"{place}.constraint", constraint, moment):
            active.append((index, constraint))
    index, constraint = active[-1] if active else (0, None)
    count = len(entries)
    if constraint is None:
        rule = f"entry {index + 1} of {count} (unconstrained, and no later entry applies at as_of)"
    elif "start_date" in constraint:
        rule = f"entry {index + 1} of {count} (start_date {constraint['start_date']} on or before as_of)"
    else:
        rule = (f"entry {index + 1} of {count} (UTC window {constraint['start_time']}"
                f"-{constraint['end_time']} contains as_of)")
    if not active:
        rule = f"entry 1 of {count} (no constraint applies at as_of, so the first entry)"
    return entries[index]["prices"], rule


def _applies(source: str, where: str, constraint: Any, moment: datetime) -> bool:
    if not isinstance(constraint, dict) or set(constraint) not in CONSTRAINT_KEYS:
        raise DataError(source, where, constraint, "is not a known constraint",
                        "use {start_date: YYYY-MM-DD} or {start_time: HH:MM:SSZ, end_time: HH:MM:SSZ}")
    if "start_date" in constraint:
        try:
            start = date.fromisoformat(str(constraint["start_date"]))
        except ValueError:
            raise DataError(source, f"{where}.start_date", constraint["start_date"],
                            "is not a date", "write YYYY-MM-DD") from None
        return moment.date() >= start
    start = _time_of_day(source, f"{where}.start_time", constraint["start_time"])
    end = _time_of_day(source, f"{where}.end_time", constraint["end_time"])
    now = moment.time().replace(tzinfo=None)
    if start <= end:
        return start <= now < end
    return now >= start or now < end


def _time_of_day(source: str, where: str, value: Any) -> time:
    try:
        parsed = time.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise DataError(source, where, value, "is not a time of day", "write HH:MM:SSZ (UTC)") from None
    if parsed.tzinfo is not None and parsed.utcoffset().total_seconds() != 0:
        raise DataError(source, where, value, "is not in UTC", "write the time in UTC with a Z suffix")
    return parsed.replace(tzinfo=None)


def _tier(source: str, where: str, value: Any, prompt_tokens: int | None) -> tuple[float, str]:
    """Return a price and a description of the tier used ('' when the price has no tiers)."""
    if not isinstance(value, dict):
        return _number(source, where, value), ""
    if "base" not in value or not isinstance(value.get("tiers"), list):
        raise DataError(source, where, value, "is neither a number nor a tiered price",
                        "give a number or {base: N, tiers: [{start: TOKENS, price: N}]}")
    base = _number(source, f"{where}.base", value["base"])
    tiers = []
    for index, tier in enumerate(value["tiers"]):
        place = f"{where}.tiers[{index}]"
        if not isinstance(tier, dict) or isinstance(tier.get("start"), bool) \
                or not isinstance(tier.get("start"), (int, float)):
            raise DataError(source, place, tier, "must have a numeric 'start'",
                            "write {start: TOKENS, price: N}")
        tiers.append((float(tier["start"]), _number(source, f"{place}.price", tier.get("price", MISSING))))
    tiers.sort()
    first = f"{tiers[0][0]:.0f}" if tiers else "any"
    if prompt_tokens is None:
        return base, f"base tier (below {first} prompt tokens)"
    reached = [(start, price) for start, price in tiers if prompt_tokens > start]
    if not reached:
        return base, f"base tier ({prompt_tokens} prompt tokens, not above {first})"
    start, price = reached[-1]
    return price, f"tier above {start:.0f} prompt tokens ({prompt_tokens} prompt tokens)"


def _number(source: str, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, where, value, "is not a price", "give USD per million tokens as a number")
    if not np.isfinite(value) or value < 0:
        raise DataError(source, where, value, "must be a finite non-negative price",
                        "give USD per million tokens")
    return float(value)


# --- Compact CSV -------------------------------------------------------------------


def read_compact_prices(path: str | Path) -> PriceList:
    """Read the compact price CSV; rows without a model id or without token prices are left out."""
    table = read_table(path, ["provider", "model_id", *COMPACT_COLUMNS.values()])
    source = table.source
    providers = table.column("provider")
    models = table.column("model_id")
    names = table.column("model_name") if "model_name" in table.header else None
    notes = table.column("genai_prices_notes") if "genai_prices_notes" in table.header else None
    columns = {key: table.numbers(column, blank=np.nan) for key, column in COMPACT_COLUMNS.items()}
    usable = (models != "") & np.isfinite(columns["input"]) & np.isfinite(columns["output"])
    prices, skipped = [], {}
    for index in range(len(table)):
        key = f"{providers[index]}/{models[index]}"
        if not usable[index]:
            skipped[key] = "no model_id" if not models[index] else "no input and output price"
            continue
        cached = columns["cached_input"][index]
        prices.append(ModelPrice(
            provider=str(providers[index]), model=str(models[index]),
            name=str(names[index]) if names is not None and names[index] else None,
            input=float(columns["input"][index]), output=float(columns["output"][index]),
            cached_input=None if np.isnan(cached) else float(cached),
            rule="compact list (base tier)",
            note=str(notes[index]) if notes is not None and notes[index] else None,
        ))
    if skipped:
        logger.info("%s: %d rows have no usable price; left out", source, len(skipped))
    return PriceList(source, None, None, prices, skipped)
