"""Reading helpers shared by the importers: CSV columns, numbers and errors.

Every problem becomes a :class:`~tokenomy.model.errors.DataError` that names
the file by its base name, the line and column, the value and the fix.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MISSING, DataError

MAX_FILE_BYTES = 512 * 1024 * 1024
"""Largest data file read (bytes); a larger file is rejected with a message."""


def file_name(path: str | Path) -> str:
    """Return the name used for a file in messages and metadata (its base name)."""
    return Path(path).name


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, raising DataError when it is missing, too large or not UTF-8."""
    path = Path(path)
    name = file_name(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DataError(name, "(file)", str(path), f"cannot be read ({error.strerror})",
                        "check the path") from None
    if path.is_dir():
        raise DataError(name, "(file)", str(path), "is a directory", "give the path of a file")
    if size > MAX_FILE_BYTES:
        raise DataError(name, "(file)", f"{size} bytes",
                        f"is larger than the limit of {MAX_FILE_BYTES} bytes",
                        "split the file or raise MAX_FILE_BYTES")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(name, "(file)", f"byte {error.start}", "is not valid UTF-8",
                        "save the file as UTF-8") from None


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, raising DataError with the line and column of a syntax error."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(file_name(path), f"line {error.lineno}, column {error.colno}", MISSING,
                        f"is not valid JSON ({error.msg})",
                        "correct the syntax or download the file again") from None


class Table:
    """The columns of a CSV file as arrays of strings, with line numbers for messages.

    Data rows are numbered from line 2 (line 1 is the header). A quoted field
    with a line break would shift that numbering; the formats read here have none.
    """

    def __init__(self, source: str, header: list[str], rows: list[list[str]]):
        self.source = source
        self.header = header
        self.rows = rows
        self._columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def line(index: int) -> str:
        return f"line {index + 2}"

    def column(self, name: str) -> np.ndarray:
        """Return the stripped strings of a column (raises DataError when it is missing)."""
        if name not in self._columns:
            if name not in self.header:
                raise DataError(self.source, f"column {name}", MISSING, "is missing from the header",
                                f"add the column; the header has: {', '.join(self.header)}")
            position = self.header.index(name)
            values = np.array([row[position] for row in self.rows], dtype=object)
            self._columns[name] = np.char.strip(values.astype(str)) if len(values) else values
        return self._columns[name]

    def require(self, names: list[str]) -> None:
        """Raise DataError naming every required column that the header lacks."""
        missing = [name for name in names if name not in self.header]
        if missing:
            raise DataError(self.source, "column " + ", ".join(missing), MISSING,
                            "is missing from the header",
                            f"the file needs columns {', '.join(names)}; "
                            f"its header has: {', '.join(self.header) or '(nothing)'}")

    def numbers(self, name: str, *, integer: bool = False, minimum: float | None = 0.0,
                blank: float | None = None) -> np.ndarray:
        """Convert a column to floats, raising DataError on the first invalid cell.

        ``blank`` is the value of an empty cell; with ``None`` an empty cell is an error.
        """
        return parse_numbers(self.column(name), self.source, f"column {name}", self.line,
                             integer=integer, minimum=minimum, blank=blank)


def read_table(path: str | Path, required: list[str] | None = None) -> Table:
    """Read a CSV file with a header row into a :class:`Table`.

    Raises DataError when the file is empty, a required column is missing or a
    row has a different number of fields than the header (a truncated file).
    """
    name = file_name(path)
    text = read_text(path)
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as error:
        raise DataError(name, "(file)", MISSING, f"is not valid CSV ({error})",
                        "correct the quoting of the line shown") from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise DataError(name, "(file)", "", "is empty", "give a CSV file with a header row")
    header = [cell.strip() for cell in rows[0]]
    body = rows[1:]
    lengths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    wrong = np.flatnonzero(lengths != len(header))
    if len(wrong):
        index = int(wrong[0])
        problem = f"has {lengths[index]} fields but the header has {len(header)}"
        fix = "restore the missing fields (the file may be truncated) or delete the line"
        if index == len(body) - 1:
            problem += "; the last line looks truncated"
        raise DataError(name, Table.line(index), ",".join(body[index]), problem, fix)
    table = Table(name, header, body)
    if required:
        table.require(required)
    return table


def parse_numbers(values: np.ndarray, source: str, field: str, locate, *, integer: bool = False,
                  minimum: float | None = 0.0, blank: float | None = None) -> np.ndarray:
    """Convert strings (or numbers) to a float array, raising DataError on the first bad value.

    ``locate(index)`` turns a row index into the location shown in messages.
    """
    values = np.asarray(values)
    if blank is not None and values.dtype.kind in "UO" and len(values):
        values = np.where(values == "", np.float64(blank), values).astype(object)
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        for index, value in enumerate(values):
            try:
                float(value)
            except (TypeError, ValueError):
                value = plain(value)
                problem = "is empty" if value == "" else "is not a number"
                raise DataError(source, f"{locate(index)}, {field}", value, problem,
                                "give a number (token counts are whole numbers)") from None
        raise
    bad = ~np.isfinite(numbers)
    if blank is not None and np.isnan(blank):
        bad &= ~np.isnan(numbers)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise DataError(source, f"{locate(index)}, {field}", plain(values[index]), "is not a finite number",
                        "give a finite number")
    finite = np.where(np.isnan(numbers), 0.0, numbers)
    if minimum is not None and (finite < minimum).any():
        index = int(np.flatnonzero(finite < minimum)[0])
        raise DataError(source, f"{locate(index)}, {field}", plain(values[index]),
                        f"is below the minimum of {minimum:g}", f"give a value of at least {minimum:g}")
    if integer and (finite != np.round(finite)).any():
        index = int(np.flatnonzero(finite != np.round(finite))[0])
        raise DataError(source, f"{locate(index)}, {field}", plain(values[index]), "is not a whole number",
                        "give a whole number of tokens")
    return numbers


def plain(value: object) -> object:
    """Return a numpy scalar as the Python value, so messages show ``'x'`` and not ``np.str_('x')``."""
    return value.item() if isinstance(value, np.generic) else value


def significant(value: float | None, digits: int = 6) -> float | None:
    """Round a derived figure to ``digits`` significant digits, so instance files stay stable."""
    if value is None:
        return None
    value = float(value)
    if value == 0.0 or not np.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")
