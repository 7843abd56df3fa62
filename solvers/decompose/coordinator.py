"""Price coordination and ADMM over the blocks of an economy.

Each iteration evaluates the dual function at the current prices: every block
maximizes its welfare minus the prices times its use of the linking rows, and

    D(p) = p @ r + sum_b max_x [W_b(x) - p @ U_b(x)]

is an upper bound on the optimal welfare for any feasible prices (weak
duality). Every block response is also a column of the restricted master
(:mod:`.master`), whose value is a feasible lower bound. The run stops when
the relative gap between the best upper and lower bounds reaches the target.

Methods
-------
``subgradient``
    Projected subgradient steps ``p <- [p + step * (U - r)]+``: prices rise
    with excess demand (tatonnement), with Polyak's step towards the best
    lower bound.
``bundle``
    Trust-region cutting planes (a bundle method): the next prices minimize
    the cutting-plane model of ``D`` in a box around the best prices, and the
    box grows after a step that lowers ``D`` and shrinks after one that does
    not.
``admm``
    ADMM in exchange form: each block maximizes its welfare minus a quadratic
    penalty pulling its usage towards its share of the right-hand side, and
    the scaled dual ``u`` accumulates the excess demand, so ``rho * u`` are
    the prices. Every block is a CVXPY problem in this method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ...model.economy import Economy
from ...model.errors import SolveError
from ..result import Price
from .blocks import BlockSolution, CvxpyBlock, partition
from .lagrangian import Lagrangian, build_lagrangian
from .master import ColumnPool, MasterSolution, minimize_model, solve_master
from .requests import (
    REQUEST_VARIABLES,
    RequestBlock,
    RequestSet,
    UnsupportedStructure,
    option_coefficients,
    request_structure,
)

logger = logging.getLogger(__name__)


INITIAL_RADIUS = 0.02
"""First half-width of the bundle method's box, in scaled prices (welfare scale per row scale).

Scaled prices at the optimum of the shipped and generated instances lie
between 0 and about 0.2. Starting small takes fewer iterations there than a
box of 1 (for example 32 against 52 on coding_agent.yaml), and the box
doubles after every step that lowers the dual bound."""


class Method(StrEnum):
    SUBGRADIENT = "subgradient"
    BUNDLE = "bundle"
    ADMM = "admm"


class Termination(StrEnum):
    """Reason a decomposition run stopped."""

    GAP = "gap"
    """The relative gap between the bounds reached the target."""
    ITERATION_LIMIT = "iteration_limit"
    TIME_LIMIT = "time_limit"
    STALLED = "stalled"
    """Neither bound improved over the last ``stall_iterations`` iterations."""
    INTERRUPTED = "interrupted"
    """Stopped by Ctrl-C (KeyboardInterrupt); the best bounds so far are returned."""


@dataclass
class Iteration:
    """One iteration of a run, in USD per period and the markets' units."""

    iteration: int
    seconds: float
    dual_bound: float
    primal_bound: float | None
    gap: float | None
    prices: dict[str, float]
    excess: dict[str, float]
    distance: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"iteration": self.iteration, "seconds": self.seconds, "dual_bound": self.dual_bound,
                "primal_bound": self.primal_bound, "gap": self.gap, "prices": self.prices,
                "excess": self.excess, "distance": self.distance}


@dataclass
class DecompositionResult:
    """Outcome of a decomposition run.

    ``dual_bound`` and ``primal_bound`` are in USD per period: the optimal
    welfare lies between them. ``allocation`` contains the variable values of the
    feasible combination that attains ``primal_bound`` (class-level values for
    per-request runs). ``prices`` are certified only when ``termination`` is
    ``gap``; otherwise each has ``price=None`` and a reason, and the prices of
    every iteration remain in ``iterations``.
    """

    method: str
    termination: Termination
    dual_bound: float
    primal_bound: float | None
    gap: float | None
    target_gap: float
    iterations: list[Iteration]
    prices: list[Price]
    allocation: dict[str, np.ndarray]
    seconds: float
    message: str = ""
    best_prices: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Scaled prices of the best dual point (the coordinator's internal units)."""
    final_prices: dict[str, float] = field(default_factory=dict)
    """Prices of the best dual point in USD per unit, by row label, whether certified or not."""

    @property
    def certified(self) -> bool:
        return self.termination is Termination.GAP

    def as_dict(self) -> dict:
        return {
            "method": self.method, "termination": str(self.termination),
            "dual_bound": self.dual_bound, "primal_bound": self.primal_bound, "gap": self.gap,
            "target_gap": self.target_gap, "certified": self.certified, "seconds": self.seconds,
            "message": self.message,
            "prices": [price.as_dict() for price in self.prices],
            # The best dual point's prices, certified or not: the end of the trajectory.
            "final_prices": self.final_prices,
            "iterations": [item.as_dict() for item in self.iterations],
        }


class KernelRequestBlock:
    """The request block, solved by the vectorized best response chunk by chunk.

    ``engine`` runs the chunks (see :mod:`.engines`); ``None`` runs them in
    this process.
    """

    name = "requests"

    def __init__(self, economy: Economy, lagrangian: Lagrangian, requests: RequestSet | None,
                 chunk_size: int = 200_000, engine=None):
        self.structure = request_structure(economy)
        self.lagrangian = lagrangian
        self.requests = requests or RequestSet.classes(self.structure.task_count)
        self.names = [name for name in REQUEST_VARIABLES if name in self.structure.sizes]
        bounds = list(range(0, len(self.requests), chunk_size)) + [len(self.requests)]
        self.chunks = [self.requests.slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        self.engine = engine
        if engine is None:
            self.workers = [RequestBlock(self.structure, chunk) for chunk in self.chunks]
        else:
            engine.start(make_request_worker, [(self.structure, chunk) for chunk in self.chunks])
        self.surplus: np.ndarray | None = None

    def respond(self, prices: np.ndarray) -> BlockSolution:
        coefficients = option_coefficients(self.structure, self.lagrangian, prices)
        if self.engine is None:
            responses = [worker.respond(coefficients) for worker in self.workers]
        else:
            responses = self.engine.call("respond", coefficients)
        value = float(sum(response.value for response in responses))
        values = {name: sum(response.aggregates[name] for response in responses) for name in self.names}
        self.surplus = np.concatenate([response.surplus for response in responses])
        usage = self.lagrangian.usage(values)
        return BlockSolution(value, value + float(prices @ usage), usage, values)

    def request_rows(self, prices: np.ndarray) -> dict[str, list | np.ndarray]:
        """Return every request's best response at ``prices``, in instance units per request.

        Columns: request, task, model (``defer`` for a human), surplus (USD per
        request, net of every price) and tokens per routed request by use.
        """
        coefficients = option_coefficients(self.structure, self.lagrangian, prices)
        if self.engine is None:
            parts = [worker.rows(coefficients) for worker in self.workers]
        else:
            parts = self.engine.call("rows", coefficients)
        option = np.concatenate([part["option"] for part in parts])
        data = self.lagrangian.economy.data
        task = self.requests.task
        scale = np.where(option[:, None] >= 0, data.scale[np.maximum(option, 0)], 0.0)
        tokens = np.concatenate([part["tokens"] for part in parts]) * scale
        models = np.array(data.models + ["defer"], dtype=object)
        columns: dict[str, list | np.ndarray] = {
            "request": np.arange(len(task)),
            "task": np.array(data.tasks, dtype=object)[task],
            "model": models[np.where(option >= 0, data.option_model[np.maximum(option, 0)], -1)],
            "surplus": np.concatenate([part["surplus"] for part in parts])
            * self.lagrangian.welfare_scale / data.volume[task],
        }
        for a, use in enumerate(data.uses):
            columns[f"tokens:{use}"] = tokens[:, a]
        if data.reviews:
            columns["review_exponent"] = np.concatenate([part["review"] for part in parts])
        return columns

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def make_request_worker(spec) -> RequestBlock:
    """Build a resident request-block worker from ``(structure, requests)``."""
    structure, requests = spec
    return RequestBlock(structure, requests)


class Decomposition:
    """An economy split into blocks coordinated by prices on its linking rows.

    Parameters
    ----------
    economy:
        The economy (its CVXPY program is never solved whole).
    requests:
        Per-request rows; ``None`` treats each task class as one request.
    blocks:
        ``"auto"`` solves the router and agent with the vectorized best
        response when the economy has the default layers. ``"cvxpy"`` solves
        every block as a CVXPY problem.
    engine:
        Engine for the request chunks, ``None`` for this process.
    """

    def __init__(self, economy: Economy, requests: RequestSet | None = None, blocks: str = "auto",
                 engine=None, chunk_size: int = 200_000):
        if blocks not in ("auto", "cvxpy"):
            raise ValueError(f"blocks must be 'auto' or 'cvxpy', got {blocks!r}")
        self.economy = economy
        self.lagrangian = build_lagrangian(economy)
        components = partition(economy)
        self.kernel: KernelRequestBlock | None = None
        self.blocks: list = []
        first = 0
        if blocks == "auto":
            try:
                self.kernel = KernelRequestBlock(economy, self.lagrangian, requests, chunk_size, engine)
            except UnsupportedStructure as reason:
                logger.info("solving the request block with CVXPY: %s", reason)
            else:
                self.blocks.append(self.kernel)
                first = 1
        if self.kernel is None and requests is not None:
            raise SolveError("per-request rows need the vectorized request block, which does not "
                             "cover this economy; drop the requests or the extra layers")
        for i, names in enumerate(components[first:], start=first):
            label = "requests" if "route" in names else f"block{i}"
            self.blocks.append(CvxpyBlock(label, economy, self.lagrangian, names))
        self.layer_of = {name: layer.name for layer in economy.layers
                         for name in getattr(layer, "decisions", ())}

    # -- the dual function -------------------------------------------------

    def dual(self, prices: np.ndarray) -> tuple[float, list[BlockSolution]]:
        """Return the dual function's scaled value at ``prices`` and every block's response."""
        responses = [block.respond(prices) for block in self.blocks]
        value = float(prices @ self.lagrangian.rhs) + sum(r.value for r in responses)
        return value, responses

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()

    # -- runs ------------------------------------------------------------

    def solve(self, method: str | Method = Method.BUNDLE, gap: float = 1e-4,
              max_iterations: int = 500, time_limit: float | None = None,
              stall_iterations: int = 60, callback: Callable[[Iteration], None] | None = None,
              master_every: int = 1) -> DecompositionResult:
        """Run a decomposition method from list prices (all linking prices zero).

        ``callback`` receives every :class:`Iteration` (a progress bar, say).
        Ctrl-C stops the run and returns the best bounds so far.
        """
        method = Method(method)
        run = _Run(self, method, gap, max_iterations, time_limit, stall_iterations, callback,
                   master_every)
        try:
            run.execute()
        except KeyboardInterrupt:
            run.termination = Termination.INTERRUPTED
            logger.warning("interrupted after %d iterations; returning the best bounds so far",
                           len(run.trace))
        return run.result()


class _Run:
    """State of one decomposition run."""

    def __init__(self, owner: Decomposition, method, gap, max_iterations, time_limit,
                 stall_iterations, callback, master_every):
        self.owner, self.method = owner, method
        self.lagrangian = owner.lagrangian
        self.target, self.max_iterations, self.time_limit = gap, max_iterations, time_limit
        self.stall_iterations, self.callback, self.master_every = stall_iterations, callback, master_every
        self.pool = ColumnPool(len(owner.blocks))
        self.trace: list[Iteration] = []
        self.responses_by_iteration: list[dict[str, np.ndarray]] = []
        self.best_dual, self.best_prices = np.inf, np.zeros(self.lagrangian.size)
        self.best_master: MasterSolution | None = None
        self.termination = Termination.ITERATION_LIMIT
        self.started = time.perf_counter()
        self.last_improvement = 0

    # -- bookkeeping -----------------------------------------------------

    @property
    def lower(self) -> float | None:
        return None if self.best_master is None else self.best_master.welfare

    def gap(self) -> float | None:
        if self.lower is None or not np.isfinite(self.best_dual):
            return None
        return (self.best_dual - self.lower) / max(abs(self.best_dual), abs(self.lower), 1e-12)

    def record(self, prices: np.ndarray, value: float, responses: list[BlockSolution],
               extra_columns: list[BlockSolution] | None = None) -> None:
        """Add the responses as columns, update both bounds and append an iteration."""
        iteration = len(self.trace)
        improved = False
        if value < self.best_dual - 1e-12 * max(1.0, abs(value)):
            self.best_dual, self.best_prices = value, prices.copy()
            improved = True
        for b, response in enumerate(responses):
            self.pool.add(b, response.welfare, response.usage, response.values)
        for b, response in enumerate(extra_columns or []):
            self.pool.add(b, response.welfare, response.usage, response.values)
        if iteration % self.master_every == 0:
            master = solve_master(self.pool, self.lagrangian)
            if master is not None and (self.best_master is None or
                                       master.welfare > self.best_master.welfare + 1e-12):
                self.best_master = master
                improved = True
        if improved:
            self.last_improvement = iteration
        usage = sum(r.usage for r in responses)
        lagrangian = self.lagrangian
        scale = lagrangian.welfare_scale
        reported = lagrangian.report(prices)
        excess = (usage - lagrangian.rhs) * lagrangian.scale
        item = Iteration(
            iteration, time.perf_counter() - self.started, self.best_dual * scale,
            None if self.lower is None else self.lower * scale, self.gap(),
            {row.label: float(reported[i]) for i, row in enumerate(lagrangian.rows)},
            {row.label: float(excess[i]) for i, row in enumerate(lagrangian.rows)},
        )
        self.trace.append(item)
        merged: dict[str, np.ndarray] = {}
        for response in responses:
            merged.update(response.values)
        self.responses_by_iteration.append(merged)
        if self.callback is not None:
            self.callback(item)

    def should_stop(self) -> bool:
        gap = self.gap()
        if gap is not None and gap <= self.target:
            self.termination = Termination.GAP
            return True
        if len(self.trace) >= self.max_iterations:
            self.termination = Termination.ITERATION_LIMIT
            return True
        if self.time_limit is not None and time.perf_counter() - self.started >= self.time_limit:
            self.termination = Termination.TIME_LIMIT
            return True
        if len(self.trace) - self.last_improvement > self.stall_iterations:
            self.termination = Termination.STALLED
            return True
        return False

    # -- methods ---------------------------------------------------------

    def execute(self) -> None:
        {Method.SUBGRADIENT: self._subgradient, Method.BUNDLE: self._bundle,
         Method.ADMM: self._admm}[self.method]()

    def _subgradient(self) -> None:
        lagrangian = self.lagrangian
        prices = np.zeros(lagrangian.size)
        # Polyak's step towards a target level below the best upper bound. The level gap
        # grows after a step that improves the bound by half of it, halves after ten
        # iterations without progress, and never reaches below the best lower bound.
        level_gap, last_reduction, squares = None, 0, None
        while True:
            previous_best = self.best_dual
            value, responses = self.owner.dual(prices)
            self.record(prices, value, responses)
            if self.should_stop():
                return
            usage = sum(r.usage for r in responses)
            direction = usage - lagrangian.rhs
            if level_gap is None:
                level_gap = 0.05 * max(abs(value), 1e-6)
            elif previous_best - self.best_dual >= 0.5 * level_gap:
                level_gap *= 1.5
            elif len(self.trace) - max(self.last_improvement, last_reduction) > 10:
                level_gap *= 0.5
                last_reduction = len(self.trace)
            target = self.best_dual - level_gap
            if self.lower is not None:
                target = max(target, self.lower)
            # A diagonal metric (the root mean square of past excess demand per row) keeps
            # rows whose excess swings widely, such as the serving loads, from setting the
            # step of every other row.
            squares = direction ** 2 if squares is None else 0.9 * squares + 0.1 * direction ** 2
            metric = 1.0 / np.sqrt(squares + 1e-12 * max(float(squares.max()), 1e-30))
            norm = float(direction @ (metric * direction))
            if norm <= 1e-30:
                self.termination = Termination.GAP if self.gap() is not None else Termination.STALLED
                return
            step = max(value - target, 1e-12 * max(1.0, abs(value))) / norm
            prices = lagrangian.project(prices + step * metric * direction)

    def _bundle(self) -> None:
        lagrangian = self.lagrangian
        center = np.zeros(lagrangian.size)
        center_value, responses = self.owner.dual(center)
        self.record(center, center_value, responses)
        radius = INITIAL_RADIUS
        while not self.should_stop():
            candidate, predicted = minimize_model(self.pool, lagrangian, center, radius)
            value, responses = self.owner.dual(candidate)
            self.record(candidate, value, responses)
            decrease = center_value - predicted
            if decrease <= 1e-14 * max(1.0, abs(center_value)):
                # The model is exact at the centre and minimal there, so by convexity the
                # centre minimizes D up to the model's precision: only the lower bound can
                # still move, and the stall test ends the run if it does not.
                continue
            if center_value - value >= 0.1 * decrease:
                center, center_value = candidate, value
                # Scaled prices above a few units would value a row's whole right-hand
                # side above all the welfare, so the box stays within that range.
                radius = min(radius * 2.0, 10.0 * max(1.0, float(np.max(np.abs(center)))))
            else:
                radius = max(radius * 0.5, 1e-9)

    def _admm(self) -> None:
        owner, lagrangian = self.owner, self.lagrangian
        economy = owner.economy
        if owner.kernel is not None and len(owner.kernel.requests) != owner.kernel.structure.task_count:
            raise SolveError("ADMM solves task classes only, because its request block is one CVXPY "
                             "problem; use --method bundle or subgradient with per-request rows")

        # Both lists start with the request block, so a penalized solution is a column
        # of the block at the same position.
        penalized = []
        for names in partition(economy):
            label = "requests" if "route" in names else "block"
            penalized.append(CvxpyBlock(label, economy, lagrangian, names, penalty=True))
        if len(penalized) != len(owner.blocks):
            raise SolveError("the ADMM blocks do not match the decomposition's blocks")

        count = len(penalized) + 1  # the slack of the inequality rows is one more agent
        rho = 1.0
        scaled_dual = np.zeros(lagrangian.size)
        usage = [np.zeros(lagrangian.size) for _ in penalized]
        slack = np.zeros(lagrangian.size)
        share = lagrangian.rhs / count

        while True:
            prices = lagrangian.project(rho * scaled_dual)
            value, responses = self.owner.dual(prices)
            average = (sum(usage) + slack) / count
            targets = [u - average + share - scaled_dual for u in usage]
            solutions = [block.respond(np.zeros(lagrangian.size), rho=rho, target=target)
                         for block, target in zip(penalized, targets, strict=True)]
            self.record(prices, value, responses, solutions)
            if self.should_stop():
                return

            slack_target = slack - average + share - scaled_dual
            new_slack = np.where(lagrangian.equality, 0.0, np.maximum(slack_target, 0.0))
            new_usage = [s.usage for s in solutions]
            new_average = (sum(new_usage) + new_slack) / count
            scaled_dual = scaled_dual + new_average - share

            changes = [new - old for new, old in zip(new_usage, usage, strict=True)]
            primal = np.linalg.norm(count * new_average - lagrangian.rhs)
            dual = rho * np.linalg.norm(np.concatenate(changes + [new_slack - slack]))
            usage, slack = new_usage, new_slack
            logger.debug("ADMM rho %.3g primal %.3g dual %.3g", rho, primal, dual)
            # Residual balancing keeps the primal and dual residuals of the same order.
            if primal > 10.0 * dual:
                rho, scaled_dual = rho * 2.0, scaled_dual / 2.0
            elif dual > 10.0 * primal:
                rho, scaled_dual = rho / 2.0, scaled_dual * 2.0

    # -- result ----------------------------------------------------------

    def result(self) -> DecompositionResult:
        lagrangian = self.lagrangian
        scale = lagrangian.welfare_scale
        allocation = {} if self.best_master is None else self.best_master.values
        self._distances(allocation)
        gap = self.gap()
        certified = self.termination is Termination.GAP
        reason = None if certified else (
            f"the run stopped ({self.termination}) with gap "
            f"{'unknown' if gap is None else f'{gap:.2e}'} above the target {self.target:.0e}")
        prices = self._prices(certified, reason)
        message = "" if certified else reason
        if self.lower is None:
            message += ("; no combination of the blocks' responses met every linking row yet: "
                        "raise --max-iterations or --time-limit. If the dual bound keeps falling "
                        "instead, the instance is infeasible, and `tokenomy solve` names the "
                        "budget or capacity that cannot be met")
        return DecompositionResult(
            str(self.method), self.termination, self.best_dual * scale,
            None if self.lower is None else self.lower * scale, gap, self.target, self.trace,
            prices, allocation, time.perf_counter() - self.started, message, self.best_prices.copy(),
            dict(zip([row.label for row in lagrangian.rows],
                     map(float, lagrangian.report(self.best_prices)), strict=True)))

    def _distances(self, final: dict[str, np.ndarray]) -> None:
        """Fill each iteration's distance of every layer's decisions from the final allocation."""
        if not final:
            return
        layers: dict[str, list[str]] = {}
        for name, layer in self.owner.layer_of.items():
            if name in final:
                layers.setdefault(layer, []).append(name)
        for item, values in zip(self.trace, self.responses_by_iteration, strict=True):
            for layer, names in layers.items():
                target = np.concatenate([final[n] for n in names])
                current = np.concatenate([values.get(n, np.zeros_like(final[n])) for n in names])
                item.distance[layer] = float(np.linalg.norm(current - target) /
                                             max(np.linalg.norm(target), 1e-12))

    def _prices(self, certified: bool, reason: str | None) -> list[Price]:
        lagrangian = self.lagrangian
        prices = self.best_prices
        reported = lagrangian.report(prices)
        usage = self.best_master.usage if self.best_master is not None else None
        result = []
        for i, row in enumerate(lagrangian.rows):
            slack = None if usage is None else float((lagrangian.rhs[i] - usage[i]) * row.scale)
            # The allocation meets the gap, not exact complementary slackness, so a row
            # binds when its certified price is positive or when it has no slack.
            binding = None if slack is None else bool(
                row.equality or (certified and reported[i] > 0)
                or abs(slack) <= 1e-6 * max(1.0, row.scale))
            result.append(Price(
                row.market, row.label, row.kind, row.mode,
                float(reported[i]) if certified else None, row.price_unit, binding, slack,
                None if usage is None else float(usage[i] * row.scale),
                row.rhs if row.rhs_path else None, row.rhs_path, reason))
        result += self._routing_prices(certified, reason)
        return result

    def _routing_prices(self, certified: bool, reason: str | None) -> list[Price]:
        """Return each class's routing price: its best surplus per request at the best prices."""
        kernel = self.owner.kernel
        economy = self.owner.economy
        if kernel is None or len(kernel.requests) != kernel.structure.task_count:
            return []
        kernel.respond(self.best_prices)
        data = economy.data
        values = kernel.surplus * self.lagrangian.welfare_scale / data.volume
        spec = economy.market("routing")
        return [Price(spec.name, spec.labels[x], spec.kind, spec.mode,
                      float(values[x]) if certified else None, spec.price_unit, True, 0.0,
                      float(data.volume[x]), float(data.volume[x]), spec.rhs_paths[x], reason)
                for x in range(len(data.tasks))]
