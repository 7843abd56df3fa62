"""Load, override and validate instance files.

Every problem is reported as an :class:`~tokenomy.model.errors.InstanceError`
naming the file, the dotted field path, the value and the fix.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import MISSING, FieldProblem, InstanceError
from .registry import REGISTRY
from .schema import Instance
from .validation import cross_check, scale_warnings

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest instance file read (bytes); larger files are rejected with a message."""

CURVE_TAGS = {"constant", "saturating", "cobb_douglas", "leontief"}


def read_document(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON instance file into plain Python data.

    YAML goes through a safe loader (see :func:`parse_document`), so no object
    tags are executed.
    """
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise InstanceError(
            source, [FieldProblem("(file)", MISSING, f"cannot be read ({error.strerror})",
                                  "check the path")]
        ) from None
    if size > MAX_FILE_BYTES:
        raise InstanceError(source, [FieldProblem(
            "(file)", f"{size} bytes", f"is larger than the limit of {MAX_FILE_BYTES} bytes",
            "group identical requests into task classes, or raise "
            "tokenomy.model.loader.MAX_FILE_BYTES")])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InstanceError(source, [FieldProblem(
            "(file)", f"byte {error.start}", "is not valid UTF-8", "save the file as UTF-8")]) from None
    return parse_document(text, source, json_syntax=path.suffix.lower() == ".json")


MAX_NODES = 1_000_000
"""Most YAML nodes an instance may expand to once aliases are followed."""


class AliasError(ValueError):
    """YAML aliases form a cycle or expand past :data:`MAX_NODES`."""


class _InstanceLoader(yaml.SafeLoader):
    """Safe YAML loader that also rejects duplicate keys in a mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        "found a mapping key that is not a scalar", key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(root: yaml.Node) -> int:
    """Count nodes with every alias followed; raise AliasError on a cycle or past MAX_NODES."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = ([child for pair in node.value for child in pair]
                    if isinstance(node, yaml.MappingNode) else list(node.value))
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_NODES:
                raise AliasError(f"aliases expand it to more than {MAX_NODES:,} nodes")
            continue
        if key in open_nodes:
            raise AliasError("an alias refers to a node that contains it (a cycle)")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise AliasError("an alias refers to a node that contains it (a cycle)")
            stack.append((child, False))
    return sizes[id(root)]


def _load_yaml(text: str, source: str) -> Any:
    loader = _InstanceLoader(text)
    loader.name = source  # shown in error positions instead of "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_document(text: str, source: str, *, json_syntax: bool = False) -> dict[str, Any]:
    """Parse instance text (YAML, or JSON when ``json_syntax``) into a mapping.

    YAML goes through a safe loader that executes no tags and rejects
    duplicate keys, alias cycles and alias expansions past :data:`MAX_NODES`.
    """
    try:
        if json_syntax:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        else:
            data = _load_yaml(text, source)
    except AliasError as error:
        raise InstanceError(source, [FieldProblem(
            "(file)", MISSING, f"cannot be expanded: {error}",
            "write the repeated entries out, or use fewer nested aliases")]) from None
    except (yaml.YAMLError, json.JSONDecodeError, RecursionError, ValueError) as error:
        detail = " ".join(str(error).split())[:300]
        raise InstanceError(source, [FieldProblem(
            "(file)", MISSING, f"is not valid {'JSON' if json_syntax else 'YAML'} ({detail})",
            "correct the syntax at the position shown")]) from None
    if not isinstance(data, dict):
        raise InstanceError(source, [FieldProblem(
            "(top level)", type(data).__name__, "must be a mapping of sections",
            "start the file with 'schema_version: 1' followed by tasks, models and uses")])
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``PATH=VALUE`` into the path and the YAML-parsed value."""
    path, separator, raw = text.partition("=")
    path = path.strip()
    if not separator or not path:
        raise InstanceError("--set", [FieldProblem(
            "(override)", text, "is not of the form PATH=VALUE",
            "write e.g. --set tasks.fix-failing-test.value=25")], what="option")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[tuple[str, Any]], source: str
) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``(dotted path, value)`` set.

    A missing section is created (``defer.enabled=true`` works on a file with
    no ``defer``). Inside a named collection (tasks, models, uses, pools,
    markets, quality tables, caches) a path must go through an existing
    name, so ``tasks.fix.value=3`` with a misspelled ``fix`` is reported;
    a path that ends at a new name (``tasks.new={...}``) adds that entry.
    A value of ``None`` removes the field.
    """
    result = copy.deepcopy(dict(data))
    for path, value in overrides:
        parts = path.split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            parent = ".".join(parts[:depth])
            if isinstance(node, dict) and part not in node and not _is_collection(parent):
                node[part] = {}  # an optional section absent from the file, e.g. defer
            if not isinstance(node, dict) or part not in node:
                known = (", ".join(sorted(node)) or "(none yet)") if isinstance(node, dict) \
                    else "(not a mapping)"
                raise InstanceError(source, [FieldProblem(
                    path, value,
                    f"cannot be set because '{part}' is not an entry of {parent or '(top level)'}",
                    f"use one of: {known}")])
            node = node[part]
        if not isinstance(node, dict):
            raise InstanceError(source, [FieldProblem(
                path, value, f"cannot be set because {'.'.join(parts[:-1])} is not a mapping",
                "set a field of a section or of a named entry")])
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
        logger.info("override %s = %r", path, value)
    return result


def validate(data: Mapping[str, Any], source: str = "<instance>") -> Instance:
    """Validate plain data against the schema and the cross-references.

    Loads the extensions' entry points first (once per process), so an
    instance may use the layers, market kinds and curve families they register.
    """
    REGISTRY.ensure_loaded()
    try:
        instance = Instance.model_validate(data)
    except ValidationError as error:
        raise InstanceError(source, [_problem(item, data) for item in error.errors()]) from None
    except RecursionError:
        raise InstanceError(source, [FieldProblem(
            "(top level)", MISSING, "is nested too deeply", "flatten the document")]) from None
    problems = cross_check(instance)
    if problems:
        raise InstanceError(source, problems)
    for warning in scale_warnings(instance):
        logger.warning("%s: %s", source, warning)
    return instance


def load_instance(
    source: str | Path | Mapping[str, Any],
    overrides: Iterable[str | tuple[str, Any]] = (),
) -> Instance:
    """Load an instance from a file path or a mapping, apply overrides and validate.

    Parameters
    ----------
    source:
        Path of a ``.yaml``/``.yml``/``.json`` file, or the already parsed mapping.
    overrides:
        ``"PATH=VALUE"`` strings or ``(path, value)`` pairs, applied in order.

    Raises
    ------
    InstanceError
        When the file cannot be read or parsed, or any field is invalid.
    """
    if isinstance(source, Mapping):
        name, data = "<instance>", dict(source)
    else:
        name, data = str(source), read_document(source)
    pairs = [parse_override(item) if isinstance(item, str) else item for item in overrides]
    if pairs:
        data = apply_overrides(data, pairs, name)
        name = f"{name} (with --set {', '.join(path for path, _ in pairs)})"
    instance = validate(data, name)
    instance.metadata.setdefault("source", name)
    return instance


def _problem(error: Mapping[str, Any], data: Mapping[str, Any]) -> FieldProblem:
    location = [str(part) for part in error["loc"]]
    if location and location[-1] == "[key]":
        # An invalid name in a named collection: report the collection and the name.
        return FieldProblem(".".join(location[:-2]) or "(top level)", location[-2] if len(location) > 1 else "",
                            "contains an invalid name",
                            "use letters, digits, '-' and '_' only (no dots or spaces)")
    location = [
        part for index, part in enumerate(location)
        if not (part in CURVE_TAGS and index >= 1 and _is_quality_entry(location[:index]))
    ]

    path = ".".join(location) or "(top level)"
    kind = error["type"]
    value = error.get("input", MISSING)
    message = error["msg"][0].lower() + error["msg"][1:]

    if kind == "missing":
        return FieldProblem(path, MISSING, "is required but missing", "add this field")
    if kind == "extra_forbidden":
        return FieldProblem(path, value, "is not a known field",
                            "remove it or correct its spelling (see `tokenomy schema`)")
    if kind == "tokenomy_problem":
        context = error.get("ctx", {})
        return FieldProblem(path, error.get("input", MISSING), context["message"], context["fix"])
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return FieldProblem(path, value, "is not an allowed value", f"use one of {expected}")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        expected = kind.removesuffix("_type").removesuffix("_parsing").replace("_", " ")
        expected = {"float": "number", "int": "whole number", "dict": "mapping",
                    "model": "mapping", "bool": "true or false"}.get(expected, expected)
        return FieldProblem(path, value, f"must be a {expected}", f"give a {expected}")
    if kind == "too_short":
        return FieldProblem(path, value, "must not be empty", "add at least one entry")
    if kind == "finite_number":
        return FieldProblem(path, value, "must be a finite number", "give a finite number")
    if kind == "string_pattern_mismatch":
        return FieldProblem(path, value, "is not a valid name",
                            "use letters, digits, '-' and '_' only (no dots or spaces)")
    if kind in _BOUNDS:
        word, key = _BOUNDS[kind]
        limit = error.get("ctx", {}).get(key)
        limit = f"{limit:g}" if isinstance(limit, (int, float)) else limit
        return FieldProblem(path, value, f"must be {word} {limit}", f"give a number {word} {limit}")
    if kind == "value_error":
        return FieldProblem(path, _lookup(data, location), message.removeprefix("value error, "),
                            "change the entry as described")
    return FieldProblem(path, value, message, "correct the value")


COLLECTIONS = {"tasks", "models", "uses", "pools", "markets", "capital.cache", "tenants", "layers"}


def _is_collection(path: str) -> bool:
    parts = path.split(".")
    return path in COLLECTIONS or (len(parts) == 3 and parts[0] == "models" and parts[2] == "quality")


_BOUNDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def _is_quality_entry(location: list[str]) -> bool:
    return len(location) >= 4 and location[-4] == "models" and location[-2] == "quality"


def _lookup(data: Any, location: list[str]) -> object:
    node = data
    for part in location:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return MISSING
    return node
