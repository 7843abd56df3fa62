"""Command-line decomposition: ``tokenomy decompose FILE``.

:func:`register` adds the command to the main ``tokenomy`` app. The command
prints a progress bar while it runs (on stderr), then the bounds, the gap and
the price table. ``--json`` prints the run as JSON, and ``--out`` writes it
with CSV tables. Exit codes follow ``tokenomy solve``: 0 certified, 2 invalid
input, 3 no feasible allocation found, 4 stopped before the target gap.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..model.economy import Economy
from ..model.errors import InstanceError, TokenomyError
from ..model.loader import load_instance
from .decompose.coordinator import Decomposition, DecompositionResult, Iteration, Method
from .decompose.engines import EngineUnavailableError
from .decompose.request_rows import generate_requests, read_request_file
from .report import token_table, write_atomic

EXIT_INVALID = 2
EXIT_NO_SOLUTION = 3
EXIT_UNCERTIFIED = 4

AUTO_PROCESS_REQUESTS = 50_000
"""Below this many requests, starting worker processes (a few seconds) costs more than it saves."""

console = Console(width=max(Console().width, 120))
errors = Console(stderr=True, soft_wrap=True)
logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add ``decompose`` to ``app``."""
    app.command("decompose")(decompose_command)


def decompose_command(
    file: Annotated[Path, typer.Argument(help="Instance file (.yaml, .yml or .json).")],
    method: Annotated[Method, typer.Option(
        help="bundle: trust-region cutting planes (fast); subgradient: projected subgradient "
        "tatonnement; admm: ADMM in exchange form (every block in CVXPY).")] = Method.BUNDLE,
    gap: Annotated[float, typer.Option(help="Relative gap between the bounds at which to stop.")] = 1e-4,
    max_iterations: Annotated[int, typer.Option(help="Iteration limit (at least 1).")] = 500,
    time_limit: Annotated[float | None, typer.Option(help="Seconds allowed for the run.")] = None,
    requests: Annotated[Path | None, typer.Option(
        help="CSV file of per-request rows (task, count, value, difficulty); "
        "default: the instance's requests.file.")] = None,
    generate: Annotated[int | None, typer.Option(
        "--generate-requests", help="Draw this many per-request rows from the classes instead.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --generate-requests.")] = 0,
    engine: Annotated[str, typer.Option(
        help="Where request chunks run: serial, process, ray or mpi (see docs/engines.md); "
        f"auto: process for {AUTO_PROCESS_REQUESTS:,} requests or more, else serial.")] = "auto",
    workers: Annotated[int | None, typer.Option(help="Worker processes or actors of the engine.")] = None,
    chunk_size: Annotated[int, typer.Option(help="Requests per chunk.")] = 200_000,
    blocks: Annotated[str, typer.Option(
        help="auto: vectorized request block when the layers allow it; cvxpy: every block in CVXPY.")]
        = "auto",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field by its dotted path, e.g. tasks.fix.value=25 (repeatable).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the run as JSON on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory for decomposition.json, prices.csv, iterations.csv "
        "and, with per-request rows, requests.csv.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="PNG file for the bounds, prices and layer distances over the iterations.")] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="Log progress (-v) or details (-vv) on stderr.")] = 0,
) -> None:
    """Solve by decomposition: layers coordinated by prices, with certified bounds."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    problem = _check_options(method, gap, max_iterations, time_limit, generate, engine, workers,
                             chunk_size, blocks, plot, requests)
    if problem:
        errors.print(problem, markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID)
    try:
        instance = load_instance(file, set_ or [])
        request_set = None
        if requests is not None and generate is not None:
            errors.print("--requests and --generate-requests exclude each other; give one of them")
            raise typer.Exit(EXIT_INVALID)
        if requests is None and generate is None and instance.requests is not None:
            requests = file.parent / instance.requests.file
        if requests is not None:
            instance, request_set = read_request_file(requests, instance)
        elif generate is not None:
            instance, request_set = generate_requests(instance, generate, seed)
        if engine == "auto":
            count = 0 if request_set is None else len(request_set)
            engine = "process" if count >= AUTO_PROCESS_REQUESTS else "serial"
        runner = _engine(engine, workers)
        decomposition = Decomposition(Economy(instance), request_set, blocks=blocks, engine=runner,
                                      chunk_size=chunk_size)
        try:
            result = _run(decomposition, method, gap, max_iterations, time_limit, json_output)
            detail = _request_rows(decomposition, result) if request_set is not None else None
        finally:
            decomposition.close()
    except TokenomyError as error:
        errors.print(str(error), markup=False, highlight=False)
        invalid = isinstance(error, InstanceError | EngineUnavailableError)
        raise typer.Exit(EXIT_INVALID if invalid else EXIT_NO_SOLUTION) from None

    report = build_decomposition_report(instance.name, decomposition, result)
    if out is not None:
        write_decomposition_outputs(report, out, detail)
    if plot is not None:
        from .decompose.plot import plot_trajectory

        plot_trajectory(report["decomposition"], plot)
    if json_output:
        print(json.dumps(report, indent=2, allow_nan=False, default=_plain))
    else:
        _print_summary(report)
        if out is not None:
            console.print(f"wrote {escape(str(out))}/decomposition.json and CSV tables")
    if result.primal_bound is None:
        raise typer.Exit(EXIT_NO_SOLUTION)
    if not result.certified:
        raise typer.Exit(EXIT_UNCERTIFIED)


ENGINES = ("auto", "serial", "process", "ray", "mpi")


def _check_options(method, gap, max_iterations, time_limit, generate, engine, workers, chunk_size,
                   blocks, plot, requests) -> str | None:
    """Return what is wrong with the options, or ``None``, before any work starts."""
    if not 0 < gap < 1:
        return f"--gap {gap} is invalid: give a relative gap between 0 and 1, such as 1e-4"
    if max_iterations < 1:
        return f"--max-iterations {max_iterations} is invalid: give at least 1"
    if time_limit is not None and time_limit <= 0:
        return f"--time-limit {time_limit} is invalid: give a positive number of seconds"
    if generate is not None and generate < 1:
        return f"--generate-requests {generate} is invalid: give at least 1 request"
    if engine not in ENGINES:
        return f"--engine {engine!r} is not an engine: use one of {', '.join(ENGINES)}"
    if workers is not None and workers < 1:
        return f"--workers {workers} is invalid: give at least 1 worker"
    if chunk_size < 1:
        return f"--chunk-size {chunk_size} is invalid: give at least 1 request per chunk"
    if blocks not in ("auto", "cvxpy"):
        return f"--blocks {blocks!r} is invalid: use auto or cvxpy"
    if plot is not None and not plot.parent.is_dir():
        return f"--plot {plot}: the folder {plot.parent} does not exist; create it or choose another path"
    if method is Method.ADMM and (requests is not None or generate is not None):
        return ("--method admm solves task classes only, because its request block is one CVXPY "
                "problem; use --method bundle or subgradient with per-request rows")
    return None


def _engine(name: str, workers: int | None):
    if name == "serial":
        return None
    from .decompose.engines import make_engine

    return make_engine(name, workers)


def _run(decomposition: Decomposition, method: Method, gap: float, max_iterations: int,
         time_limit: float | None, quiet: bool) -> DecompositionResult:
    """Run with a progress bar on stderr (none with ``--json`` or when stderr is not a terminal)."""
    if quiet or not sys.stderr.isatty():
        return decomposition.solve(method, gap, max_iterations, time_limit)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{method}", total=max_iterations, status="")

        def update(item: Iteration) -> None:
            gap_text = "gap -" if item.gap is None else f"gap {item.gap:.2e}"
            progress.update(task, completed=item.iteration + 1, status=f"{gap_text} (Ctrl-C stops)")

        return decomposition.solve(method, gap, max_iterations, time_limit, callback=update)


def build_decomposition_report(name: str, decomposition: Decomposition, result: DecompositionResult) -> dict:
    """Return the JSON report of a run: bounds, prices, iterations and the class-level routing."""
    data = decomposition.economy.data
    route = result.allocation.get("route")
    routing = []
    if route is not None:
        for k in range(data.option_count):
            task, model = data.option_label(k)
            volume = float(data.volume[data.option_task[k]])
            routing.append({"task": task, "model": model, "share": float(route[k]),
                            "requests": float(route[k]) * volume})
        defer = result.allocation.get("defer")
        if defer is not None:
            routing += [{"task": task, "model": "defer", "share": float(defer[x]),
                         "requests": float(defer[x] * data.volume[x])}
                        for x, task in enumerate(data.tasks) if defer[x] > 1e-9]
    run = result.as_dict()
    tokens = []
    if route is not None:
        # The report's token table reads the economy's variables, so load the allocation.
        for variable_name, value in result.allocation.items():
            variable = decomposition.economy.builder.variables.get(variable_name)
            if variable is not None and variable.size == np.size(value):
                variable.value = np.asarray(value, dtype=float)
        tokens = token_table(decomposition.economy)
    status = "optimal" if result.certified else ("feasible" if result.primal_bound is not None
                                                 else "no_solution")
    # The top-level keys follow the solve report, so `tokenomy report` renders both.
    return {"instance": name, "kind": "decomposition", "status": status,
            "termination": run["termination"], "certified": result.certified,
            "solver": f"decomposition ({run['method']})", "welfare": result.primal_bound,
            "bound": result.dual_bound, "gap": result.gap, "message": result.message,
            "prices": run["prices"], "routing": routing, "tokens": tokens, "decomposition": run}


def _request_rows(decomposition: Decomposition, result: DecompositionResult) -> dict | None:
    """Return each request's best response at the run's best prices."""
    kernel = decomposition.kernel
    if kernel is None:
        return None
    return kernel.request_rows(result.best_prices)


def write_decomposition_outputs(report: dict, directory: Path, requests: dict | None) -> list[Path]:
    """Write decomposition.json and the CSV tables into ``directory``, each file atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    run = report["decomposition"]
    written = [write_atomic(directory / "decomposition.json",
                            json.dumps(report, indent=2, allow_nan=False, default=_plain))]
    written.append(write_atomic(directory / "prices.csv", _csv(run["prices"])))
    rows = [{"iteration": item["iteration"], "seconds": item["seconds"],
             "dual_bound": item["dual_bound"], "primal_bound": item["primal_bound"], "gap": item["gap"],
             **{f"price:{label}": value for label, value in item["prices"].items()},
             **{f"distance:{layer}": value for layer, value in item["distance"].items()}}
            for item in run["iterations"]]
    written.append(write_atomic(directory / "iterations.csv", _csv(rows)))
    if requests:
        written.append(write_atomic(directory / "requests.csv", _csv_columns(requests)))
    return written


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_columns(columns: dict) -> str:
    """Return CSV text of a table given as equal-length columns."""
    names = list(columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names)
    writer.writerows(zip(*(columns[name] for name in names), strict=True))
    return buffer.getvalue()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _print_summary(report: dict) -> None:
    run = report["decomposition"]
    gap = "unknown" if run["gap"] is None else f"{run['gap']:.2e}"
    lower = "none found" if run["primal_bound"] is None else f"{run['primal_bound']:,.2f}"
    count = len(run["iterations"])
    console.print(f"[bold]{escape(report['instance'])}[/bold]: {run['method']} stopped ({run['termination']}) "
                  f"after {count} iteration{'s' if count != 1 else ''} in {run['seconds']:.1f} s")
    console.print(f"welfare between {lower} and {run['dual_bound']:,.2f} USD per period (gap {gap}, "
                  f"target {run['target_gap']:.0e})")
    if run["message"]:
        console.print(f"[yellow]{escape(run['message'])}[/yellow]")
    table = Table(title="prices at the best dual point (USD per unit of the right-hand side)")
    for column in ("row", "price", "unit", "binding"):
        table.add_column(column)
    for price in run["prices"]:
        value = "withheld" if price["price"] is None else f"{price['price']:.6g}"
        binding = ""
        if price["binding"] is not None:
            binding = "yes" if price["binding"] else "no"
        table.add_row(escape(price["market"]), value, escape(price["unit"]), binding)
    console.print(table)
