"""docs/extending.md runs as written: its Python blocks, their outputs and its copies of files.

Every ``python`` block of the page runs in order in one namespace, from the
repository's root. A ``text`` block right after a Python block is that
block's exact output. A block whose first line is a path comment
(``# examples/...``) must still be part of that file.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from distributions import EXAMPLE, install_example

from tokenomy.model.registry import REGISTRY

from conftest import ROOT

PAGE = ROOT / "docs" / "extending.md"
FENCE = re.compile(r"^```(?P<language>\w*)\n(?P<body>.*?)^```$", re.M | re.S)


@dataclass
class Block:
    language: str
    body: str
    path: str | None
    output: str | None


def blocks() -> list[Block]:
    """Return the page's fenced blocks, each Python block with the text block right after it."""
    text = PAGE.read_text(encoding="utf-8")
    result: list[Block] = []
    previous_end = None
    for match in FENCE.finditer(text):
        language, body = match["language"], match["body"]
        follows = previous_end is not None and not text[previous_end:match.start()].strip()
        previous_end = match.end()
        if language == "text" and follows and result and result[-1].language == "python":
            result[-1].output = body
            continue
        first, _, rest = body.partition("\n")
        path = first[2:].strip() if first.startswith("# examples/") else None
        result.append(Block(language, rest if path else body, path, None))
    return result


BLOCKS = blocks()


def test_page_has_the_tutorial_blocks():
    python = [block for block in BLOCKS if block.language == "python"]
    assert len(python) >= 10
    assert sum(block.output is not None for block in python) >= 6


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.path],
                         ids=lambda block: f"{block.path}:{block.body.splitlines()[0][:30]}")
def test_block_is_part_of_its_file(block):
    text = (ROOT / block.path).read_text(encoding="utf-8")
    assert block.body.strip() in text, f"docs/extending.md no longer matches {block.path}"


@pytest.fixture()
def tutorial(monkeypatch):
    """Run every Python block; return the namespace and each block's printed output."""
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "extending_tutorial"}
    outputs = []
    with REGISTRY.isolated():
        for block in BLOCKS:
            if block.language != "python":
                continue
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(block.body, f"{PAGE}:{block.body.splitlines()[0]}", "exec"), namespace)
            outputs.append((block, printed.getvalue()))
        yield namespace, outputs


def test_outputs_match_page(tutorial):
    _, outputs = tutorial
    for block, printed in outputs:
        if block.output is not None:
            assert printed == block.output, f"output of the block starting {block.body[:60]!r}"


def test_energy_price_reported_and_checked(tutorial):
    namespace, _ = tutorial
    energy = namespace["energy"]
    assert energy.market == "energy"
    assert energy.kind == "energy_cap"
    assert energy.binding
    assert energy.price > 0
    assert energy.unit == "USD per kWh"
    assert namespace["estimate"] == pytest.approx(energy.price, rel=0.02)


def test_retrieval_decisions_shown(tutorial):
    namespace, _ = tutorial
    rows = namespace["report"]["layers"]["retrieval"]
    assert rows and rows[0]["tokens_per_request"] > 1000
    comparison = namespace["comparison"]
    assert comparison["views"]["retrieval"] == ["compute", "value"]
    assert comparison["differences"]["layers"]["retrieval"]["siloed"]
    assert any(row["mode"] == "over-retrieval" for row in comparison["failure_modes"])


def test_curve_family_solved(tutorial):
    namespace, _ = tutorial
    assert namespace["double"] == pytest.approx(2 * namespace["single"], rel=1e-6)
    assert namespace["result"].certified


def test_tutorial_leaves_registry_unchanged(tutorial):
    assert REGISTRY.market_kind("energy_cap") is not None
    assert REGISTRY.layer("retrieval") is not None


def test_registry_clean_after_tutorial():
    assert REGISTRY.market_kind("energy_cap") is None
    assert REGISTRY.layer("retrieval") is None


# -- the example as an installed package ---------------------------------------------


def run_cli(site, *arguments):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(EXAMPLE)]))
    environment.pop("TOKENOMY_NO_EXTENSIONS", None)
    return subprocess.run([sys.executable, "-m", "tokenomy.solvers.cli", *arguments],
                          capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    return install_example(tmp_path / "site", monkeypatch)


def test_cli_finds_the_entry_point(installed):
    completed = run_cli(installed, "extensions", "--json")
    assert completed.returncode == 0, completed.stderr
    names = {(row["type"], row["name"]) for row in json.loads(completed.stdout)}
    assert names == {("market kind", "energy_cap"), ("layer", "retrieval"),
                     ("curve family", "substitutes"), ("detector", "over-retrieval")}


def test_cli_solves_the_example_instance(installed):
    completed = run_cli(installed, "solve", str(EXAMPLE / "energy_retrieval.yaml"), "--json")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["certified"]
    energy = next(row for row in report["prices"] if row["market"] == "energy")
    assert energy["kind"] == "energy_cap"
    assert energy["price"] > 0
    assert report["layers"]["retrieval"][0]["task"] == "research"


def test_cli_without_package_names_fix():
    completed = run_cli(ROOT / "no-such-site", "validate", str(EXAMPLE / "energy_retrieval.yaml"))
    assert completed.returncode == 2
    assert "is not a registered market kind" in completed.stderr
    assert "is not a registered layer" in completed.stderr
