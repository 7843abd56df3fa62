"""The mixed-integer form as sparse arrays: variables, rows and objective.

The layers of the convex form declare their variables and linear
contributions on a :class:`~tokenomy.model.formulation.Builder` as usual, so
market usages and welfare parts are exactly those of the convex form. This
module then writes each layer's own constraints as linear rows, replacing
every cone by the tangent cuts of :mod:`tokenomy.solvers.cuts`, and adds the
discrete decisions:

* whole requests per option and deferred requests per task,
* whole GPUs per pool and phase,
* a fixed-charge binary per cache and for the training job,
* one autonomy level per action class.

Each weighted geometric mean (Cobb-Douglas effort, training effort) becomes
a chain of two-input means with one intermediate column per link but the
last (``effort_chain``, ``training_chain``), as in the convex form's chain of
power cones.

The result, :class:`LinearForm`, is what the Pyomo model and the direct
HiGHS path are built from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..model.data import FAMILIES, PER_MILLION, EconomyData, compile_data, effort_groups
from ..model.economy import default_layers
from ..model.errors import FieldProblem, InstanceError, SolveError
from ..model.formulation import Builder
from ..model.layers.agent import Agent, AgentIndex
from ..model.layers.base import WELFARE, usage, welfare
from ..model.layers.capital import Capital
from ..model.layers.serving import Serving
from ..model.markets import MarketSpec, define_markets, meter_markets
from ..model.registry import instance_layers
from ..model.schema import Instance
from .analysis import USED
from .cuts import (
    CutSettings,
    delay_cut,
    delay_error,
    delay_points,
    exp_error,
    exp_points,
    geometric_error,
    ratio_points,
    success_overstatement,
)

logger = logging.getLogger(__name__)

LAYER_OF = {
    "route": "router", "defer": "router",
    "tokens": "agent", "effort": "agent", "shortfall": "agent", "exposure": "agent",
    "review": "agent",
    "gpus_prefill": "serving", "gpus_decode": "serving", "load_prefill": "serving",
    "load_decode": "serving", "waiting": "serving",
    "cached": "capital", "cache_size": "capital", "cache_miss": "capital", "training": "capital",
    "training_effort": "capital", "training_miss": "capital", "capability": "capital",
}
"""Layer that owns each variable of the convex form kept in the mixed-integer form."""

LAYERS = ("router", "agent", "serving", "capital")

TRAINING_BOUND = 1e6
"""Bound on training tokens over their scale when the training pool has no GPU count."""


@dataclass
class VariableBlock:
    """A flat vector variable with bounds and integrality per entry."""

    name: str
    layer: str
    lower: np.ndarray
    upper: np.ndarray
    integer: np.ndarray

    @property
    def size(self) -> int:
        return len(self.lower)


@dataclass
class RowBlock:
    """Linear rows ``lower <= matrix @ x <= upper`` over all columns.

    ``owner`` is a layer name, or ``"markets"`` for the linking rows.
    """

    name: str
    owner: str
    matrix: sp.csr_matrix
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class ChainGroup:
    """Geometric means of one variable group that share their number of inputs.

    Row ``i`` is one mean: ``output[outputs[i]] <= G(inputs[inputs[i]] / normaliser[i])``,
    written as a chain whose intermediate means are the entries
    ``chain_start[i] .. chain_start[i] + m - 3`` of ``chain_variable``. The
    normaliser is the mix that minimises list-price spend, scaled so that
    ``G(normaliser) = 1``; the normalised inputs are equal at that mix.
    """

    input_variable: str
    output_variable: str
    chain_variable: str
    inputs: np.ndarray
    outputs: np.ndarray
    chain_start: np.ndarray
    normaliser: np.ndarray
    weights: np.ndarray
    relative_error: np.ndarray
    mix_factor: np.ndarray
    options: np.ndarray | None = None


@dataclass
class Options:
    """Settings of the mixed-integer form.

    Attributes
    ----------
    cuts:
        Tangent cuts of the curves.
    relax:
        Relax every integrality (the LP of the same cuts).
    autonomy:
        Level fixed per action class (``{"irreversible": "free"}``); classes
        left out are chosen by the solver.
    offsets:
        Added to each constraint market's right-hand side, per row, in the
        market's unit (used by finite-difference checks).
    """

    cuts: CutSettings = field(default_factory=CutSettings)
    relax: bool = False
    autonomy: Mapping[str, str] = field(default_factory=dict)
    offsets: Mapping[str, np.ndarray | float] = field(default_factory=dict)


@dataclass
class LinearForm:
    """The mixed-integer form of one instance as sparse arrays."""

    instance: Instance
    data: EconomyData
    builder: Builder
    markets: list[MarketSpec]
    welfare_scale: float
    variables: dict[str, VariableBlock] = field(default_factory=dict)
    start: dict[str, int] = field(default_factory=dict)
    rows: list[RowBlock] = field(default_factory=list)
    market_rows: dict[str, RowBlock] = field(default_factory=dict)
    usage: dict[str, sp.csr_matrix] = field(default_factory=dict)
    objective: np.ndarray = field(default_factory=lambda: np.zeros(0))
    action_classes: list[str] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)
    approximation: dict = field(default_factory=dict)
    chains: list[ChainGroup] = field(default_factory=list)
    welfare_rows: dict[str, sp.csr_matrix] = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    _stacked: tuple | None = field(default=None, repr=False)

    @property
    def columns(self) -> int:
        return sum(block.size for block in self.variables.values())

    def add_variable(self, name: str, layer: str, size: int, lower=0.0, upper=np.inf,
                     integer=False) -> None:
        self.start[name] = self.columns
        self.variables[name] = VariableBlock(
            name, layer,
            np.broadcast_to(np.asarray(lower, float), (size,)).copy(),
            np.broadcast_to(np.asarray(upper, float), (size,)).copy(),
            np.broadcast_to(np.asarray(integer, bool), (size,)).copy(),
        )

    def add_rows(self, name: str, owner: str, count: int, terms, lower=-np.inf, upper=0.0) -> None:
        """Add ``count`` rows; ``terms`` lists ``(variable, row, entry, coefficient)`` arrays."""
        if count == 0:
            return
        self.rows.append(RowBlock(name, owner, self._matrix(count, terms),
                                  np.broadcast_to(np.asarray(lower, float), (count,)).copy(),
                                  np.broadcast_to(np.asarray(upper, float), (count,)).copy()))

    def _matrix(self, count: int, terms) -> sp.csr_matrix:
        rows, cols, values = [], [], []
        for variable, row, entry, coefficient in terms:
            size = len(np.atleast_1d(row))
            rows.append(np.broadcast_to(np.asarray(row, int), (size,)))
            cols.append(self.start[variable] + np.broadcast_to(np.asarray(entry, int), (size,)))
            values.append(np.broadcast_to(np.asarray(coefficient, float), (size,)))
        if not rows:
            return sp.csr_matrix((count, self.columns))
        return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(count, self.columns))

    def quantity_matrix(self, quantity: str, size: int) -> sp.csr_matrix:
        """Return the unscaled matrix of a builder quantity over all columns."""
        target = self.builder.quantities.get(quantity)
        if target is None:
            return sp.csr_matrix((size, self.columns))
        parts = []
        for part in target.contributions:
            matrix = sp.coo_matrix(part.aggregate @ sp.diags(part.coefficient))
            parts.append((part.variable, matrix.row, matrix.col, matrix.data))
        return self._matrix(target.size, parts)

    def column_slice(self, name: str) -> slice:
        return slice(self.start[name], self.start[name] + self.variables[name].size)

    def integer_mask(self) -> np.ndarray:
        """Return whether each column is integer."""
        return np.concatenate([block.integer for block in self.variables.values()])

    def column_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the lower and upper bound of every column."""
        return (np.concatenate([block.lower for block in self.variables.values()]),
                np.concatenate([block.upper for block in self.variables.values()]))

    def stacked(self) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
        """Return every row (layer rows, then market rows) as one CSC matrix with its bounds.

        The result is cached, because the form does not change after :func:`build_form`.
        """
        if self._stacked is None:
            blocks = list(self.rows) + list(self.market_rows.values())
            matrix = sp.vstack([block.matrix for block in blocks], format="csc")
            matrix.sort_indices()
            self._stacked = (matrix, np.concatenate([block.lower for block in blocks]),
                             np.concatenate([block.upper for block in blocks]))
        return self._stacked

    def market_offsets(self) -> dict[str, int]:
        """Return the position of each market's first row in :meth:`stacked`."""
        offsets, position = {}, sum(block.matrix.shape[0] for block in self.rows)
        for name, block in self.market_rows.items():
            offsets[name] = position
            position += block.matrix.shape[0]
        return offsets

    def row_owners(self) -> list[tuple[str, int]]:
        """Return ``(block name, row within the block)`` for every row of :meth:`stacked`."""
        owners = []
        for block in list(self.rows) + list(self.market_rows.values()):
            owners += [(block.name, i) for i in range(block.matrix.shape[0])]
        return owners


def build_form(instance: Instance, options: Options | None = None) -> LinearForm:
    """Build the mixed-integer form of a validated instance."""
    options = options or Options()
    extra = instance_layers(instance)
    if extra:
        names = ", ".join(layer.name for layer in extra)
        raise SolveError(f"the mixed-integer form has no linear version of the extension layers "
                         f"({names}); solve with --backend cvxpy or tokenomy decompose")
    data = compile_data(instance)
    builder = Builder()
    layers = default_layers()
    for layer in layers:
        layer.declare(builder, data, instance)
    # Metered market kinds and tenant-scoped budgets derive their usage from the layers'.
    meter_markets(builder, data, instance)
    agent = next(layer for layer in layers if isinstance(layer, Agent))
    serving = next(layer for layer in layers if isinstance(layer, Serving))
    capital = next(layer for layer in layers if isinstance(layer, Capital))
    _check_families(data, instance)

    form = LinearForm(instance, data, builder, define_markets(instance, data),
                      float(np.sum(data.volume * data.value)) or 1.0)
    form.layers = {layer.name: layer for layer in layers}
    for name, variable in builder.variables.items():
        if name in LAYER_OF:
            form.add_variable(name, LAYER_OF[name], variable.size)
        elif ".mean" not in name:
            raise ValueError(f"variable {name!r} of the convex form has no layer in LAYER_OF")
    form.action_classes = sorted({use.action for use in instance.uses.values()})
    form.levels = list(instance.autonomy.levels)
    _declare_discrete(form, builder, options)
    _declare_chains(form, agent, capital, options.cuts)

    settings = options.cuts
    points = exp_points(settings)
    form.approximation = {
        "pieces": settings.pieces,
        "exp_points": int(len(points)),
        "exp_error": exp_error(points),
        "max_utilization": settings.max_utilization,
        "geometric_pieces": settings.geometric_pieces,
        "geometric_range": settings.geometric_range,
    }
    _router_rows(form)
    _agent_rows(form, agent, points)
    for group in form.chains:
        _chain_rows(form, group, settings)
    _autonomy_rows(form)
    _serving_rows(form, serving, settings)
    _capital_rows(form, capital, points)
    _market_rows(form, options)
    _objective(form)
    _approximation_bounds(form, capital)
    if options.relax:
        for block in form.variables.values():
            block.integer[:] = False
    logger.info("mixed-integer form: %d columns (%d integer), %d rows", form.columns,
                sum(int(b.integer.sum()) for b in form.variables.values()),
                sum(r.matrix.shape[0] for r in form.rows) + sum(
                    r.matrix.shape[0] for r in form.market_rows.values()))
    return form


def _declare_discrete(form: LinearForm, builder: Builder, options: Options) -> None:
    """Declare the discrete variables and the MIP-only contributions on the builder."""
    data, instance = form.data, form.instance
    volume = data.volume
    integral = np.isclose(volume, np.round(volume))
    fractional = np.flatnonzero(~integral)
    if len(fractional):
        names = ", ".join(f"tasks.{data.tasks[x]}.volume={volume[x]:g}" for x in fractional[:3])
        logger.warning("%d task volumes are not whole numbers (%s%s): their request counts stay "
                       "continuous; round the volumes to make them integer", len(fractional),
                       names, ", ..." if len(fractional) > 3 else "")
    tasks = data.option_task
    # No upper bounds on shares or counts: the routing row implies them, and a
    # redundant bound would make its price degenerate.
    form.variables["defer"].upper[:] = np.where(data.defer_enabled > 0, np.inf, 0.0)
    form.add_variable("requests", "router", data.option_count, 0.0, np.inf, integral[tasks])
    form.add_variable("deferred", "router", len(data.tasks), 0.0, np.inf, integral)
    for name in ("gpus_prefill", "gpus_decode"):
        if name in form.variables:
            form.variables[name].integer[:] = True

    classes, levels = form.action_classes, form.levels
    for action, level in options.autonomy.items():
        if action not in classes or level not in levels:
            raise InstanceError("<options>", [FieldProblem(
                f"autonomy.{action}", level, "is not an action class of the uses and a level of "
                "autonomy.levels", f"use one of {classes} and one of {levels}")])
    pairs = len(classes) * len(levels)
    fixed = np.zeros(pairs)
    lower = np.zeros(pairs)
    for c, action in enumerate(classes):
        if action in options.autonomy:
            lower[c * len(levels) + levels.index(options.autonomy[action])] = 1.0
        else:
            fixed[c * len(levels):(c + 1) * len(levels)] = 1.0
    form.add_variable("autonomy", "agent", pairs, lower, fixed + lower, True)
    form.add_variable("exposed", "agent", pairs)
    form.add_variable("supervised", "agent", pairs)
    for name in ("exposed", "supervised"):
        builder.variable(name, pairs)

    settings = [instance.autonomy.levels[level] for level in levels]
    multiplier = np.tile([s.risk_multiplier for s in settings], len(classes))
    minutes = np.tile([s.review_minutes for s in settings], len(classes))
    cost = np.tile([s.cost for s in settings], len(classes))
    risk = builder.quantities.get(usage("risk"))
    if risk is not None:
        # The autonomy schedule scales the exposure the agent layer reports.
        risk.contributions = [p for p in risk.contributions if p.variable != "exposure"]
        builder.contribute(usage("risk"), "agent", "exposed", multiplier, unit="USD")
    builder.contribute(usage("oversight"), "agent", "supervised", minutes, unit="minutes")
    builder.contribute(welfare("autonomy"), "agent", "supervised", -cost)

    caches = list(instance.capital.cache)
    if caches and "cache_size" in form.variables:
        form.add_variable("cache_on", "capital", len(caches), 0.0, 1.0, True)
        builder.variable("cache_on", len(caches))
        builder.contribute(welfare("fixed_charge"), "capital", "cache_on",
                           -np.array([instance.capital.cache[c].fixed_cost for c in caches]))
    if instance.capital.training is not None:
        form.add_variable("training_run", "capital", 1, 0.0, 1.0, True)
        builder.variable("training_run", 1)
        builder.contribute(welfare("fixed_charge"), "capital", "training_run",
                           -instance.capital.training.fixed_cost)


def _router_rows(form: LinearForm) -> None:
    data = form.data
    options = np.arange(data.option_count)
    tasks = np.arange(len(data.tasks))
    form.add_rows("router.count_requests", "router", data.option_count, [
        ("route", options, options, data.volume[data.option_task]),
        ("requests", options, options, -1.0)], lower=0.0, upper=0.0)
    form.add_rows("router.count_deferred", "router", len(tasks), [
        ("defer", tasks, tasks, data.volume), ("deferred", tasks, tasks, -1.0)],
        lower=0.0, upper=0.0)


def _exp_cut_terms(points: np.ndarray, count: int):
    """Return ``(row, entry, slope, level)`` of ``count`` curves with one cut per point.

    A cut ``e >= exp(-t) * ((1 + t) * y - u)`` has ``level = exp(-t) * (1 + t)``
    on ``y`` and ``slope = exp(-t)`` on ``u``.
    """
    entry = np.repeat(np.arange(count), len(points))
    row = np.arange(count * len(points))
    t = np.tile(points, count)
    return row, entry, np.exp(-t), np.exp(-t) * (1 + t)


def _agent_rows(form: LinearForm, agent: Agent, points) -> None:
    data = form.data
    index = agent.index
    options = index.variable_options
    pair_index = np.full((data.option_count, len(data.uses)), -1)
    pair_index[index.pair_option, index.pair_use] = np.arange(len(index.pair_option))

    if len(options):
        row, entry, slope, level = _exp_cut_terms(points, len(options))
        form.add_rows("agent.success", "agent", len(row), [
            ("route", row, options[entry], level),
            ("effort", row, entry, -slope * data.rate[options][entry]),
            ("shortfall", row, entry, -1.0)])
        _linear_effort_rows(form, options, pair_index)

    fixed = data.fixed_tokens[index.pair_option, index.pair_use]
    pairs = np.flatnonzero(np.isfinite(fixed))
    if len(pairs):
        ratio = fixed[pairs] / data.scale[index.pair_option[pairs], index.pair_use[pairs]]
        rows = np.arange(len(pairs))
        form.add_rows("agent.fixed_tokens", "agent", len(pairs), [
            ("tokens", rows, pairs, 1.0), ("route", rows, index.pair_option[pairs], -ratio)],
            lower=0.0, upper=0.0)

    risk = index.risk_options
    if len(risk):
        count, reviews = len(risk), len(data.reviews)
        row_of = np.full(data.option_count, -1)
        row_of[risk] = np.arange(count)
        k, a = index.pair_option, index.pair_use
        cuts = np.flatnonzero(np.isfinite(data.risk_scale[a]) & (row_of[k] >= 0))
        weight = data.scale[k[cuts], a[cuts]] / data.risk_scale[a[cuts]]
        row, entry, slope, level = _exp_cut_terms(points, count)
        # Cut t of exposure r: every token pair and review of r, times slope t.
        per_exposure = len(points)
        token_rows = (row_of[k[cuts]][:, None] * per_exposure + np.arange(per_exposure)).ravel()
        token_entries = np.repeat(cuts, per_exposure)
        token_values = (weight[:, None] * np.exp(-points)[None, :]).ravel()
        terms = [("route", row, risk[entry], level), ("exposure", row, entry, -1.0),
                 ("tokens", token_rows, token_entries, -token_values)]
        if reviews:
            review_entries = np.arange(count * reviews)
            review_rows = ((review_entries // reviews)[:, None] * per_exposure
                           + np.arange(per_exposure)).ravel()
            terms.append(("review", review_rows, np.repeat(review_entries, per_exposure),
                          -np.tile(np.exp(-points), count * reviews)))
        form.add_rows("agent.risk", "agent", len(row), terms)
        rows = np.arange(count)
        form.add_rows("agent.exposure_bound", "agent", count, [
            ("exposure", rows, rows, 1.0), ("route", rows, risk, -1.0)])


def _linear_effort_rows(form: LinearForm, options, pair_index) -> None:
    """Bound the effort of single-input, saturating and Leontief curves by each input."""
    data = form.data
    support = data.in_curve[options]
    linear, _ = effort_groups(data, options)
    rows, uses = np.nonzero(support & linear[:, None])
    if len(rows):
        count = np.arange(len(rows))
        form.add_rows("agent.effort_bound", "agent", len(rows), [
            ("effort", count, rows, 1.0), ("tokens", count, pair_index[options[rows], uses], -1.0)])


def _check_families(data: EconomyData, instance: Instance) -> None:
    """Raise when a quality curve's family has no tangent cuts here (a registered extension)."""
    unknown = np.flatnonzero(~np.isin(data.family, FAMILIES))
    if len(unknown):
        task, model = data.option_label(int(unknown[0]))
        raise InstanceError(instance.name or "<instance>", [FieldProblem(
            f"models.{model}.quality (task {task}).curve", data.family[unknown[0]],
            "has no mixed-integer form: only " + ", ".join(FAMILIES) + " curves have tangent cuts",
            "solve this instance with the convex backend (omit --backend)")])


def _token_cost(data: EconomyData, index: AgentIndex) -> np.ndarray:
    """Return the list-price spend per unit of each token variable (USD per period)."""
    k, a = index.pair_option, index.pair_use
    models, tasks = data.option_model[k], data.option_task[k]
    share = data.input_share[a]
    per_token = share * data.price_input[models] + (1 - share) * data.price_output[models]
    return data.volume[tasks] * data.scale[k, a] * per_token


def _cheapest_mix(weights: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Return the mixes that minimise ``costs . x`` at ``G(x) = 1``, one per row.

    ``x_a`` is proportional to ``weights_a / costs_a``. A free input (cost 0)
    counts as costing 1, because any positive normaliser keeps the cuts valid.
    """
    costs = np.where(costs > 0, costs, 1.0)
    mix = weights / costs
    return mix / np.exp(np.sum(weights * np.log(mix), axis=1))[:, None]


def _chain_bounds(weights: np.ndarray, settings: CutSettings) -> tuple[np.ndarray, np.ndarray]:
    """Return the relative error and mix factor of :func:`geometric_error` per row of weights."""
    unique, inverse = np.unique(np.round(weights, 12), axis=0, return_inverse=True)
    bounds = [geometric_error(row, settings) for row in unique]
    inverse = inverse.ravel()
    return (np.array([b.relative_error for b in bounds])[inverse],
            np.array([b.mix_factor for b in bounds])[inverse])


def _declare_chains(form: LinearForm, agent: Agent, capital: Capital,
                    settings: CutSettings) -> None:
    """Group the geometric means and declare their intermediate columns.

    Columns must exist before any row is built, so this runs before the rows.
    """
    data = form.data
    index = agent.index
    options = index.variable_options
    start = 0
    if len(options) and "effort" in form.variables:
        pair_index = np.full((data.option_count, len(data.uses)), -1)
        pair_index[index.pair_option, index.pair_use] = np.arange(len(index.pair_option))
        cost = _token_cost(data, index)
        _, cobb = effort_groups(data, options)
        members_all = np.flatnonzero(cobb)
        patterns, group = np.unique(data.in_curve[options[members_all]], axis=0, return_inverse=True)
        for g, pattern in enumerate(patterns):
            members = members_all[group.ravel() == g]
            ks = options[members]
            used = np.flatnonzero(pattern)
            pairs = pair_index[ks[:, None], used[None, :]]
            weights = data.weight[ks[:, None], used[None, :]]
            weights = weights / weights.sum(axis=1, keepdims=True)
            error, factor = _chain_bounds(weights, settings)
            links = len(used) - 2
            form.chains.append(ChainGroup(
                "tokens", "effort", "effort_chain", pairs, members,
                start + links * np.arange(len(members)), _cheapest_mix(weights, cost[pairs]),
                weights, error, factor, ks))
            start += links * len(members)
    form.add_variable("effort_chain", "agent", start)

    training = form.instance.capital.training
    count = 0
    if capital.training_inputs is not None and len(capital.training_inputs[0]) > 1:
        inputs, scales = capital.training_inputs
        weights = np.array([[training.weights[i] for i in inputs]], dtype=float)
        weights = weights / weights.sum()
        spend = (scales * training.price * PER_MILLION)[None, :]
        error, factor = _chain_bounds(weights, settings)
        count = len(inputs) - 2
        form.chains.append(ChainGroup(
            "training", "training_effort", "training_chain", np.arange(len(inputs))[None, :],
            np.zeros(1, dtype=int), np.zeros(1, dtype=int), _cheapest_mix(weights, spend),
            weights, error, factor))
    form.add_variable("training_chain", "capital", count)


def _chain_rows(form: LinearForm, group: ChainGroup, settings: CutSettings) -> None:
    """Add the tangent cuts of every link of every mean in a group, in one block.

    Link ``l`` bounds the mean of inputs ``0 .. l+1`` by the cuts of
    ``prev**(1 - gamma) * x**gamma`` (:func:`~tokenomy.solvers.cuts.link_cut`),
    where ``prev`` is input 0 for the first link and the previous link's
    intermediate mean otherwise. The last link bounds the output variable.
    """
    points = ratio_points(settings)
    count, width = group.weights.shape
    links, pieces = width - 1, len(points)
    gamma = group.weights[:, 1:] / np.cumsum(group.weights, axis=1)[:, 1:]
    on_mean = (1.0 - gamma)[:, :, None] * np.exp(gamma[:, :, None] * points)
    on_input = gamma[:, :, None] * np.exp((gamma[:, :, None] - 1.0) * points)
    rows = np.arange(count * links * pieces).reshape(count, links, pieces)
    scale = 1.0 / group.normaliser
    chain = group.chain_start[:, None, None] + np.arange(links - 1)[None, :, None]

    def flat(*arrays):
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        return [np.broadcast_to(a, shape).ravel() for a in arrays]

    owner = LAYER_OF.get(group.output_variable, "capital")
    terms = [
        (group.output_variable, *flat(rows[:, -1, :], group.outputs[:, None], 1.0)),
        (group.input_variable, *flat(rows[:, 0, :], group.inputs[:, 0, None],
                                     -on_mean[:, 0, :] * scale[:, 0, None])),
        (group.input_variable, *flat(rows, group.inputs[:, 1:, None],
                                     -on_input * scale[:, 1:, None])),
    ]
    if links > 1:
        terms += [
            (group.chain_variable, *flat(rows[:, :-1, :], chain, 1.0)),
            (group.chain_variable, *flat(rows[:, 1:, :], chain, -on_mean[:, 1:, :])),
        ]
    name = "agent.effort_cuts" if group.output_variable == "effort" else "capital.training_effort_cuts"
    form.add_rows(name, owner, count * links * pieces, terms)


def _autonomy_rows(form: LinearForm) -> None:
    data, instance = form.data, form.instance
    classes, levels = form.action_classes, form.levels
    count = len(levels)
    pairs = np.arange(len(classes) * count)
    form.add_rows("agent.autonomy_choice", "agent", len(classes), [
        ("autonomy", pairs // count, pairs, 1.0)], lower=1.0, upper=1.0)

    # Requests routed to a model act in every class; supervised >= routed at the chosen level.
    # Big-M constants are twice the largest possible value, so the row of a level
    # not chosen never binds: a binding one would make prices degenerate.
    routed_max = 2.0 * float(np.sum(data.volume))
    options = np.arange(data.option_count)
    coefficient = data.volume[data.option_task] / routed_max
    rows = np.repeat(pairs, data.option_count)
    form.add_rows("agent.supervision", "agent", len(pairs), [
        ("route", rows, np.tile(options, len(pairs)), np.tile(coefficient, len(pairs))),
        ("supervised", pairs, pairs, -1.0 / routed_max), ("autonomy", pairs, pairs, 1.0)],
        upper=1.0)

    if "exposure" not in form.variables:
        return
    index_options = _risk_options(form)
    tasks = data.option_task[index_options]
    loss = data.volume[tasks] * data.loss[tasks] * data.wrong_action[index_options]
    exposure_max = 2.0 * float(np.sum(data.volume * data.loss * _max_wrong(data)))
    share = instance.autonomy.loss_share
    charged = []
    for c, action in enumerate(classes):
        level_share = share.get(action, 1.0 if action == "irreversible" else 0.0)
        if level_share * exposure_max <= 0:
            continue
        charged.extend(range(c * count, (c + 1) * count))
    if not charged:
        return
    charged = np.array(charged)
    shares = np.array([share.get(classes[p // count], 1.0 if classes[p // count] == "irreversible"
                                 else 0.0) for p in charged])
    row = np.arange(len(charged))
    entries = np.arange(len(index_options))
    rows = np.repeat(row, len(entries))
    terms = [
        ("exposure", rows, np.tile(entries, len(charged)),
         (shares[:, None] * loss[None, :]).ravel() / exposure_max),
        ("exposed", row, charged, -1.0 / exposure_max),
        ("autonomy", row, charged, shares),
    ]
    form.add_rows("agent.exposed_loss", "agent", len(charged), terms, upper=shares)


def _risk_options(form: LinearForm) -> np.ndarray:
    return form.layers["agent"].index.risk_options


def _max_wrong(data: EconomyData) -> np.ndarray:
    largest = np.zeros(len(data.tasks))
    np.maximum.at(largest, data.option_task, data.wrong_action)
    return largest


def _serving_rows(form: LinearForm, serving: Serving, settings: CutSettings) -> None:
    data, instance = form.data, form.instance
    if not data.pools:
        return
    pools = [instance.pools[name] for name in data.pools]
    count = len(pools)
    index = np.arange(count)
    cap = np.ones(2 * count)
    delayed = serving.delay_rows
    if delayed is not None:
        rows, phase = delayed
        for p, ph in zip(rows, phase, strict=True):
            if pools[p].delay.curve == "mm1":
                cap[ph * count + p] = settings.max_utilization
    form.add_rows("serving.capacity", "serving", 2 * count, [
        ("load_prefill", index, index, 1.0), ("load_decode", count + index, index, 1.0),
        ("gpus_prefill", index, index, -cap[:count]),
        ("gpus_decode", count + index, index, -cap[count:])])
    if delayed is None:
        return

    rows, phase = delayed
    terms, offset, errors = [], 0, []
    for i, (p, ph) in enumerate(zip(rows, phase, strict=True)):
        curve = pools[p].delay
        points = delay_points(curve.curve, settings)
        a, b = delay_cut(curve.curve, curve.power, points)
        row = offset + np.arange(len(points))
        load, gpus = ("load_prefill", "gpus_prefill") if ph == 0 else ("load_decode", "gpus_decode")
        terms += [(load, row, p, a), (gpus, row, p, b), ("waiting", row, i, -1.0)]
        offset += len(points)
        errors.append({"pool": data.pools[p], "phase": "prefill" if ph == 0 else "decode",
                       "curve": curve.curve,
                       "error_per_gpu": delay_error(curve.curve, curve.power, points)})
    form.add_rows("serving.delay", "serving", offset, terms)
    form.approximation["delay"] = errors


def _capital_rows(form: LinearForm, capital: Capital, points) -> None:
    data, instance, constants = form.data, form.instance, form.builder.constants
    if capital.cache_index is not None:
        cacheable, caches, _ = capital.cache_index
        count = len(cacheable)
        rows = np.arange(count)
        form.add_rows("capital.cache_reuse", "capital", count, [
            ("cached", rows, rows, 1.0), ("route", rows, cacheable, -constants["cache.reuse"])])
        cache_rows = np.arange(len(caches))
        form.add_rows("capital.cache_size_limit", "capital", len(caches), [
            ("cache_size", cache_rows, cache_rows, 1.0),
            ("cache_on", cache_rows, cache_rows, -np.atleast_1d(constants["cache.limit"]))])
        served = sp.coo_matrix(constants["cache.served"])
        form.add_rows("capital.cache_hits", "capital", len(caches), [
            ("cached", served.row, served.col, served.data),
            ("cache_miss", cache_rows, cache_rows, 1.0)], upper=1.0)
        row, entry, slope, level = _exp_cut_terms(points, len(caches))
        form.add_rows("capital.cache_miss_cuts", "capital", len(row), [
            ("cache_size", row, entry, -slope), ("cache_miss", row, entry, -1.0)], upper=-level)

    if capital.training_inputs is None:
        return
    training = instance.capital.training
    inputs, scales = capital.training_inputs
    amount = np.arange(len(inputs))
    pool_gpus = instance.pools[training.pool].gpus
    if pool_gpus is None:
        # NOTE: with rented GPUs nothing bounds training, so the fixed charge uses a large bound.
        bound = np.full(len(inputs), TRAINING_BOUND)
    else:
        bound = pool_gpus * training.tokens_per_gpu_second * data.period / scales
    form.add_rows("capital.training_run_bound", "capital", len(inputs), [
        ("training", amount, amount, 1.0), ("training_run", amount, 0, -bound)])
    if len(inputs) == 1:
        form.add_rows("capital.training_effort_bound", "capital", 1, [
            ("training_effort", 0, 0, 1.0), ("training", 0, 0, -1.0)])
    row, entry, slope, level = _exp_cut_terms(points, 1)
    form.add_rows("capital.training_miss_cuts", "capital", len(row), [
        ("training_effort", row, entry, -slope * float(constants["training.rate"])),
        ("training_miss", row, entry, -1.0)], upper=-level)
    form.add_rows("capital.training_gain", "capital", 1, [
        ("capability", 0, 0, 1.0), ("training_miss", 0, 0, 1.0)], upper=1.0)


def _market_rows(form: LinearForm, options: Options) -> None:
    """Add each constraint market as linking rows; store every market's usage matrix."""
    for spec in form.markets:
        size = form.builder.quantities[spec.quantity].size \
            if spec.quantity in form.builder.quantities else int(spec.rows.max(initial=-1)) + 1
        matrix = form.quantity_matrix(spec.quantity, size)[spec.rows]
        form.usage[spec.name] = sp.csr_matrix(matrix)
        if not spec.is_constraint:
            continue
        offset = np.broadcast_to(np.asarray(options.offsets.get(spec.name, 0.0), float),
                                 spec.rows.shape)
        rhs = (spec.rhs + offset) / spec.scale
        lower = rhs if spec.mode == "equality" else np.full(len(rhs), -np.inf)
        form.market_rows[spec.name] = RowBlock(
            spec.name, "markets", sp.csr_matrix(sp.diags(1.0 / spec.scale) @ matrix), lower, rhs)


def _objective(form: LinearForm) -> None:
    """Set the objective: welfare parts and priced-market charges over the welfare scale."""
    vector = np.zeros(form.columns)
    for name in sorted(form.builder.quantities):
        if name.startswith(WELFARE):
            row = sp.csr_matrix(form.quantity_matrix(name, 1).sum(axis=0))
            form.welfare_rows[name.removeprefix(WELFARE)] = row
            vector += row.toarray().ravel()
    for spec in form.markets:
        if spec.mode == "price":
            charge = spec.price * spec.weight
            vector -= np.asarray(form.usage[spec.name].T @ charge).ravel()
    form.objective = vector / form.welfare_scale


def _approximation_bounds(form: LinearForm, capital: Capital) -> None:
    """Convert the cut errors into USD per period bounds on the welfare overstatement."""
    data = form.data
    error = form.approximation["exp_error"]
    value = float(np.sum(data.volume[data.option_task] * data.value[data.option_task]
                         * data.max_success * (data.family != "constant")))
    loss = float(np.sum(data.volume * data.loss * _max_wrong(data)))
    form.approximation["success_error_usd"] = error * value
    form.approximation["risk_error_usd"] = error * loss
    _geometric_bounds(form, capital)
    for row in form.approximation.get("delay", []):
        pool = form.instance.pools[row["pool"]]
        throughput = (pool.prefill_tokens_per_gpu_second if row["phase"] == "prefill"
                      else pool.decode_tokens_per_gpu_second) * data.period
        per_unit = pool.delay.value_of_time * throughput * (
            pool.delay.scale if pool.delay.curve == "mm1" else pool.delay.slope)
        row["error_usd"] = None if pool.gpus is None else row["error_per_gpu"] * per_unit * pool.gpus


def _geometric_bounds(form: LinearForm, capital: Capital) -> None:
    """Record the a-priori bounds of the geometric-mean chains, in effort and in USD.

    An effort overstated by at most a factor ``1 + rho`` overstates a success
    probability ``1 - exp(-rate * G)`` by at most ``success_overstatement(rho)``
    (:func:`~tokenomy.solvers.cuts.success_overstatement`), whatever the rate
    and the effort. Route shares of a task sum to at most one, so the success
    value of task x is overstated by at most ``n_x V_x max_k(q_k * phi_k)``
    over its options k with a chain.
    """
    data = form.data
    for group in form.chains:
        phi = np.array([success_overstatement(rho) for rho in group.relative_error])
        summary = {"links": int(group.weights.shape[1] - 1),
                   "pieces_per_link": form.approximation["geometric_pieces"],
                   "relative_error": float(group.relative_error.max()),
                   "mix_factor": float(group.mix_factor.min()),
                   "success_overstatement": float(phi.max())}
        if group.options is not None:
            tasks = data.option_task[group.options]
            worst = np.zeros(len(data.tasks))
            np.maximum.at(worst, tasks, data.max_success[group.options] * phi)
            summary["error_usd"] = float(np.sum(data.volume * data.value * worst))
            _merge(form.approximation, "effort", summary)
        else:
            training = form.instance.capital.training
            summary["error_usd"] = float(training.value * training.max_gain * capital.staleness
                                         * phi[0])
            _merge(form.approximation, "training_effort", summary)


def _merge(approximation: dict, key: str, summary: dict) -> None:
    """Combine the summaries of several chain groups into their worst case."""
    if key not in approximation:
        approximation[key] = summary
        return
    current = approximation[key]
    current["links"] = max(current["links"], summary["links"])
    for name in ("relative_error", "success_overstatement"):
        current[name] = max(current[name], summary[name])
    current["mix_factor"] = min(current["mix_factor"], summary["mix_factor"])
    current["error_usd"] += summary["error_usd"]


def realised_effort_error(form: LinearForm, values: np.ndarray) -> dict:
    """Return the error of the geometric-mean cuts at a solution, for options in use.

    For each Cobb-Douglas option with a route share above ``USED`` this
    compares the effort the solution uses with the true geometric mean of its
    tokens. ``outside_mix_range`` counts options whose token mix is farther
    than the chain's ``mix_factor`` from the cheapest mix, where the a-priori
    bound does not apply. ``success_overstatement_usd`` is the success value
    that the difference adds, ``n V q (y exp(-r G / y) - y exp(-r e / y))``,
    before the exponential cuts.
    """
    data = form.data
    route = values[form.column_slice("route")]
    worst, outside, usd, checked = 0.0, 0, 0.0, 0
    for group in form.chains:
        if group.options is None:
            continue
        tokens = values[form.column_slice(group.input_variable)][group.inputs]
        effort = values[form.column_slice(group.output_variable)][group.outputs]
        share = route[group.options]
        used = share > USED
        normalised = np.maximum(tokens, 0.0) / group.normaliser
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(normalised)
            true = np.exp(np.sum(group.weights * logs, axis=1))
            # A mix with a zero input has no finite ratio, so it counts as outside.
            inside = (np.max(logs, axis=1) - np.min(logs, axis=1)) <= np.log(group.mix_factor)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(true > 0, effort / true - 1.0, np.where(effort > 0, np.inf, 0.0))
        checked += int(used.sum())
        outside += int(np.sum(used & ~inside))
        if np.any(used & inside):
            worst = max(worst, float(np.max(relative[used & inside])))
        tasks = data.option_task[group.options]
        rate, safe = data.rate[group.options], np.where(used, share, 1.0)
        gap = safe * (np.exp(-rate * true / safe) - np.exp(-rate * np.maximum(effort, true) / safe))
        usd += float(np.sum(np.where(used, data.volume[tasks] * data.value[tasks]
                                     * data.max_success[group.options] * gap, 0.0)))
    return {"options_checked": checked, "outside_mix_range": outside,
            "max_relative_error": worst, "success_overstatement_usd": usd}


def margin_columns(form: LinearForm, values: np.ndarray) -> dict[str, dict]:
    """Choose, per task, the request count that the fixed-integer LP leaves free.

    Holding every count fixed would make the routing row constant, so its
    dual would carry no information. Freeing one count per task keeps the
    solution (the routing row then sets that count to its MIP value) and
    makes the routing price the marginal surplus of one more request sent
    to that option, or deferred.

    The margin is the option (or the deferral) with the most requests among
    those that need no GPU of a pool whose capacity binds, because the fixed
    LP cannot add a GPU for the next request. When every candidate needs
    such a GPU, the one with the most requests is used.

    Returns ``{task: {"model": model name or "defer", "column": column index}}``;
    tasks with no request are left out.
    """
    data = form.data
    requests = values[form.column_slice("requests")]
    deferred = values[form.column_slice("deferred")]
    blocked = _saturated_pools(form, values)
    first_request, first_deferred = form.start["requests"], form.start["deferred"]
    margins: dict[str, dict] = {}
    for x, task in enumerate(data.tasks):
        options = np.flatnonzero(data.option_task == x)
        counts = list(requests[options]) + [deferred[x]]
        columns = [first_request + k for k in options] + [first_deferred + x]
        models = [data.models[data.option_model[k]] for k in options] + ["defer"]
        pools = [data.model_pool[data.option_model[k]] for k in options] + [-1]
        candidates = [i for i, count in enumerate(counts) if count > 0.5]
        if not candidates:
            continue
        free = [i for i in candidates if pools[i] < 0 or pools[i] not in blocked]
        best = max(free or candidates, key=lambda i: counts[i])
        margins[task] = {"model": models[best], "column": int(columns[best])}
    return margins


def _saturated_pools(form: LinearForm, values: np.ndarray) -> set[int]:
    """Return the pools whose prefill or decode capacity binds at ``values``."""
    block = next((b for b in form.rows if b.name == "serving.capacity"), None)
    if block is None:
        return set()
    count = len(form.data.pools)
    gpus = np.concatenate([values[form.column_slice("gpus_prefill")],
                           values[form.column_slice("gpus_decode")]])
    slack = block.upper - block.matrix @ values
    binding = slack <= 1e-7 * np.maximum(1.0, gpus)
    return {int(p) for p in np.flatnonzero(binding[:count] | binding[count:])}


def fixed_integer_bounds(form: LinearForm, values: np.ndarray,
                         margins: dict[str, dict]) -> tuple[np.ndarray, np.ndarray]:
    """Return column bounds of the fixed-integer LP.

    Every integer column is fixed at its rounded value, except the margin
    count of each task (see :func:`margin_columns`), which keeps its own bounds.
    """
    lower, upper = form.column_bounds()
    integer = form.integer_mask()
    free = np.zeros(len(integer), dtype=bool)
    free[np.array([margin["column"] for margin in margins.values()], dtype=int)] = True
    fixed = integer & ~free
    lower[fixed] = upper[fixed] = np.round(values[fixed])
    return lower, upper
