"""Exceptions raised by tokenomy.

Every exception a user can cause derives from :class:`TokenomyError`, so the
command line can print its message without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class TokenomyError(Exception):
    """Base class of every error tokenomy raises on purpose."""


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field of an instance file.

    Attributes
    ----------
    path:
        Dotted field path, e.g. ``tasks.fix-failing-test.volume``.
    value:
        The offending value as found in the file (``None`` when missing).
    message:
        What is wrong with it.
    fix:
        What to write instead.
    """

    path: str
    value: object
    message: str
    fix: str

    def describe(self) -> str:
        if self.value is _MISSING and self.path.startswith("("):
            return f"{self.path}: {self.message}. Fix: {self.fix}"
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        if isinstance(self.value, (dict, list)) and len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.path} = {shown}: {self.message}. Fix: {self.fix}"


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()
MISSING: object = _MISSING
"""Marker for a field that is absent from the instance file."""


class InstanceError(TokenomyError):
    """An instance file (or an override of it) is invalid.

    The message lists every problem found with the file name, the dotted
    field path, the value and the fix.
    """

    def __init__(self, source: str, problems: list[FieldProblem], what: str = "instance"):
        self.source = source
        self.problems = problems
        lines = [f"invalid {what} {source}: {len(problems)} problem(s)"]
        lines += [f"  - {problem.describe()}" for problem in problems]
        super().__init__("\n".join(lines))


class ExtensionError(InstanceError):
    """An extension cannot be registered or loaded, or one of its hooks failed.

    It is an :class:`InstanceError`, so the command line exits with code 2.
    ``source`` names the entry point, module or hook at fault.
    """

    def __init__(self, source: str, problems: list[FieldProblem]):
        super().__init__(source, problems, what="extension")


class SolveError(TokenomyError):
    """The solver could not produce a usable solution."""


class DataError(TokenomyError):
    """A data file or a recipe cannot be imported.

    The message names the file, the row, field or column, the invalid value
    and the fix.
    """

    def __init__(self, source: str, location: str, value: object, problem: str, fix: str):
        self.source = source
        self.location = location
        self.value = value
        self.problem = problem
        self.fix = fix
        shown = "(missing)" if value is _MISSING else repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid data in {source}: {location} = {shown}: {problem}. Fix: {fix}")
