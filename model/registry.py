"""The extension registry: layers, market kinds, curve families and failure detectors.

tokenomy finds everything that is not one of its four default layers, its
built-in market kinds or its built-in quality curves here. An extension
registers in one of two ways:

* from Python, by calling the ``add_*`` methods of :data:`REGISTRY` (or
  :func:`tokenomy.model.register_market_kind`), or
* from an installed package, through an entry point in the group
  ``tokenomy.extensions`` (:data:`ENTRY_POINT_GROUP`). The entry point names a
  callable ``register(registry)``, which tokenomy calls once with
  :data:`REGISTRY` before it validates the first instance and when the
  ``tokenomy`` command starts.

A name may be registered once per kind of extension. A second registration
raises :class:`~tokenomy.model.errors.ExtensionError` unless it passes
``replace=True``. An entry point that cannot be imported, is not callable,
or raises while registering also raises ``ExtensionError``, and whatever it
registered before failing is removed again. Setting the environment
variable ``TOKENOMY_NO_EXTENSIONS=1`` skips entry points altogether.

See ``docs/extending.md`` for a tutorial.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core.core_schema import ErrorType

from .errors import MISSING, ExtensionError, FieldProblem, InstanceError

if TYPE_CHECKING:
    from .schema import Instance

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tokenomy.extensions"
"""Entry-point group whose entries are ``register(registry)`` callables."""

DISABLE_VARIABLE = "TOKENOMY_NO_EXTENSIONS"
"""Environment variable that, when set to a non-empty value, skips entry points."""

BUILTIN = "tokenomy"
"""Source recorded for the market kinds and curve families tokenomy defines itself."""

BUILTIN_LAYERS = ("router", "agent", "serving", "capital")
"""Names of the default layers, which no extension layer may take."""

BUILTIN_FAILURE_MODES = ("over-routing", "under-routing", "over-delegation", "under-verification",
                         "serving congestion", "stale rollouts", "cache misuse")
"""Failure modes of ``tokenomy.solvers.failures``, which no registered detector may take."""

RESERVED_KIND_NAMES = frozenset({"value", "capability", "routing", "prefill", "decode", "kv",
                                 "tokens"})
"""Names a market kind may not take: price-view keys, the implicit markets' kinds and ``tokens``,
whose usage quantities are the token flows."""

DEFAULT_LAYER_VIEW = frozenset({"value", "compute"})
"""Prices an extension layer sees in a siloed run when it declares no ``view``."""

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")


@dataclass(frozen=True)
class LayerExtension:
    """A registered layer class and what tokenomy reads from it.

    Attributes
    ----------
    name:
        Layer name: the key under ``layers:`` in an instance file and in ``views``.
    factory:
        The layer class; called without arguments for a fresh layer object.
    settings:
        Pydantic model of ``layers.<name>`` in an instance file, or ``None``
        when the layer takes no settings.
    view:
        Prices the layer sees in a siloed run unless ``views`` says otherwise.
    check:
        ``check(instance, settings) -> list[FieldProblem]``: cross-reference
        checks run after the schema passes, or ``None``.
    source:
        Entry point or module that registered it.
    """

    name: str
    factory: Callable[[], Any]
    settings: type[BaseModel] | None
    view: frozenset[str]
    check: Callable[..., list[FieldProblem]] | None
    source: str

    def create(self) -> Any:
        """Return a fresh layer object."""
        return self.factory()


@dataclass(frozen=True)
class MarketKind:
    """A registered market kind.

    Attributes
    ----------
    name:
        Kind name, written as ``markets.<market>.kind`` in an instance file.
    factory:
        ``factory(name, instance, data) -> list[MarketSpec]``.
    settings:
        Pydantic model of ``markets.<market>.settings``, or ``None``.
    meter:
        ``meter(builder, data, instance, name)``: adds the contributions to
        the market's usage quantity after the layers have declared theirs,
        or ``None`` when layers contribute directly.
    single:
        At most one market of this kind (per scope) in an instance.
    physical:
        A capacity: it holds in every step of a siloed run, whatever the
        price views.
    tenant_quantity:
        Usage quantity to split by tenant for ``scope: tenant`` markets, or
        ``None`` when the kind takes no tenant scope.
    check:
        ``check(instance, name, settings) -> list[FieldProblem]``, or ``None``.
    description:
        One line shown by ``tokenomy extensions``.
    source:
        Entry point or module that registered it.
    """

    name: str
    factory: Callable[..., list]
    settings: type[BaseModel] | None = None
    meter: Callable[..., None] | None = None
    single: bool = False
    physical: bool = False
    tenant_quantity: str | None = None
    check: Callable[..., list[FieldProblem]] | None = None
    description: str = ""
    source: str = BUILTIN


@dataclass(frozen=True)
class CurveFamily:
    """A quality-curve family.

    ``model`` is the pydantic model of a quality entry whose ``curve`` field
    is ``Literal[name]``. ``effort`` bounds the effort of a group of options,
    ``effort(builder, label, curves, inputs, effort) -> list[cp.Constraint]``
    (see ``docs/extending.md``). It is ``None`` for the built-in families,
    which the agent layer formulates itself.
    """

    name: str
    model: type[BaseModel]
    effort: Callable[..., list] | None
    source: str


@dataclass(frozen=True)
class Detector:
    """A failure-mode detector of a siloed allocation.

    ``function(economy, comparison, prices, thresholds) -> list[dict]``, each
    dict with a ``mode`` key.
    """

    name: str
    function: Callable[..., list[dict]]
    source: str


@dataclass
class _State:
    layers: dict[str, LayerExtension] = field(default_factory=dict)
    kinds: dict[str, MarketKind] = field(default_factory=dict)
    families: dict[str, CurveFamily] = field(default_factory=dict)
    detectors: dict[str, Detector] = field(default_factory=dict)
    loaded: set[tuple[str, str, str]] = field(default_factory=set)
    scanned: bool = False

    def copy(self) -> _State:
        return _State(dict(self.layers), dict(self.kinds), dict(self.families),
                      dict(self.detectors), set(self.loaded), self.scanned)


class Registry:
    """Registered layers, market kinds, curve families and detectors."""

    def __init__(self) -> None:
        self._state = _State()
        self._source: str | None = None

    # -- registration -------------------------------------------------------

    def add_layer(self, layer_type: type, *, replace: bool = False) -> LayerExtension:
        """Register a layer class.

        The class needs a ``name``, a tuple ``decisions`` and a method
        ``declare(builder, data, instance)``, and is called without arguments
        to build a layer. Optional class attributes: ``Settings`` (a pydantic
        model of ``layers.<name>``), ``view`` (prices it sees in a siloed run,
        default ``{"value", "compute"}``) and ``check(instance, settings)``.
        """
        source = self._source_of(layer_type)
        name = getattr(layer_type, "name", None)
        problems = self._name_problems("layer", name)
        if not problems and name in BUILTIN_LAYERS:
            problems.append(FieldProblem("(layer)", name, "is the name of a default layer",
                                         "give the layer another name"))
        if not callable(getattr(layer_type, "declare", None)):
            problems.append(FieldProblem("(layer)", repr(layer_type),
                                         "has no method declare(builder, data, instance)",
                                         "register a class that implements the Layer protocol"))
        decisions = getattr(layer_type, "decisions", None)
        if not isinstance(decisions, tuple) or not all(isinstance(item, str) for item in decisions):
            problems.append(FieldProblem("(layer)", decisions,
                                         "has no tuple of variable names called decisions",
                                         "set decisions = (...) to the variables the layer chooses"))
        settings = getattr(layer_type, "Settings", None)
        problems += _model_problems("(layer settings)", settings)
        view = getattr(layer_type, "view", DEFAULT_LAYER_VIEW)
        if isinstance(view, str) or not all(isinstance(item, str) for item in view):
            problems.append(FieldProblem("(layer view)", view, "is not a set of price names",
                                         "set view = frozenset({...}) of price names"))
        if problems:
            raise ExtensionError(source, problems)
        entry = LayerExtension(name, layer_type, settings, frozenset(view),
                               getattr(layer_type, "check", None), source)
        self._store(self._state.layers, "layer", entry, replace)
        return entry

    def add_market_kind(
        self,
        name: str,
        factory: Callable[..., list],
        *,
        settings: type[BaseModel] | None = None,
        meter: Callable[..., None] | None = None,
        single: bool = False,
        physical: bool = False,
        tenant_quantity: str | None = None,
        check: Callable[..., list[FieldProblem]] | None = None,
        description: str = "",
        replace: bool = False,
    ) -> MarketKind:
        """Register a market kind (:class:`MarketKind` describes the arguments)."""
        source = self._source_of(factory)
        problems = self._name_problems("market kind", name)
        if not problems and name in RESERVED_KIND_NAMES:
            problems.append(FieldProblem("(market kind)", name,
                                         "is reserved for a price view or an implicit market",
                                         "give the kind another name"))
        for label, hook in (("factory", factory), ("meter", meter), ("check", check)):
            if hook is not None and not callable(hook):
                problems.append(FieldProblem(f"(market kind {label})", repr(hook), "is not callable",
                                             "pass a function"))
        problems += _model_problems("(market kind settings)", settings)
        if problems:
            raise ExtensionError(source, problems)
        entry = MarketKind(name, factory, settings, meter, single, physical, tenant_quantity,
                           check, description, source)
        self._store(self._state.kinds, "market kind", entry, replace)
        return entry

    def add_curve_family(self, model: type[BaseModel], effort: Callable[..., list], *,
                         replace: bool = False) -> CurveFamily:
        """Register a quality-curve family.

        ``model`` subclasses :class:`tokenomy.model.schema.EffortCurve` and
        declares ``curve: Literal["<name>"]``. ``effort`` must bound the
        effort by a concave function of the scaled tokens that is
        homogeneous of degree one, so that the agent's perspective form
        stays convex.
        """
        from .schema import EffortCurve

        source = self._source_of(effort)
        problems: list[FieldProblem] = []
        if not (isinstance(model, type) and issubclass(model, EffortCurve)):
            problems.append(FieldProblem("(curve model)", repr(model),
                                         "is not a subclass of tokenomy.model.schema.EffortCurve",
                                         "derive the curve's model from EffortCurve"))
            raise ExtensionError(source, problems)
        name = _literal_tag(model)
        problems += self._name_problems("curve family", name)
        if not callable(effort):
            problems.append(FieldProblem("(curve effort)", repr(effort), "is not callable",
                                         "pass effort(builder, label, curves, inputs, effort)"))
        if problems:
            raise ExtensionError(source, problems)
        entry = CurveFamily(name, model, effort, source)
        self._store(self._state.families, "curve family", entry, replace)
        return entry

    def add_detector(self, name: str, function: Callable[..., list[dict]], *,
                     replace: bool = False) -> Detector:
        """Register ``function(economy, comparison, prices, thresholds) -> list[dict]``."""
        source = self._source_of(function)
        problems = self._name_problems("detector", name, pattern=False)
        if not problems and name in BUILTIN_FAILURE_MODES:
            problems.append(FieldProblem("(detector)", name, "is the name of a built-in failure mode",
                                         "give the detector another name"))
        if not callable(function):
            problems.append(FieldProblem("(detector)", repr(function), "is not callable",
                                         "pass a function"))
        if problems:
            raise ExtensionError(source, problems)
        entry = Detector(name, function, source)
        self._store(self._state.detectors, "detector", entry, replace)
        return entry

    def add_builtin_family(self, model: type[BaseModel]) -> None:
        """Record a family that the agent layer formulates itself (schema.py only)."""
        name = _literal_tag(model)
        self._state.families[name] = CurveFamily(name, model, None, BUILTIN)

    def add_builtin_kind(self, name: str, factory: Callable[..., list], **options) -> None:
        """Record a market kind tokenomy defines itself (markets.py only)."""
        self._state.kinds[name] = MarketKind(name, factory, source=BUILTIN, **options)

    # -- lookup ---------------------------------------------------------------

    def layer(self, name: str) -> LayerExtension | None:
        return self._state.layers.get(name)

    def layers(self) -> dict[str, LayerExtension]:
        return dict(self._state.layers)

    def market_kind(self, name: str) -> MarketKind | None:
        _ensure_builtins()
        return self._state.kinds.get(name)

    def market_kinds(self) -> dict[str, MarketKind]:
        _ensure_builtins()
        return dict(self._state.kinds)

    def curve_family(self, name: str) -> CurveFamily | None:
        _ensure_builtins()
        return self._state.families.get(name)

    def curve_families(self) -> dict[str, CurveFamily]:
        _ensure_builtins()
        return dict(self._state.families)

    def detectors(self) -> dict[str, Detector]:
        return dict(self._state.detectors)

    def describe(self) -> list[dict[str, str]]:
        """Return one row per registered extension: type, name, source and description."""
        rows = [{"type": "layer", "name": entry.name, "source": entry.source,
                 "description": _first_line(entry.factory.__doc__)}
                for entry in self._state.layers.values()]
        rows += [{"type": "market kind", "name": entry.name, "source": entry.source,
                  "description": entry.description} for entry in self.market_kinds().values()]
        rows += [{"type": "curve family", "name": entry.name, "source": entry.source,
                  "description": _first_line(entry.model.__doc__)}
                 for entry in self.curve_families().values()]
        rows += [{"type": "detector", "name": entry.name, "source": entry.source,
                  "description": _first_line(entry.function.__doc__)}
                 for entry in self._state.detectors.values()]
        return rows

    # -- entry points ---------------------------------------------------------

    def load_extensions(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Call every not yet loaded ``register`` entry point of ``group``.

        Returns the names of the entry points loaded by this call. Does
        nothing when :data:`DISABLE_VARIABLE` is set.

        Raises
        ------
        ExtensionError
            For an entry point that cannot be imported, is not callable, or
            fails while registering (including duplicate names). What it had
            registered is removed again.
        """
        if os.environ.get(DISABLE_VARIABLE):
            return []
        _ensure_builtins()
        loaded = []
        for entry_point in metadata.entry_points(group=group):
            key = (entry_point.name, entry_point.value, _distribution(entry_point))
            if key in self._state.loaded:
                continue
            self._load(entry_point)
            self._state.loaded.add(key)
            loaded.append(entry_point.name)
            logger.info("loaded extension entry point %s = %s", entry_point.name, entry_point.value)
        if group == ENTRY_POINT_GROUP:
            self._state.scanned = True
        return loaded

    def ensure_loaded(self) -> None:
        """Load the entry points unless an earlier call did so successfully."""
        if not self._state.scanned:
            self.load_extensions()

    def _load(self, entry_point: metadata.EntryPoint) -> None:
        source = f"entry point {entry_point.name} = {entry_point.value} ({_distribution(entry_point)})"
        disable = f"or set {DISABLE_VARIABLE}=1 to run without extensions"
        try:
            register = entry_point.load()
        except Exception as error:
            raise ExtensionError(source, [FieldProblem(
                "(entry point)", entry_point.value,
                f"cannot be imported ({type(error).__name__}: {error})",
                f"install what the package needs, correct the entry point, or uninstall it; {disable}",
            )]) from error
        if not callable(register):
            raise ExtensionError(source, [FieldProblem(
                "(entry point)", entry_point.value, f"names a {type(register).__name__}, not a callable",
                "point it at a function register(registry)")])
        saved = self._state.copy()
        self._source = source
        try:
            register(self)
        except ExtensionError:
            self._state = saved
            raise
        except Exception as error:
            self._state = saved
            raise ExtensionError(source, [FieldProblem(
                "(entry point)", entry_point.value,
                f"raised {type(error).__name__} while registering: {error}",
                f"fix the extension's register function, or uninstall it; {disable}",
            )]) from error
        finally:
            self._source = None

    # -- isolation (tests, notebooks) ------------------------------------------

    @contextmanager
    def isolated(self) -> Iterator[Registry]:
        """Restore every registration made inside the ``with`` block on exit."""
        _ensure_builtins()
        saved = self._state.copy()
        try:
            yield self
        finally:
            self._state = saved

    # -- helpers ----------------------------------------------------------------

    def _source_of(self, target: object) -> str:
        if self._source is not None:
            return self._source
        module = getattr(target, "__module__", None) or "an unknown module"
        return f"module {module}"

    @staticmethod
    def _name_problems(category: str, name: object, *, pattern: bool = True) -> list[FieldProblem]:
        if not isinstance(name, str) or not name:
            return [FieldProblem(f"({category})", name, "has no name",
                                 "give it a non-empty string name")]
        if pattern and not NAME_PATTERN.match(name):
            return [FieldProblem(f"({category})", name, "is not a valid name",
                                 "use 1 to 200 letters, digits, '-' and '_'")]
        return []

    def _store(self, table: dict, category: str, entry, replace: bool) -> None:
        old = table.get(entry.name)
        if old is not None and not replace:
            raise ExtensionError(entry.source, [FieldProblem(
                f"({category})", entry.name, f"is already registered by {old.source}",
                "give one of them another name, or pass replace=True to override it on purpose")])
        if old is not None:
            logger.warning("%s %s of %s replaced by %s", category, entry.name, old.source,
                           entry.source)
        table[entry.name] = entry


REGISTRY = Registry()
"""The registry tokenomy reads."""


def load_extensions() -> list[str]:
    """Load the entry points of ``tokenomy.extensions`` into :data:`REGISTRY`."""
    return REGISTRY.load_extensions()


def instance_layers(instance: Instance) -> list[Any]:
    """Return fresh layer objects for the extension layers an instance enables."""
    layers = []
    for name in instance.layers:
        entry = REGISTRY.layer(name)
        if entry is None:
            raise InstanceError(str(instance.metadata.get("source", "<instance>")), [FieldProblem(
                f"layers.{name}", name, "is not a registered layer", _layer_fix())])
        layers.append(entry.create())
    return layers


def layer_settings(instance: Instance, name: str) -> BaseModel | None:
    """Return the validated settings of layer ``name``: ``layers.<name>`` or its defaults.

    Raises
    ------
    InstanceError
        When the instance has no ``layers.<name>`` and the settings have
        required fields.
    """
    value = instance.layers.get(name)
    if value is not None:
        return value
    entry = REGISTRY.layer(name)
    if entry is None or entry.settings is None:
        return None
    try:
        return entry.settings()
    except ValidationError:
        raise InstanceError(str(instance.metadata.get("source", "<instance>")), [FieldProblem(
            f"layers.{name}", MISSING, f"is required by the layer {name}",
            f"add a section layers.{name} with the layer's settings")]) from None


def market_settings(instance: Instance, name: str) -> BaseModel | None:
    """Return the validated ``settings`` of market ``name`` (``None`` when its kind takes none)."""
    return instance.markets[name].settings


def validate_settings(model: type[BaseModel], value: object, location: Sequence[str | int]) -> tuple[
        BaseModel | None, list[dict]]:
    """Validate ``value`` with ``model``, and return the result or pydantic error details at ``location``."""
    try:
        return model.model_validate({} if value is None else value), []
    except ValidationError as error:
        return None, [_relocated(item, location) for item in error.errors()]


def known_names(names: Mapping[str, object] | Sequence[str]) -> str:
    """Return quoted, sorted names for messages, e.g. ``'compute', 'gpu'``."""
    return ", ".join(repr(name) for name in sorted(names)) or "(none registered)"


def _layer_fix() -> str:
    names = known_names(REGISTRY.layers())
    return (f"use one of: {names}. A layer from an extension needs its package installed "
            f"(it registers through the entry-point group {ENTRY_POINT_GROUP}) or a call to "
            "REGISTRY.add_layer")


def _relocated(item: Mapping[str, Any], location: Sequence[str | int]) -> dict:
    from pydantic_core import PydanticCustomError

    detail: dict[str, Any] = {"loc": (*location, *item["loc"]), "input": item.get("input")}
    if item["type"] in _KNOWN_ERROR_TYPES:
        detail["type"] = item["type"]
        if "ctx" in item:
            detail["ctx"] = item["ctx"]
    else:
        context = dict(item.get("ctx") or {})
        context.setdefault("message", item["msg"])
        detail["type"] = PydanticCustomError(item["type"], "{message}", context)
    return detail


_KNOWN_ERROR_TYPES = frozenset(get_args(ErrorType))
"""Pydantic's own error types. Other types are re-raised as custom errors."""


def _model_problems(path: str, model: object) -> list[FieldProblem]:
    if model is None or (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [FieldProblem(path, repr(model), "is not a pydantic model class",
                         "pass a subclass of pydantic.BaseModel, or None")]


def _literal_tag(model: type[BaseModel]) -> str | None:
    curve = model.model_fields.get("curve")
    values = get_args(curve.annotation) if curve is not None else ()
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _distribution(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


def _ensure_builtins() -> None:
    """Import the modules that register the built-in market kinds and curve families."""
    importlib.import_module(f"{__package__}.schema")
    importlib.import_module(f"{__package__}.markets")
