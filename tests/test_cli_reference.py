"""The generated CLI reference page (docs/cli.md) against the live ``tokenomy --help`` output."""

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.core
from typer.testing import CliRunner

from tokenomy.solvers.cli import app

from conftest import ROOT

pytest.importorskip("mkdocs", reason="the docs extra is not installed")
pytest.importorskip("griffe", reason="the docs extra is not installed")

HEADING = re.compile(r"^## `(?P<path>[^`]+)`$")
TABLE_ROW = re.compile(r"^\| (?P<name>.+?) \| (?P<text>.*) \|$")
LINK = re.compile(r"\[(?P<label>[^\]]*)\]\(#[^)]*\)")
SECTIONS = ("Arguments", "Options", "Commands")


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unescape(text: str) -> str:
    return html.unescape(re.sub(r"\\(.)", r"\1", text))


def parse_page(markdown: str) -> dict[str, dict]:
    """Return, per command path, its description and its table rows by section."""
    commands: dict[str, dict] = {}
    current = section = None
    for line in markdown.splitlines():
        heading = HEADING.match(line)
        if heading:
            current = {"text": [], **{name: {} for name in SECTIONS}}
            commands[heading["path"]] = current
            section = None
            continue
        if current is None:
            continue
        if line.startswith("**") and line.strip("*") in SECTIONS:
            section = line.strip("*")
            continue
        row = TABLE_ROW.match(line)
        if section and row and row["name"] not in ("name", "command"):
            name = unescape(LINK.sub(r"\g<label>", row["name"]).strip("`"))
            current[section][name] = " ".join(unescape(row["text"]).split())
        elif section is None and line and not line.startswith(("```", "tokenomy")):
            current["text"].append(unescape(line))
    return commands


def parse_plain_help(output: str) -> dict:
    """Parse click's plain help: the description and, per section, each entry's name and help."""
    parsed = {"text": [], **{name: {} for name in SECTIONS}}
    section, name = None, None
    for line in output.splitlines():
        if line.startswith("Usage:"):
            continue
        if line.rstrip(":") in SECTIONS and line.endswith(":"):
            section, name = line[:-1], None
            continue
        if section is None:
            if line.strip():
                parsed["text"].append(line.strip())
            continue
        if not line.strip():
            continue
        if line.startswith("  ") and not line.startswith("   "):
            name, _, text = line.strip().partition("  ")
            parsed[section][name] = text.strip()
        elif name is not None:
            parsed[section][name] += " " + line.strip()
    for section in SECTIONS:
        parsed[section] = {name: " ".join(text.split()) for name, text in parsed[section].items()}
    return parsed


@pytest.fixture(scope="module")
def page():
    return parse_page(load_hooks().render_cli_reference())


def plain_help(monkeypatch, path: list[str]) -> dict:
    """Run ``tokenomy PATH --help`` in-process with click's plain (not rich) formatter.

    A wide formatter keeps each help text on one line, because wrapping may
    break a word at a hyphen.
    """
    monkeypatch.setattr(typer.core, "HAS_RICH", False)
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=10_000,
                                max_content_width=10_000)
    assert result.exit_code == 0, result.output
    return parse_plain_help(result.output)


def command_paths(monkeypatch, path=()) -> list[tuple[str, ...]]:
    """List every command path reachable from the live help, depth first."""
    found = [path]
    for name in plain_help(monkeypatch, list(path))["Commands"]:
        found += command_paths(monkeypatch, (*path, name))
    return found


def test_page_lists_every_live_command(monkeypatch, page):
    live = [" ".join(("tokenomy", *path)) for path in command_paths(monkeypatch)]
    assert len(live) > 10, f"the help walk found only {live}"
    assert sorted(page) == sorted(live)


def test_page_matches_each_help(monkeypatch, page):
    for path in command_paths(monkeypatch):
        title = " ".join(("tokenomy", *path))
        live = plain_help(monkeypatch, list(path))
        documented = page[title]
        assert " ".join(documented["text"]) == " ".join(live["text"]), title
        for section in ("Arguments", "Options"):
            assert documented[section] == live[section], f"{title}: {section}"
        assert sorted(documented["Commands"]) == sorted(live["Commands"]), title


def test_console_script_commands_on_page(page):
    """The installed ``tokenomy`` script, as a user runs it, lists the commands the page has."""
    script = Path(sys.executable).parent / "tokenomy"
    if not script.exists():
        pytest.skip(f"no tokenomy console script beside {sys.executable}")
    output = subprocess.run([script, "--help"], capture_output=True, text=True, check=True,
                            env={**os.environ, "COLUMNS": "100"}).stdout
    panel = output[output.index("Commands"):]
    # Rich help draws a panel ("│ name  help"), and plain click help indents by two spaces.
    names = re.findall(r"^(?:│ | {2})([a-z][\w-]*) ", panel, flags=re.MULTILINE)
    top_level = [path.split(" ", 1)[1] for path in page if path.count(" ") == 1]
    assert names == top_level


def test_marker_replaced_or_missing():
    hooks = load_hooks()
    source = (ROOT / "docs" / "cli.md").read_text()
    assert source.count(hooks.CLI_MARKER) == 1
    page = type("Page", (), {"file": type("File", (), {"src_uri": hooks.CLI_PAGE})()})()
    rendered = hooks.on_page_markdown(source, page, None, None)
    assert hooks.CLI_MARKER not in rendered
    assert "## `tokenomy solve`" in rendered
    with pytest.raises(hooks.PluginError, match="has no marker"):
        hooks.on_page_markdown("# no marker", page, None, None)


def test_sphinx_roles_become_code():
    hooks = load_hooks()
    text = "See :func:`~tokenomy.model.load_instance` and :class:`Economy`."
    assert hooks.replace_sphinx_roles(text) == "See `load_instance` and `Economy`."


def test_definition_list_becomes_bullets():
    hooks = load_hooks()
    text = "Variables\n---------\n``route[k]``, ``defer[x]``\n    Shares of\n    requests.\nname:\n    kept"
    converted = hooks.definitions_to_bullets(text).split("\n")
    assert converted[2] == "- ``route[k]``, ``defer[x]``: Shares of requests."
    assert converted[3:] == ["name:", "    kept"]
