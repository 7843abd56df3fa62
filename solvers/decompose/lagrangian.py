"""The Lagrangian of an economy: linking rows, their prices and each variable's coefficient.

Every market that is a constraint (budget, balance or equality) except routing
becomes a *linking row* that the decomposition prices. Routing stays inside
the request block, because each request's shares sum to one on their own.
The cache-hit rows of the capital layer (``served @ cached + miss <= 1``)
are linked too, so the per-request cache choice and the cache size sit in
different blocks.

All internal arithmetic is scaled as the joint program is: welfare in units
of ``welfare_scale`` USD per period, row ``i`` of usage in units of
``scale[i]``. A scaled price ``p[i]`` is therefore the joint program's dual
of the same row, and its report in USD per unit is
``p[i] * welfare_scale / scale[i] * report_factor[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ...model.economy import Economy
from ...model.layers.base import WELFARE
from ...model.markets import MarketSpec

CACHE_KIND = "cache"


@dataclass
class LinkingRow:
    """One market row priced by the coordinator."""

    market: str
    kind: str
    label: str
    equality: bool
    rhs: float
    scale: float
    report_factor: float
    price_unit: str
    rhs_path: str | None
    mode: str = "budget"


@dataclass
class Lagrangian:
    """Linear structure of an economy seen from its linking rows.

    Attributes
    ----------
    rows:
        Linking rows in a fixed order; prices are vectors over these rows.
    matrices:
        ``{variable: A}`` with ``A`` of shape ``(rows, variable.size)``: the
        scaled usage of every linking row per unit of the variable.
    welfare:
        ``{variable: w}``: scaled welfare per unit of the variable, with the
        charges of priced markets included.
    """

    economy: Economy
    rows: list[LinkingRow]
    matrices: dict[str, sp.csr_matrix]
    welfare: dict[str, np.ndarray]
    rhs: np.ndarray = field(init=False)
    equality: np.ndarray = field(init=False)
    scale: np.ndarray = field(init=False)

    def __post_init__(self):
        self.rhs = np.array([row.rhs / row.scale for row in self.rows])
        self.equality = np.array([row.equality for row in self.rows], dtype=bool)
        self.scale = np.array([row.scale for row in self.rows])

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def welfare_scale(self) -> float:
        return self.economy.welfare_scale

    def coefficients(self, prices: np.ndarray, variables=None) -> dict[str, np.ndarray]:
        """Return the scaled Lagrangian coefficient ``w - A.T @ prices`` of each variable."""
        names = self.welfare if variables is None else variables
        return {name: self.welfare[name] - self.matrices[name].T @ prices for name in names}

    def usage(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Return the scaled usage of every linking row at the given variable values."""
        total = np.zeros(self.size)
        for name, value in values.items():
            matrix = self.matrices.get(name)
            if matrix is not None and value is not None:
                total += matrix @ value
        return total

    def objective(self, values: dict[str, np.ndarray]) -> float:
        """Return the scaled welfare (objective) at the given variable values."""
        return float(sum(self.welfare[name] @ value for name, value in values.items()
                         if name in self.welfare and value is not None))

    def project(self, prices: np.ndarray) -> np.ndarray:
        """Project prices on their domain: non-negative except on equality rows."""
        return np.where(self.equality, prices, np.maximum(prices, 0.0))

    def report(self, prices: np.ndarray) -> np.ndarray:
        """Convert scaled prices into USD per unit of each row's right-hand side."""
        factor = np.array([row.report_factor for row in self.rows])
        return prices * self.welfare_scale / self.scale * factor


def build_lagrangian(economy: Economy) -> Lagrangian:
    """Collect the linking rows, usage matrices and welfare coefficients of ``economy``."""
    builder = economy.builder
    rows: list[LinkingRow] = []
    blocks: dict[str, list[sp.csr_matrix]] = {name: [] for name in builder.variables}

    def add_rows(matrices: dict[str, sp.csr_matrix], count: int) -> None:
        for name in blocks:
            matrix = matrices.get(name)
            blocks[name].append(matrix if matrix is not None else
                                sp.csr_matrix((count, builder.variables[name].size)))

    welfare = {name: np.zeros(var.size) for name, var in builder.variables.items()}
    for quantity in builder.quantities.values():
        if quantity.name.startswith(WELFARE):
            for part in quantity.contributions:
                welfare[part.variable] += np.asarray(part.aggregate.sum(axis=0)).ravel() * part.coefficient

    for spec in economy.markets:
        if spec.kind == "routing" or spec.quantity not in builder.quantities:
            continue
        matrices = _market_matrices(economy, spec)
        if spec.mode == "price":
            for name, matrix in matrices.items():
                welfare[name] -= matrix.T @ (spec.price * spec.weight)
            continue
        offset = spec.offset if len(spec.offset) else np.zeros(len(spec.rows))
        scaled = {name: sp.csr_matrix(sp.diags(1.0 / spec.scale) @ matrix)
                  for name, matrix in matrices.items()}
        add_rows(scaled, len(spec.rows))
        for i, label in enumerate(spec.labels):
            rows.append(LinkingRow(
                spec.name, spec.kind, label, spec.mode == "equality",
                float(spec.rhs[i] + offset[i]), float(spec.scale[i]),
                float(spec.report_factor[i]), spec.price_unit, spec.rhs_paths[i], spec.mode))

    cache = _cache_rows(economy)
    if cache is not None:
        matrices, labels = cache
        add_rows(matrices, len(labels))
        rows += [LinkingRow(CACHE_KIND, CACHE_KIND, label, False, 1.0, 1.0, 1.0,
                            "USD per share of reusable prefix tokens", None) for label in labels]

    scale = economy.welfare_scale
    stacked = {name: sp.csr_matrix(sp.vstack(parts)) if parts else
               sp.csr_matrix((0, builder.variables[name].size))
               for name, parts in blocks.items()}
    return Lagrangian(economy, rows, stacked, {name: w / scale for name, w in welfare.items()})


def _market_matrices(economy: Economy, spec: MarketSpec) -> dict[str, sp.csr_matrix]:
    """Return ``{variable: matrix}``: the unscaled usage of the market's rows per variable entry."""
    quantity = economy.builder.quantities[spec.quantity]
    result: dict[str, sp.csr_matrix] = {}
    for part in quantity.contributions:
        matrix = sp.csr_matrix(part.aggregate @ sp.diags(part.coefficient))[spec.rows]
        result[part.variable] = matrix if part.variable not in result else result[part.variable] + matrix
    return result


def _cache_rows(economy: Economy):
    """Return the cache-hit rows ``served @ cached + miss <= 1``, or ``None`` without a cache."""
    capital = economy.layer("capital")
    index = getattr(capital, "cache_index", None)
    builder = economy.builder
    if index is None or "cached" not in builder.variables:
        return None
    _, caches, _ = index
    served = builder.constants["cache.served"]
    matrices = {"cached": sp.csr_matrix(served), "cache_miss": sp.identity(len(caches), format="csr")}
    labels = [f"{CACHE_KIND}[{economy.data.pools[p]}]" for p in caches]
    return matrices, labels
