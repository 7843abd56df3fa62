"""The coupled four-layer program: layers joined only through named markets."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import cvxpy as cp
import networkx as nx
import numpy as np

from .data import compile_data
from .formulation import Builder, StructureChanged
from .layers.agent import Agent
from .layers.base import WELFARE, Layer
from .layers.capital import Capital
from .layers.router import Router
from .layers.serving import Serving
from .markets import MarketSpec, define_markets, meter_markets
from .registry import instance_layers
from .schema import Instance

logger = logging.getLogger(__name__)

MAX_PARAMETER_ROWS = 64
"""Markets with more rows (one per task) take their right-hand sides as constants.

CVXPY (1.9) stores the DPP tensor of a parameter vector with memory that
grows with its length times the problem size, so per-task right-hand sides
as Parameters cost gigabytes at a thousand tasks. Changing them rebuilds the
problem instead, which is fast without parameters.
"""


def default_layers() -> list[Layer]:
    """Return fresh router, agent, serving and capital layers, in request order."""
    return [Router(), Agent(), Serving(), Capital()]


class Economy:
    """The joint convex program of one instance.

    Parameters
    ----------
    instance:
        A validated instance (see :func:`tokenomy.model.load_instance`).
    layers:
        Layers in request order; defaults to :func:`default_layers` followed
        by the extension layers the instance enables under ``layers``.
    prices:
        Exogenous price per row for priced markets, overriding the instance
        (``{market name: array}``, in the market's price unit).
    offsets:
        Added to each constraint market's right-hand side, per row, in the
        market's unit (used by finite-difference checks of prices).

    Attributes
    ----------
    data:
        Index sets and arrays compiled from the instance.
    markets:
        Market specs, implicit (routing, serving loads, GPUs) and declared.
    problem:
        The CVXPY problem. Uniform market prices and the right-hand sides of
        markets with at most ``MAX_PARAMETER_ROWS`` rows are Parameters, so
        :meth:`update` re-solves without recompiling when only those change.
    welfare_scale:
        USD per period that becomes 1 in the objective passed to the solver.
    """

    def __init__(
        self,
        instance: Instance,
        layers: Sequence[Layer] | None = None,
        prices: Mapping[str, np.ndarray | float] | None = None,
        offsets: Mapping[str, np.ndarray | float] | None = None,
    ):
        self._instance_layers = layers is None
        self.layers = list(layers) if layers is not None else _layers_for(instance)
        self.markets: list[MarketSpec] = []
        self._build(instance, prices or {}, offsets or {}, reuse=None)

    # -- construction -----------------------------------------------------

    def _build(self, instance, prices, offsets, reuse: Builder | None) -> None:
        started = time.perf_counter()
        data = compile_data(instance)
        builder = Builder(reuse=reuse)
        for layer in self.layers:
            layer.declare(builder, data, instance)
        meter_markets(builder, data, instance)
        markets = define_markets(instance, data)
        old_scales = {spec.name: spec.scale for spec in self.markets} if reuse is not None else {}
        for spec in markets:
            if spec.name in prices:
                spec.price = np.broadcast_to(np.asarray(prices[spec.name], float), spec.rows.shape).copy()
            # Keep row scales across updates: they are constants of the compiled rows.
            old = old_scales.get(spec.name)
            if old is not None and old.shape == spec.scale.shape:
                spec.scale = old

        welfare_scale = float(np.sum(data.volume * data.value)) or 1.0
        terms = [builder.objective_term(name, welfare_scale)
                 for name in sorted(builder.quantities) if name.startswith(WELFARE)]
        terms += [self._price_charge(builder, spec, welfare_scale)
                  for spec in markets if spec.mode == "price"]
        objective = cp.sum(cp.hstack(terms))
        market_constraints = {
            spec.name: self._market_constraint(builder, spec, offsets.get(spec.name, 0.0))
            for spec in markets if spec.is_constraint
        }
        if reuse is not None:
            _check_same_structure(builder, reuse)
            # The compiled problem contains the first build's constraints, so its duals are there.
            builder.constraints = reuse.constraints
        else:
            constraints = list(builder.constraints) + list(market_constraints.values())
            self.problem = cp.Problem(cp.Maximize(objective), constraints)
            self.market_constraints = market_constraints
        self.instance, self.data, self.builder = instance, data, builder
        self.markets = markets
        self.welfare_scale = welfare_scale
        self.build_seconds = time.perf_counter() - started

    @staticmethod
    def _usage_rows(builder: Builder, spec: MarketSpec) -> cp.Expression:
        """Return the market's usage rows divided by their row scales."""
        if spec.quantity not in builder.quantities:
            logger.warning("market %s has no contributions; its usage is zero", spec.name)
            builder.quantity(spec.quantity, int(spec.rows.max(initial=-1)) + 1, spec.unit)
        size = builder.quantities[spec.quantity].size
        row_scale = np.ones(size)
        row_scale[spec.rows] = spec.scale
        return builder.expression(spec.quantity, row_scale)[spec.rows]

    def _price_charge(self, builder: Builder, spec: MarketSpec, welfare_scale: float) -> cp.Expression:
        """Return ``-sum(price * weight * usage) / welfare_scale`` of a priced market.

        A uniform price is one scalar Parameter times constant row weights, so a
        new price re-uses the compiled problem; per-row prices are constants.
        """
        usage_rows = self._usage_rows(builder, spec)
        weight = spec.weight * spec.scale / welfare_scale
        uniform = bool(np.all(spec.price == spec.price[0]))
        level = float(spec.price[0]) if uniform else 1.0
        relative = np.ones_like(spec.price) if uniform else spec.price
        price = builder.parameter(f"market.{spec.name}.price", level)
        charge = builder.constant(f"market.{spec.name}.weight", relative * weight)
        return -(price[0] * (charge @ usage_rows))

    def _market_constraint(self, builder: Builder, spec: MarketSpec, offset) -> cp.Constraint:
        usage_rows = self._usage_rows(builder, spec)
        spec.offset = np.broadcast_to(np.asarray(offset, float), spec.rows.shape).copy()
        rhs = (spec.rhs + spec.offset) / spec.scale
        if len(spec.rows) <= MAX_PARAMETER_ROWS:
            rhs_value = builder.parameter(f"market.{spec.name}.rhs", rhs)
        else:
            rhs_value = builder.constant(f"market.{spec.name}.rhs", rhs)
        if spec.mode == "equality":
            return usage_rows == rhs_value
        return usage_rows <= rhs_value

    # -- re-parameterisation ---------------------------------------------

    def update(
        self,
        instance: Instance | None = None,
        prices: Mapping[str, np.ndarray | float] | None = None,
        offsets: Mapping[str, np.ndarray | float] | None = None,
    ) -> bool:
        """Load new data, prices or offsets into the compiled problem.

        Returns ``True`` when the compiled problem was reused, because only
        Parameters changed (budgets, GPU counts, SLAs of up to
        ``MAX_PARAMETER_ROWS`` tasks, uniform prices). Returns ``False`` when
        any other number or the structure changed and the problem was rebuilt.
        """
        instance = instance or self.instance
        if self._instance_layers and list(instance.layers) != list(self.instance.layers):
            logger.info("the instance enables other layers; rebuilding the problem")
            self.layers = _layers_for(instance)
            self._build(instance, prices or {}, offsets or {}, reuse=None)
            return False
        try:
            self._build(instance, prices or {}, offsets or {}, reuse=self.builder)
            return True
        except StructureChanged as change:
            logger.info("structure changed (%s); rebuilding the problem", change)
            self._build(instance, prices or {}, offsets or {}, reuse=None)
            return False

    # -- reading ----------------------------------------------------------

    def layer(self, name: str) -> Layer | None:
        """Return the layer called ``name``, or ``None`` when the economy has none."""
        return next((layer for layer in self.layers if layer.name == name), None)

    def market(self, name: str) -> MarketSpec:
        for spec in self.markets:
            if spec.name == name:
                return spec
        raise KeyError(f"no market named {name!r}; markets: {[m.name for m in self.markets]}")

    @property
    def graph(self) -> nx.DiGraph:
        """Layer-market graph: an edge ``layer -> market`` where the layer uses the market.

        Node attribute ``type`` is ``layer`` or ``market``, and market nodes
        carry ``kind``, ``mode`` and ``unit``. Edges carry ``role``, which is
        ``demand`` when any of the layer's contributions raises usage and
        ``supply`` when all of them lower it.
        """
        graph = nx.DiGraph()
        for layer in self.layers:
            graph.add_node(layer.name, type="layer")
        for spec in self.markets:
            graph.add_node(spec.name, type="market", kind=spec.kind, mode=spec.mode, unit=spec.unit)
            quantity = self.builder.quantities.get(spec.quantity)
            if quantity is None:
                continue
            for part in quantity.contributions:
                demands = bool(np.any(part.coefficient > 0))
                if graph.has_edge(part.layer, spec.name):
                    demands = demands or graph.edges[part.layer, spec.name]["role"] == "demand"
                graph.add_edge(part.layer, spec.name, role="demand" if demands else "supply")
        return graph

    def describe(self) -> str:
        """Return a one-line size summary for logs."""
        problem = self.problem
        return (f"{len(self.data.tasks)} tasks, {len(self.data.models)} models, "
                f"{self.data.option_count} options, {len(self.markets)} markets, "
                f"{sum(v.size for v in problem.variables())} variables")


def _layers_for(instance: Instance) -> list[Layer]:
    """Return the default layers followed by the extension layers ``instance`` enables."""
    return default_layers() + instance_layers(instance)


def _check_same_structure(new: Builder, old: Builder) -> None:
    """Raise :class:`StructureChanged` unless ``new`` declares exactly what ``old`` did."""
    if set(new.variables) != set(old.variables):
        raise StructureChanged("variables " + str(sorted(set(new.variables) ^ set(old.variables))))
    if set(new.constants) != set(old.constants):
        raise StructureChanged("constants " + str(sorted(set(new.constants) ^ set(old.constants))))
    if set(new.parameters) != set(old.parameters):
        raise StructureChanged("parameters " + str(sorted(set(new.parameters) ^ set(old.parameters))))
    if new.constraint_names != old.constraint_names:
        raise StructureChanged("layer constraints")
