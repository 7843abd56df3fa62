"""The HTML report: sections, no external resources, escaping, bad input, a real browser.

The browser test renders the page in headless Chromium (Debian package
``chromium``, which ``.ci/run`` installs when it is missing) and reads the
DOM back with ``--dump-dom``. It is skipped when no Chromium binary is on the
PATH, for example when the package could not be installed. The parse tests
run everywhere: they check with :mod:`html.parser` that no ``src`` or
``href`` attribute points outside the file.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from tokenomy.solvers.cli import app
from tokenomy.solvers.html_figures import MAX_ROWS, equimarginal_figure
from tokenomy.solvers.html_report import format_number, format_usd, price_meaning, render_html
from tokenomy.solvers.report_input import ReportInputError, check_report

from conftest import CODING_AGENT

runner = CliRunner()

SOLVE_SECTIONS = ("summary", "prices", "allocation", "equimarginal", "evaluation")
COMPARE_SECTIONS = ("summary", "comparison", "evaluation")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")
EXTERNAL = re.compile(r"^\s*(https?:|//)", re.IGNORECASE)


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


class Page(HTMLParser):
    """Collect section ids, headings, every src and href, and the image sources."""

    def __init__(self):
        super().__init__()
        self.sections, self.links, self.images = [], [], []
        self.headings: list[str] = []
        self._heading = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section" and attributes.get("id"):
            self.sections.append(attributes["id"])
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append((tag, name, value))
        if tag == "h2":
            self._heading = ""

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if tag == "h2" and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def decomposition_trajectory(report: dict, count: int = 6) -> dict:
    """Return a made-up trajectory that converges to the report's prices."""
    final = {row["market"]: row["price"] for row in report["prices"] if row["kind"] != "routing"}
    iterations = []
    for i in range(1, count + 1):
        shrink = math.exp(-i)
        iterations.append({
            "iteration": i, "seconds": 0.05 * i,
            "dual_bound": report["welfare"] * (1 + shrink),
            "primal_bound": None if i == 1 else report["welfare"] * (1 - shrink),
            "gap": None if i == 1 else 2 * shrink,
            "prices": {label: value * (1 + shrink) for label, value in final.items()},
            "excess": {label: shrink for label in final},
            "distance": {"router": shrink, "agent": 2 * shrink, "serving": 0.0 if i == count else shrink},
        })
    return {"method": "dual ascent", "termination": "gap below tolerance", "iterations": iterations}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Write the JSON of a solve and of a comparison of coding_agent.yaml, and their HTML."""
    folder = tmp_path_factory.mktemp("report")
    solved = run("solve", CODING_AGENT, "--json")
    assert solved.exit_code == 0, solved.output
    compared = run("compare", CODING_AGENT, "--json")
    assert compared.exit_code == 0, compared.output
    paths = {"solve_json": folder / "solve.json", "compare_json": folder / "compare.json"}
    paths["solve_json"].write_text(solved.stdout)
    paths["compare_json"].write_text(compared.stdout)
    for name in ("solve", "compare"):
        paths[name] = folder / f"{name}.html"
        result = run("report", paths[f"{name}_json"], "--html", paths[name])
        assert result.exit_code == 0, result.output
    return paths


def test_solve_page_sections(files):
    page = parse(files["solve"].read_text())
    assert list(page.sections) == list(SOLVE_SECTIONS)
    assert "Token-aware evaluation" in page.headings
    assert len(page.images) >= 2


def test_compare_page_sections(files):
    page = parse(files["compare"].read_text())
    assert list(page.sections) == list(COMPARE_SECTIONS)
    assert "Siloed versus global" in page.headings


@pytest.mark.parametrize("name", ["solve", "compare"])
def test_no_external_urls(files, name):
    html = files[name].read_text()
    page = parse(html)
    external = [link for link in page.links if EXTERNAL.match(link[2])]
    assert external == []
    for source in page.images:
        assert source.startswith("data:image/svg+xml;base64,"), source[:60]
    assert "<script" not in html.lower()
    assert "@import" not in html
    assert "url(" not in html


def test_output_written_atomically(files):
    leftovers = [path.name for path in files["solve"].parent.iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []


def test_instance_strings_are_escaped(files):
    report = json.loads(files["solve_json"].read_text())
    report["instance"] = "<script>alert(1)</script>"
    report["routing"][0]["task"] = 'task "<b>bold</b>"'
    report["prices"][0]["market"] = "gpu[<img src=https://example.invalid/x.png>]"
    html = render_html(report, "<evil>.json")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html
    assert "&lt;evil&gt;.json" in html
    page = parse(html)
    assert [link for link in page.links if EXTERNAL.match(link[2])] == []


def test_withheld_prices_are_marked(files):
    report = json.loads(files["solve_json"].read_text())
    report["certified"] = False
    report["status"] = "feasible"
    for row in report["prices"]:
        if row["mode"] != "price":
            row["price"] = None
            row["reason"] = "SCS returned an uncertified solution"
    report["evaluation"] = {"reason": "prices are not certified", "rows": []}
    html = render_html(report)
    assert "not certified" in html
    assert html.count(">withheld<") == sum(1 for row in report["prices"] if row["price"] is None)
    assert "SCS returned an uncertified solution" in html
    assert "No evaluation: prices are not certified." in html


def test_decomposition_section(files, tmp_path):
    report = json.loads(files["solve_json"].read_text())
    report["decomposition"] = decomposition_trajectory(report)
    source = tmp_path / "decomposed.json"
    source.write_text(json.dumps(report))
    target = tmp_path / "decomposed.html"
    result = run("report", source, "--html", target)
    assert result.exit_code == 0, result.output
    page = parse(target.read_text())
    assert page.sections[-1] == "decomposition"
    assert len(page.images) >= 4          # tokens, equimarginal, bounds, prices
    assert "gap below tolerance" in target.read_text()


def test_decomposition_alone(tmp_path):
    report = {"instance": "toy", "decomposition": {
        "method": "ADMM", "termination": "iteration limit",
        "iterations": [{"iteration": 1, "seconds": 0.1, "dual_bound": None, "primal_bound": 5.0,
                        "gap": None, "prices": {"compute": 1.0}, "excess": {"compute": 0.5},
                        "distance": {"agent": 1.0}}]}}
    html = render_html(report)
    assert parse(html).sections == ["summary", "decomposition"]


@pytest.mark.parametrize(("content", "message"), [
    ("not json {", "not JSON: Expecting value at line 1, column 1"),
    ("[1, 2]", "not a tokenomy report: the JSON document is a list"),
    ('{"hello": 1}', "not a tokenomy report: expected the keys of tokenomy solve --json"),
    ('{"status": "optimal", "welfare": 1.0, "prices": "none"}',
     "invalid tokenomy report: prices is \"none\", expected a list"),
    ('{"status": "optimal", "welfare": 1.0, "prices": [{"market": "compute", "price": "high"}]}',
     "invalid tokenomy report: prices[0].price is \"high\", expected a number or null"),
    ('{"global_welfare": 1, "siloed_welfare": 1, "gap": 0, "gap_by_layer": {"agent": "x"}}',
     "invalid tokenomy report: gap_by_layer.agent is \"x\", expected a number"),
    ('{"decomposition": {"method": "ADMM", "termination": "done", "iterations": [{"iteration": 1.5}]}}',
     "invalid tokenomy report: decomposition.iterations[0].iteration is 1.5, expected an integer"),
])
def test_bad_input_exits_2(tmp_path, content, message):
    source = tmp_path / "bad.json"
    source.write_text(content)
    result = run("report", source, "--html", tmp_path / "out.html")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{source}: "), lines[0]
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.html").exists()


def test_missing_file_exits_2(tmp_path):
    result = run("report", tmp_path / "absent.json", "--html", tmp_path / "out.html")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"{tmp_path / 'absent.json'}: file not found"


def test_console_script_has_no_traceback(tmp_path):
    source = tmp_path / "bad.json"
    source.write_text("{")
    command = [sys.executable, "-m", "tokenomy.solvers.cli", "report", str(source),
               "--html", str(tmp_path / "out.html")]
    process = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert process.stderr.count("\n") == 1


def test_check_report_accepts_real_reports(files):
    for name in ("solve_json", "compare_json"):
        check_report(json.loads(files[name].read_text()))
    with pytest.raises(ReportInputError, match="not a tokenomy report"):
        check_report("text")


def test_number_formats():
    assert format_usd(-1e-9) == "0.00"
    assert format_usd(82998.7468) == "82,998.75"
    assert format_usd(None) == "—"
    assert format_number(2.7749973896e-06) == "2.775e-06"
    assert format_number(45.59167) == "45.59"
    assert format_number(1234567.0) == "1,234,567"
    assert format_number(0) == "0"


def test_price_meanings_name_the_row():
    assert "fix-failing-test" in price_meaning({"market": "latency[fix-failing-test]",
                                                "kind": "latency", "mode": "budget"})
    assert "pool-large" in price_meaning({"market": "gpu[pool-large]", "kind": "gpu"})
    assert "kWh" in price_meaning({"market": "energy", "kind": "resource", "mode": "price",
                                   "unit": "USD per kWh"})
    assert price_meaning({"market": "mystery", "kind": "new-kind"}).startswith("Change in optimal")


# -- a real browser -----------------------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(path, profile) -> str:
    """Load ``path`` in headless Chromium with a fresh profile and return the DOM it built."""
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
               path.resolve().as_uri()]
    process = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HOME": str(profile)})
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on PATH (Debian package chromium)")
@pytest.mark.parametrize(("name", "sections"), [("solve", SOLVE_SECTIONS),
                                                ("compare", COMPARE_SECTIONS)])
def test_chromium_renders_sections(files, tmp_path, name, sections):
    dom = dump_dom(files[name], tmp_path / "profile")
    page = parse(dom)
    assert page.sections == list(sections)
    assert "Token-aware evaluation" in page.headings
    assert len(page.images) >= 1
    assert [link for link in page.links if EXTERNAL.match(link[2])] == []


def test_no_solution_page(tmp_path):
    solved = run("solve", CODING_AGENT, "--set", "markets.compute.budget=0.001", "--json")
    assert solved.exit_code == 3, solved.output
    html = render_html(json.loads(solved.stdout))
    page = parse(html)
    assert page.sections == ["summary", "prices", "allocation", "evaluation"]
    assert "none: the solve returned no allocation" in html
    assert "No evaluation: the solve returned no allocation." in html
    assert "raise markets.compute.budget" in html


def test_long_panels_are_capped():
    rows = [{"kind": "token", "task": f"task-{i}", "model": "m", "use": "read", "amount": 1.0,
             "marginal_benefit": 1.0, "marginal_cost": 1.0 + i / 100, "residual": -i / 100,
             "used": i == 0} for i in range(MAX_ROWS + 25)]
    figure = equimarginal_figure(rows)
    axis = figure.axes[0]
    assert f"({MAX_ROWS} of {MAX_ROWS + 25} rows)" in axis.get_title(loc="left")
    labels = [label.get_text() for label in axis.get_yticklabels()]
    assert len(labels) == MAX_ROWS
    assert "task-0 · m · read" not in labels          # the balanced row is left out
    assert f"task-{MAX_ROWS + 24} · m · read" in labels
