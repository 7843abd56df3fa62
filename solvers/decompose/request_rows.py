"""Per-request rows: read them from a CSV file, generate them, and attach them to an instance.

A request file is a CSV file with a header and one row per request (or per
group of identical requests):

``task`` (required)
    Name of the request's task class in the instance.
``count``
    Requests the row stands for, per period (default 1).
``value``
    USD per resolved request (default: the class's value).
``difficulty``
    Divides the rate of the class's quality curves, so a request of
    difficulty 2 needs twice the effort for the same success (default 1).

A class's volume becomes the sum of its rows' counts. Classes without rows
keep their volume and stand for one request each.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ...model.errors import FieldProblem, InstanceError
from ...model.schema import Instance
from .requests import RequestSet

logger = logging.getLogger(__name__)

COLUMNS = ("task", "count", "value", "difficulty")


def read_request_file(path: str | Path, instance: Instance) -> tuple[Instance, RequestSet]:
    """Read per-request rows and return the instance with class volumes updated, and the rows."""
    path = Path(path)
    tasks = list(instance.tasks)
    position = {name: x for x, name in enumerate(tasks)}
    columns, rows = _read_table(path)

    task = np.empty(len(rows), dtype=int)
    numbers = {name: np.ones(len(rows)) for name in ("count", "difficulty")}
    numbers["value"] = np.full(len(rows), np.nan)
    for line, row in enumerate(rows, start=2):
        name = row[columns["task"]] if len(row) > columns["task"] else ""
        if name not in position:
            raise _invalid(path, FieldProblem(f"line {line}.task", name, "is not a task of the instance",
                                              f"use one of {', '.join(tasks[:8])}"))
        task[line - 2] = position[name]
        for column, values in numbers.items():
            if column in columns and len(row) > columns[column] and row[columns[column]] != "":
                values[line - 2] = _number(path, line, column, row[columns[column]])
    return attach_requests(instance, task, numbers["count"], numbers["value"], numbers["difficulty"],
                           source=path)


def _read_table(path: Path) -> tuple[dict[str, int], list[list[str]]]:
    """Return the position of each column named in the header, and the rows after it."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise _invalid(path, FieldProblem("file", str(path), f"cannot be read ({error.strerror})",
                                          "give the path of a CSV file of requests")) from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or "task" not in header:
            raise _invalid(path, FieldProblem("header", header, "has no 'task' column",
                                              f"start the file with a header such as {','.join(COLUMNS)}"))
        unknown = [name for name in header if name not in COLUMNS]
        if unknown:
            raise _invalid(path, FieldProblem("header", unknown, "names unknown columns",
                                              f"use only {', '.join(COLUMNS)}"))
        rows = list(reader)
    if not rows:
        raise _invalid(path, FieldProblem("rows", 0, "the file has no request rows",
                                          "add one row per request after the header"))
    return {name: header.index(name) for name in header}, rows


def _invalid(source, problem: FieldProblem) -> InstanceError:
    return InstanceError(str(source), [problem], what="request file")


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _invalid(path, FieldProblem(f"line {line}.{column}", text, "is not a number",
                                                "write a decimal number")) from None
    if not np.isfinite(value) or value <= 0:
        raise _invalid(path, FieldProblem(f"line {line}.{column}", text, "must be positive",
                                                "write a positive number"))
    return value


def attach_requests(instance: Instance, task: np.ndarray, count: np.ndarray, value: np.ndarray,
                    difficulty: np.ndarray, source: str | Path = "<requests>") -> tuple[Instance, RequestSet]:
    """Return the instance with class volumes set from the requests, and the :class:`RequestSet`.

    ``value`` may hold NaN for requests that take their class's value.
    Classes without requests are appended as one request each.
    """
    tasks = list(instance.tasks)
    class_value = np.array([instance.tasks[name].value for name in tasks])
    value = np.where(np.isnan(value), class_value[task], value)
    if np.any(value < 0):
        raise _invalid(source, FieldProblem("value", float(value.min()), "must not be negative",
                                                  "give each request a value of 0 or more"))
    volume = np.bincount(task, weights=count, minlength=len(tasks))
    missing = np.flatnonzero(volume == 0)
    updated = {}
    for x, name in enumerate(tasks):
        if volume[x] > 0:
            updated[name] = instance.tasks[name].model_copy(update={"volume": float(volume[x])})
    if updated:
        logger.info("%d task classes take their volume from %d request rows", len(updated), len(task))
    instance = instance.model_copy(update={"tasks": {**instance.tasks, **updated}})
    if len(missing):
        volume[missing] = 1.0
        task = np.concatenate([task, missing])
        count = np.concatenate([count, np.ones(len(missing))])
        value = np.concatenate([value, class_value[missing]])
        difficulty = np.concatenate([difficulty, np.ones(len(missing))])
    order = np.argsort(task, kind="stable")
    task, count, value, difficulty = task[order], count[order], value[order], difficulty[order]
    relative = np.where(class_value[task] > 0, value / np.where(class_value[task] > 0, class_value[task], 1.0), 1.0)
    return instance, RequestSet(task, count / volume[task], relative, difficulty)


def generate_requests(instance: Instance, count: int, seed: int = 0,
                      value_spread: float = 0.5, difficulty_spread: float = 0.5
                      ) -> tuple[Instance, RequestSet]:
    """Draw ``count`` requests over the instance's classes, in proportion to their volumes.

    The requests of a class share its volume equally, so class volumes, and
    with them the load on budgets and pools, stay as the instance sets them.
    Values and difficulties are log-normal around the class's (``spread`` is
    the standard deviation of the logarithm).
    """
    rng = np.random.default_rng(seed)
    tasks = list(instance.tasks)
    weights = np.array([instance.tasks[name].volume for name in tasks], dtype=float)
    task = rng.choice(len(tasks), size=count, p=weights / weights.sum())
    class_value = np.array([instance.tasks[name].value for name in tasks])
    value = class_value[task] * rng.lognormal(-0.5 * value_spread ** 2, value_spread, count)
    difficulty = rng.lognormal(0.0, difficulty_spread, count)
    drawn = np.bincount(task, minlength=len(tasks))
    share = weights[task] / drawn[task]
    return attach_requests(instance, task, share, value, difficulty, source="<generated>")


def write_request_file(path: str | Path, instance: Instance, requests: RequestSet) -> None:
    """Write requests as a CSV request file (counts relative to the class volumes)."""
    tasks = list(instance.tasks)
    volume = np.array([instance.tasks[name].volume for name in tasks])
    class_value = np.array([instance.tasks[name].value for name in tasks])
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for x, weight, value, difficulty in zip(requests.task, requests.weight, requests.value,
                                                requests.difficulty, strict=True):
            writer.writerow([tasks[x], f"{weight * volume[x]:.12g}", f"{value * class_value[x]:.12g}",
                             f"{difficulty:.12g}"])
