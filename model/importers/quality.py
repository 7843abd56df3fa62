"""Import a resolved matrix: success rates of model runs by task difficulty.

The matrix is a CSV with one row per task and one column per model run:
``1`` resolved, ``0`` not resolved, blank for not attempted. A blank is left
out of every count; it is not a failure.

Difficulty groups come from the runs themselves. A task's solve share is the
number of runs that resolved it over the number that attempted it. With the
default thresholds (1/3, 2/3) a task is ``hard`` below 1/3, ``medium`` from
1/3 up to 2/3 and ``easy`` from 2/3 on. Tasks attempted by fewer than
``min_attempts`` runs get no group. The groups are formed from the same runs
whose rates are then reported. The rates therefore describe those runs and
are not an independent test of them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ._files import read_table, significant

logger = logging.getLogger(__name__)

WILSON_Z = 1.959963984540054
"""Standard normal quantile of a two-sided 95% interval."""

DEFAULT_GROUPS = ("hard", "medium", "easy")
DEFAULT_THRESHOLDS = (1.0 / 3.0, 2.0 / 3.0)
INFO_COLUMNS = ("in_leaderboard_730_set",)
"""Columns of the SWE-bench Pro matrix that describe tasks rather than runs."""


@dataclass
class ResolvedMatrix:
    """Tasks x runs outcomes: 1.0 resolved, 0.0 not resolved, NaN not attempted."""

    source: str
    tasks: list[str]
    runs: list[str]
    outcomes: np.ndarray

    @property
    def attempted(self) -> np.ndarray:
        return ~np.isnan(self.outcomes)


@dataclass
class GroupRate:
    """Success of one run on one difficulty group, with its Wilson 95% interval."""

    run: str
    group: str
    resolved: int
    attempted: int
    success_rate: float | None
    wilson_low: float
    wilson_high: float


@dataclass
class QualitySummary:
    """Difficulty groups of a resolved matrix and each run's success per group."""

    source: str
    runs: list[str]
    tasks: int
    grouped_tasks: int
    group_rule: str
    group_sizes: dict[str, int]
    rates: list[GroupRate]
    overall: list[GroupRate]

    def to_dict(self) -> dict:
        return asdict(self)

    def rate(self, run: str, group: str) -> GroupRate:
        """Return the rate of ``run`` on ``group`` (group 'all' for every grouped task)."""
        table = self.overall if group == "all" else self.rates
        for item in table:
            if item.run == run and item.group == group:
                return item
        raise KeyError((run, group))


def read_resolved_matrix(path: str | Path, id_column: str | None = None,
                         subset_column: str | None = None,
                         info_columns: tuple[str, ...] = INFO_COLUMNS) -> ResolvedMatrix:
    """Read a resolved matrix CSV.

    ``id_column`` names the task column (default: the first column). When
    ``subset_column`` is given, only rows where it is 1 are kept. Every other
    column except ``info_columns`` is a run.
    """
    table = read_table(path)
    source = table.source
    id_column = id_column or table.header[0]
    required = [id_column] + ([subset_column] if subset_column else [])
    table.require(required)
    if not len(table):
        raise DataError(source, "(rows)", 0, "contains no tasks", "give a matrix with at least one task row")
    skip = {id_column, subset_column, *info_columns}
    runs = [name for name in table.header if name not in skip]
    if not runs:
        raise DataError(source, "(header)", ",".join(table.header), "has no model-run column",
                        "add one column per model run with 1, 0 or blank per task")
    keep = np.ones(len(table), dtype=bool)
    if subset_column:
        flags = table.numbers(subset_column)
        keep = flags == 1
        logger.info("%s: %d of %d tasks kept by %s", source, int(keep.sum()), len(table), subset_column)

    outcomes = np.empty((len(table), len(runs)))
    for position, run in enumerate(runs):
        cells = table.column(run)
        valid = (cells == "1") | (cells == "0") | (cells == "")
        if not valid.all():
            index = int(np.flatnonzero(~valid)[0])
            raise DataError(source, f"{table.line(index)}, column {run}", str(cells[index]),
                            "is not 1, 0 or blank", "write 1 for resolved, 0 for not resolved and "
                            "leave the cell blank when the run did not attempt the task")
        outcomes[:, position] = np.where(cells == "", np.nan, cells == "1")
    ids = table.column(id_column)
    return ResolvedMatrix(source, [str(task) for task in ids[keep]], runs, outcomes[keep])


def difficulty_groups(matrix: ResolvedMatrix, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
                      names: tuple[str, ...] = DEFAULT_GROUPS, min_attempts: int = 3) -> np.ndarray:
    """Return each task's group name ('' for a task with too few attempts).

    The group index is the number of thresholds at or below the task's solve
    share, so ``names`` runs from hardest to easiest.
    """
    if len(names) != len(thresholds) + 1:
        raise DataError(matrix.source, "groups", list(names),
                        f"must have one name more than the {len(thresholds)} thresholds",
                        "give as many group names as thresholds plus one")
    if list(thresholds) != sorted(thresholds) or any(not 0 < t <= 1 for t in thresholds):
        raise DataError(matrix.source, "thresholds", list(thresholds),
                        "must be increasing shares in (0, 1]", "give e.g. [0.3333, 0.6667]")
    attempted = matrix.attempted.sum(axis=1)
    solved = np.nansum(matrix.outcomes, axis=1)
    share = np.divide(solved, attempted, out=np.zeros(len(attempted)), where=attempted > 0)
    index = np.searchsorted(np.asarray(thresholds), share, side="right")
    labels = np.asarray(names, dtype=object)[index]
    return np.where(attempted >= max(min_attempts, 1), labels, "")


def wilson_interval(resolved: int, attempted: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial share ((0, 1) when nothing was attempted)."""
    if attempted == 0:
        return 0.0, 1.0
    share = resolved / attempted
    denominator = 1.0 + z * z / attempted
    centre = (share + z * z / (2 * attempted)) / denominator
    half = z / denominator * np.sqrt(share * (1 - share) / attempted + z * z / (4 * attempted ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def success_rates(matrix: ResolvedMatrix, groups: np.ndarray, group_names: tuple[str, ...],
                  label: str | None = None) -> list[GroupRate]:
    """Return every run's success rate on each group (or on all grouped tasks as ``label``)."""
    rates = []
    resolved_cells = np.nan_to_num(matrix.outcomes, nan=0.0)
    for group in group_names:
        members = groups != "" if label else groups == group
        name = label or group
        attempted = matrix.attempted[members].sum(axis=0)
        resolved = resolved_cells[members].sum(axis=0)
        for position, run in enumerate(matrix.runs):
            count, wins = int(attempted[position]), int(resolved[position])
            low, high = wilson_interval(wins, count)
            rates.append(GroupRate(run, name, wins, count,
                                   significant(wins / count) if count else None,
                                   significant(low), significant(high)))
        if label:
            break
    return rates


def import_quality(path: str | Path, subset_column: str | None = None,
                   thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
                   names: tuple[str, ...] = DEFAULT_GROUPS, min_attempts: int = 3,
                   id_column: str | None = None) -> QualitySummary:
    """Read a resolved matrix, form difficulty groups and return each run's rates."""
    matrix = read_resolved_matrix(path, id_column, subset_column)
    groups = difficulty_groups(matrix, thresholds, names, min_attempts)
    sizes = {name: int((groups == name).sum()) for name in names}
    bounds = [0.0, *thresholds, None]
    described = []
    for position, name in enumerate(names):
        upper = bounds[position + 1]
        limit = f"< {upper:.4g}" if upper is not None else "<= 1"
        described.append(f"{name}: {bounds[position]:.4g} <= solve share {limit}")
    rule = ("solve share = resolving runs / attempting runs; " + "; ".join(described)
            + f"; tasks attempted by fewer than {min_attempts} runs are left out")
    return QualitySummary(
        source=matrix.source, runs=matrix.runs, tasks=len(matrix.tasks),
        grouped_tasks=int((groups != "").sum()), group_rule=rule, group_sizes=sizes,
        rates=success_rates(matrix, groups, names),
        overall=success_rates(matrix, groups, names, label="all"),
    )
