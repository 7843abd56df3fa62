"""Read a JSON report back: solve, compare or decomposition output, checked field by field.

:func:`load_report` raises :class:`ReportInputError` with a one-line message
that names the file and what is wrong with it. Fields a section needs are
checked for type; fields the report leaves out only leave out their section.
"""

from __future__ import annotations

import json
from pathlib import Path

NUMBER = "a number"
OPTIONAL_NUMBER = "a number or null"
TEXT = "a string"
OPTIONAL_TEXT = "a string or null"
FLAG = "true or false"
OPTIONAL_FLAG = "true, false or null"

SOLVE_KEYS = ("status", "welfare", "prices")
COMPARE_KEYS = ("global_welfare", "siloed_welfare", "gap")

# Each spec maps a key to what its value must be, and a key ending in "?" may
# be missing. ("list", spec) is a list whose items match spec, ("map", spec) a
# string-keyed object whose values match spec, ("optional", spec) null or a
# match, and a dict a nested object.
PRICE_ROW = {"market": TEXT, "price": OPTIONAL_NUMBER, "unit?": OPTIONAL_TEXT,
             "kind?": OPTIONAL_TEXT, "mode?": OPTIONAL_TEXT, "binding?": OPTIONAL_FLAG,
             "rhs?": OPTIONAL_TEXT, "rhs_value?": OPTIONAL_NUMBER, "reason?": OPTIONAL_TEXT}
EVALUATION = {"rows": ("list", {"task": OPTIONAL_TEXT, "row": TEXT, "value": NUMBER,
                                "net": NUMBER, "gap?": NUMBER}),
              "reason?": TEXT, "realized?": TEXT, "totals?": ("map", NUMBER)}
SOLVE = {
    "instance?": OPTIONAL_TEXT, "source?": OPTIONAL_TEXT, "status": TEXT,
    "termination?": TEXT, "certified?": FLAG, "solver?": OPTIONAL_TEXT,
    "welfare": OPTIONAL_NUMBER, "bound?": OPTIONAL_NUMBER, "gap?": OPTIONAL_NUMBER,
    "message?": OPTIONAL_TEXT, "welfare_parts?": ("map", OPTIONAL_NUMBER),
    "prices": ("list", PRICE_ROW),
    "routing?": ("list", {"task": TEXT, "model": TEXT, "share?": NUMBER, "requests?": NUMBER}),
    "tokens?": ("list", {"task": TEXT, "model": TEXT, "use": TEXT, "unit": TEXT,
                         "per_request": NUMBER}),
    "equimarginal?": ("list", {"kind": TEXT, "task?": OPTIONAL_TEXT, "model?": OPTIONAL_TEXT,
                               "use?": OPTIONAL_TEXT, "marginal_benefit": NUMBER,
                               "marginal_cost": NUMBER, "residual": NUMBER, "used?": FLAG}),
    "pools?": ("list", {"pool": TEXT}),
    "evaluation?": EVALUATION,
}
COMPARE = {
    "instance?": OPTIONAL_TEXT, "global_welfare": NUMBER, "siloed_welfare": NUMBER,
    "gap": NUMBER, "gap_percent?": NUMBER, "siloed_priced_welfare?": NUMBER,
    "priced_gap?": NUMBER, "views?": ("map", ("list", TEXT)),
    "policies?": ("map", TEXT),
    "gap_by_layer?": ("map", NUMBER), "gap_by_part?": ("map", NUMBER),
    "gap_by_market?": ("list", {"market": TEXT, "price": OPTIONAL_NUMBER, "unit?": OPTIONAL_TEXT,
                                "usage_global": NUMBER, "usage_siloed": NUMBER, "value": NUMBER}),
    "overruns?": ("list", {"market": TEXT, "usage": NUMBER, "excess": NUMBER}),
    "failure_modes?": ("list", {"mode": TEXT}),
    "differences?": {"routing?": ("list", {"task": TEXT, "model": TEXT, "global": NUMBER,
                                           "siloed": NUMBER}),
                     "tokens?": ("list", {"task": TEXT, "model": TEXT, "use": TEXT, "unit": TEXT,
                                          "global": OPTIONAL_NUMBER, "siloed": OPTIONAL_NUMBER}),
                     "pools?": ("list", {"pool": TEXT, "phase": TEXT,
                                         "utilization_global": OPTIONAL_NUMBER,
                                         "utilization_siloed": OPTIONAL_NUMBER})},
    "attribution?": ("optional", {"prices": ("list", TEXT), "shapley": ("map", NUMBER),
                                  "single_reveal?": ("map", NUMBER)}),
    "evaluation?": EVALUATION,
}
DECOMPOSITION = {
    "method": TEXT, "termination": TEXT,
    "iterations": ("list", {
        "iteration": "an integer", "seconds": NUMBER, "dual_bound": OPTIONAL_NUMBER,
        "primal_bound": OPTIONAL_NUMBER, "gap": OPTIONAL_NUMBER,
        "prices": ("map", OPTIONAL_NUMBER), "excess": ("map", OPTIONAL_NUMBER),
        "distance": ("map", OPTIONAL_NUMBER)}),
}


class ReportInputError(ValueError):
    """Raised when a file is not a readable tokenomy report; the message is one line."""


def load_report(path: str | Path) -> dict:
    """Read and check a report written by ``tokenomy solve --json``, ``compare --json`` or a
    decomposition run.

    Raises
    ------
    ReportInputError
        When the file cannot be read, is not JSON, is not a tokenomy report,
        or has a field of the wrong type. The message names the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ReportInputError(f"{path}: not JSON: the file is not UTF-8 text") from None
    except OSError as error:
        raise ReportInputError(f"{path}: cannot read the file: {error.strerror}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{path}: not JSON: {error.msg} at line {error.lineno}, "
                               f"column {error.colno}") from None
    try:
        check_report(report)
    except ReportInputError as error:
        raise ReportInputError(f"{path}: {error}") from None
    return report


def report_kinds(report: dict) -> set[str]:
    """Return which of ``solve``, ``compare`` and ``decomposition`` the report holds."""
    kinds = set()
    if all(key in report for key in SOLVE_KEYS):
        kinds.add("solve")
    if all(key in report for key in COMPARE_KEYS):
        kinds.add("compare")
    if "decomposition" in report:
        kinds.add("decomposition")
    return kinds


def check_report(report: object) -> None:
    """Check that ``report`` is a tokenomy report whose fields have the expected types."""
    if not isinstance(report, dict):
        raise ReportInputError(f"not a tokenomy report: the JSON document is {_kind_of(report)}, "
                               "expected an object from tokenomy solve --json or compare --json")
    kinds = report_kinds(report)
    if not kinds:
        found = ", ".join(list(report)[:8]) or "none"
        raise ReportInputError(
            "not a tokenomy report: expected the keys of tokenomy solve --json "
            f"({', '.join(SOLVE_KEYS)}), of tokenomy compare --json ({', '.join(COMPARE_KEYS)}) "
            f"or a decomposition key; top-level keys found: {found}")
    if "solve" in kinds:
        _check(report, SOLVE, "")
    if "compare" in kinds:
        _check(report, COMPARE, "")
    if "decomposition" in kinds:
        _check(report["decomposition"], DECOMPOSITION, "decomposition")


def _check(value: object, spec, where: str) -> None:
    if isinstance(spec, str):
        if not _matches(value, spec):
            raise ReportInputError(f"invalid tokenomy report: {where} is {_show(value)}, "
                                   f"expected {spec}")
        return
    if isinstance(spec, tuple):
        form, inner = spec
        if form == "optional":
            if value is not None:
                _check(value, inner, where)
            return
        if form == "list":
            if not isinstance(value, list):
                raise ReportInputError(f"invalid tokenomy report: {where} is {_show(value)}, "
                                       "expected a list")
            for index, item in enumerate(value):
                _check(item, inner, f"{where}[{index}]")
            return
        if not isinstance(value, dict):
            raise ReportInputError(f"invalid tokenomy report: {where} is {_show(value)}, "
                                   "expected an object")
        for key, item in value.items():
            _check(item, inner, f"{where}.{key}" if where else key)
        return
    if not isinstance(value, dict):
        raise ReportInputError(f"invalid tokenomy report: {where} is {_show(value)}, "
                               "expected an object")
    for key, inner in spec.items():
        name = key.rstrip("?")
        path = f"{where}.{name}" if where else name
        if name not in value:
            if key.endswith("?"):
                continue
            raise ReportInputError(f"invalid tokenomy report: {path} is missing")
        _check(value[name], inner, path)


def _matches(value: object, expected: str) -> bool:
    if value is None:
        return expected in (OPTIONAL_NUMBER, OPTIONAL_TEXT, OPTIONAL_FLAG)
    if expected in (NUMBER, OPTIONAL_NUMBER):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (TEXT, OPTIONAL_TEXT):
        return isinstance(value, str)
    return isinstance(value, bool)


def _show(value: object) -> str:
    if isinstance(value, (dict, list)):
        return _kind_of(value)
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind_of(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
