"""MkDocs hooks: the CLI reference rendered from the live command, and the API source.

``mkdocs.yml`` loads this file twice: as MkDocs hooks (``hooks:``) and as a
Griffe extension of the mkdocstrings Python handler (:class:`MarkdownDocstrings`).
It is excluded from the pages. ``tests/test_cli_reference.py`` imports it to
compare :func:`render_cli_reference` with the output of ``tokenomy ... --help``.
"""

from __future__ import annotations

import atexit
import html
import re
import shutil
import sys
import tempfile
from pathlib import Path

import griffe
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
CLI_PAGE = "cli.md"
CLI_MARKER = "<!-- cli-reference -->"
PROGRAM = "tokenomy"
SOURCE_FOLDERS = {"model": "model", "solvers": "solvers"}
"""Subpackage of ``tokenomy`` -> its folder in the repository (see pyproject.toml)."""


@event_priority(100)  # before mkdocstrings creates its Python handler
def on_config(config):
    """Let mkdocstrings find ``tokenomy`` in the work tree, whichever way it is installed.

    The repository maps ``tokenomy.model`` to ``model/`` and ``tokenomy.solvers``
    to ``solvers/``, so no folder is named ``tokenomy``. Griffe (2.4) finds a
    regular install in site-packages, but not a setuptools editable install,
    because it takes each mapped folder to be named after its package. A
    temporary folder ``tokenomy/`` with links to the two source folders, put
    first on ``sys.path`` before the Python handler reads it, serves both
    cases. The API pages and the CLI reference then document the checked-out
    source.
    """
    folder = Path(tempfile.mkdtemp(prefix="tokenomy-docs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    package = folder / "tokenomy"
    package.mkdir()
    for name, source in SOURCE_FOLDERS.items():
        (package / name).symlink_to(ROOT / source, target_is_directory=True)
    sys.path.insert(0, str(folder))
    return config


def on_page_markdown(markdown, page, config, files):
    """Replace the marker on the CLI page with the reference of every command."""
    if page.file.src_uri != CLI_PAGE:
        return markdown
    if CLI_MARKER not in markdown:
        raise PluginError(f"docs/{CLI_PAGE} has no marker {CLI_MARKER}. Put the marker back "
                          "where the generated command reference belongs.")
    return markdown.replace(CLI_MARKER, render_cli_reference())


def root_command():
    """Return the click command behind the ``tokenomy`` console script.

    Typer builds it on click, or on the copy of click that recent Typer
    versions ship, so the functions below rely only on the Command and
    Parameter methods that both provide.
    """
    import typer

    from tokenomy.solvers.cli import app

    return typer.main.get_command(app)


def is_group(command) -> bool:
    """Return whether a click command has subcommands."""
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def subcommands(command, context) -> list[tuple[str, object]]:
    """Return ``(name, command)`` of the visible subcommands, in the order of ``--help``."""
    if not is_group(command):
        return []
    found = []
    for name in command.list_commands(context):
        sub = command.get_command(context, name)
        if sub is not None and not sub.hidden:
            found.append((name, sub))
    return found


def walk_commands(command, path: tuple[str, ...] = (PROGRAM,), parent=None):
    """Yield ``(path, command, context)`` for the command and every subcommand, depth first."""
    context = command.context_class(command, info_name=path[-1], parent=parent)
    yield path, command, context
    for name, sub in subcommands(command, context):
        yield from walk_commands(sub, (*path, name), context)


def help_records(command, context) -> list[tuple[str, str, str]]:
    """Return ``(kind, name, help)`` per argument and option, as ``--help`` prints them.

    ``kind`` is ``argument`` or ``option``. ``name`` and ``help`` are the two
    columns of the help output, including ``[default: ...]`` and ``[required]``.
    """
    records = []
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if record is None:
            continue
        kind = "argument" if param.param_type_name == "argument" else "option"
        records.append((kind, record[0], record[1]))
    return records


def render_cli_reference() -> str:
    """Render one section per command: description, usage, arguments, options, subcommands."""
    sections = []
    for path, command, context in walk_commands(root_command()):
        sections.append(_render_command(path, command, context))
    return "\n".join(sections)


def _render_command(path, command, context) -> str:
    title = " ".join(path)
    lines = [f"## `{title}`", ""]
    if command.help:
        lines += [_text(paragraph) + "\n" for paragraph in _paragraphs(command.help)]
    usage = " ".join(command.collect_usage_pieces(context))
    lines += ["```text", f"{title} {usage}".rstrip(), "```", ""]

    records = help_records(command, context)
    for kind, heading in (("argument", "Arguments"), ("option", "Options")):
        rows = [(name, text) for record_kind, name, text in records if record_kind == kind]
        if rows:
            lines += [f"**{heading}**", "", "| name | description |", "|---|---|"]
            lines += [f"| `{_cell_code(name)}` | {_text(text)} |" for name, text in rows]
            lines.append("")

    children = subcommands(command, context)
    if children:
        lines += ["**Commands**", "", "| command | description |", "|---|---|"]
        for name, sub in children:
            anchor = _anchor((*path, name))
            summary = sub.get_short_help_str(limit=1000)
            lines.append(f"| [`{name}`](#{anchor}) | {_text(summary)} |")
        lines.append("")
    return "\n".join(lines)


def _paragraphs(text: str) -> list[str]:
    blocks = [" ".join(block.split()) for block in text.strip().split("\n\n")]
    return [block for block in blocks if block]


def _text(text: str) -> str:
    """Escape help text for a Markdown paragraph or table cell."""
    escaped = html.escape(" ".join(text.split()), quote=False)
    for character in "\\`*_[]|":
        escaped = escaped.replace(character, "\\" + character)
    return escaped


def _cell_code(text: str) -> str:
    return text.replace("|", "\\|")


def _anchor(path: tuple[str, ...]) -> str:
    """Return the anchor MkDocs' default slugify gives the heading of ``path``."""
    return "-".join(path).lower()


SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(?P<short>~?)(?P<target>[^`]+)`")
"""A Sphinx cross-reference role such as ``:func:`~tokenomy.model.load_instance```."""


def replace_sphinx_roles(text: str) -> str:
    """Replace Sphinx roles by inline code, keeping only the last part after ``~`` as Sphinx does."""

    def inline_code(match: re.Match) -> str:
        target = match.group("target")
        if match.group("short"):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return SPHINX_ROLE.sub(inline_code, text)


DEFINITION_TERM = re.compile(r"^``[^`]+``(, ``[^`]+``)*$")
"""A line of inline-code names that an indented description follows, as in the layers' ``Variables``."""


def definitions_to_bullets(text: str) -> str:
    """Turn numpy-style definition lists into Markdown bullets.

    A line such as ``route[k]`` (in double backticks) followed by lines
    indented by four spaces becomes one bullet, so Markdown does not run the
    terms and their descriptions together into one paragraph.
    """
    lines = text.split("\n")
    converted = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not DEFINITION_TERM.match(line) or index == len(lines) or not lines[index].startswith("    "):
            converted.append(line)
            continue
        description = []
        while index < len(lines) and lines[index].startswith("    "):
            description.append(lines[index].strip())
            index += 1
        converted.append(f"- {line}: {' '.join(description)}")
    return "\n".join(converted)


class MarkdownDocstrings(griffe.Extension):
    """Griffe extension that adapts reStructuredText habits of the docstrings to Markdown.

    mkdocstrings renders docstrings as Markdown, where ``:func:`name``` would
    appear verbatim and a definition list would become one paragraph.
    """

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = replace_sphinx_roles(obj.docstring.value)
            obj.docstring.value = definitions_to_bullets(text)
