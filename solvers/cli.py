"""The ``tokenomy`` command line: validate, solve, sweep, generate, schema.

Only this module prints; the library logs through :mod:`logging`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model.economy import Economy
from ..model.errors import InstanceError, TokenomyError
from ..model.generate import generate_instance
from ..model.loader import apply_overrides, load_instance, parse_override, read_document
from ..model.registry import REGISTRY
from ..model.schema import Instance
from ..model.views import resolve_views
from .compare import run_comparison
from .congestion import flat_pricing_equilibrium
from .failures import Thresholds, failure_location
from .joint import FALLBACK_ORDER, solve
from .policies import parse_policy
from .report import build_report, to_json, write_atomic, write_outputs
from .result import Result, SolutionStatus, TerminationReason
from .sweep import parse_vary, sweep

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Allocate tokens across router, agent, serving and capital layers; read the prices.",
)
console = Console(width=max(Console().width, 120))
errors = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 2
EXIT_NO_SOLUTION = 3
EXIT_UNCERTIFIED = 4

SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a field by its dotted path, e.g. tasks.fix.value=25 (repeatable).")]
SolverOption = Annotated[list[str] | None, typer.Option(
    "--solver", help=f"Solver to try, in order (repeatable); default {' then '.join(FALLBACK_ORDER)}.")]
VerboseOption = Annotated[int, typer.Option("--verbose", "-v", count=True,
                                            help="Log progress (-v) or details (-vv) on stderr.")]


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose > 1:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _fail(error: TokenomyError) -> typer.Exit:
    errors.print(str(error), markup=False, highlight=False)
    return typer.Exit(EXIT_INVALID if isinstance(error, InstanceError) else EXIT_NO_SOLUTION)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Instance file (.yaml, .yml or .json).")],
    set_: SetOption = None,
) -> None:
    """Check an instance file and print a one-line summary."""
    try:
        instance = load_instance(file, set_ or [])
    except TokenomyError as error:
        raise _fail(error) from None
    console.print(f"{file}: valid ({len(instance.tasks)} tasks, {len(instance.models)} models, "
                  f"{len(instance.pools)} pools, {len(instance.markets)} markets)")


@app.command()
def schema() -> None:
    """Print the JSON Schema of instance files."""
    print(json.dumps(Instance.model_json_schema(), indent=2))


@app.command("solve")
def solve_command(
    file: Annotated[Path, typer.Argument(help="Instance file (.yaml, .yml or .json).")],
    set_: SetOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the full JSON report on stdout.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for report.json and CSV tables.")] = None,
    solver: SolverOption = None,
    time_limit: Annotated[float | None, typer.Option(
        help="Seconds allowed for the solve, across the solver fallback order; with "
        "--backend pyomo or highs, for the MIP solve.")] = None,
    backend: Annotated[str, typer.Option(
        help="cvxpy: the convex program; pyomo: the mixed-integer form in Pyomo with HiGHS; "
        "highs: the mixed-integer form passed to highspy directly.")] = "cvxpy",
    mip_gap: Annotated[float, typer.Option(
        help="Mixed-integer backends: relative gap between incumbent and bound at which to stop.")]
        = 1e-6,
    verbose: VerboseOption = 0,
) -> None:
    """Solve the joint program and print welfare, allocation and prices."""
    _configure_logging(verbose)
    _check_solvers(solver)
    if backend != "cvxpy":
        _solve_mip(file, set_ or [], json_output, out, time_limit, backend, mip_gap)
        return
    try:
        instance = load_instance(file, set_ or [])
        if instance.requests is not None:
            logging.getLogger(__name__).warning(
                "%s: requests.file is read by tokenomy decompose only; solve uses the class volumes",
                file)
        economy = Economy(instance)
        result = solve(economy, solver, time_limit)
    except TokenomyError as error:
        raise _fail(error) from None
    report = build_report(economy, result)
    if out is not None:
        write_outputs(report, out)
    if json_output:
        print(to_json(report))
    else:
        _print_summary(report)
        if out is not None:
            console.print(f"wrote {out}/report.json and CSV tables")
    _exit_for(result)


def _exit_for(result: Result) -> None:
    """Explain a missing or uncertified solution and exit with its code."""
    if result.status is SolutionStatus.NO_SOLUTION:
        _explain_failure(result)
        raise typer.Exit(EXIT_NO_SOLUTION)
    if result.message:
        errors.print(f"warning: {result.message}", markup=False)
    if not result.certified:
        raise typer.Exit(EXIT_UNCERTIFIED)


def _solve_mip(file: Path, overrides: list[str], json_output: bool, out: Path | None,
               time_limit: float | None, backend: str, mip_gap: float) -> None:
    from .mip_cli import OptionError, print_mip_summary, run_mip, write_mip_outputs

    try:
        report, result = run_mip(file, overrides, time_limit, backend, mip_gap)
    except TokenomyError as error:
        raise _fail(error) from None
    except OptionError as error:
        errors.print(f"invalid option: {error}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    if out is not None:
        write_mip_outputs(report, out)
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        print_mip_summary(console, report)
    _exit_for(result)


@app.command("export")
def export_command(
    file: Annotated[Path, typer.Argument(help="Instance file (.yaml, .yml or .json).")],
    out: Annotated[Path, typer.Option("--out", help="File to write the model to.")],
    format_: Annotated[str, typer.Option("--format", help="lp or mps.")] = "lp",
    set_: SetOption = None,
) -> None:
    """Write the mixed-integer form as an LP or MPS file (Pyomo writer)."""
    from .mip_cli import OptionError, export_model

    try:
        export_model(file, set_ or [], format_, out)
    except TokenomyError as error:
        raise _fail(error) from None
    except OptionError as error:
        errors.print(f"invalid option: {error}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    console.print(f"wrote {out}")


@app.command("sweep")
def sweep_command(
    file: Annotated[Path, typer.Argument(help="Instance file.")],
    vary: Annotated[str, typer.Option(help="PATH=START:STOP:STEPS, e.g. tasks.request.value=5:40:8.")],
    set_: SetOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the points as JSON.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the points to this JSON file.")] = None,
    solver: SolverOption = None,
    verbose: VerboseOption = 0,
) -> None:
    """Solve a one-parameter family, re-using the compiled program."""
    _configure_logging(verbose)
    try:
        data = read_document(file)
        path, values = parse_vary(vary)
        overrides = [parse_override(item) for item in set_ or []]
        data = apply_overrides(data, overrides, str(file))
        points = sweep(data, str(file), path, values, solver)
    except TokenomyError as error:
        raise _fail(error) from None
    records = [point.__dict__ for point in points]
    if out is not None:
        write_atomic(out, json.dumps(records, indent=2))
    if json_output:
        print(json.dumps(records, indent=2))
        return
    table = Table(title=f"sweep of {path}")
    table.add_column(path, justify="right")
    table.add_column("status")
    table.add_column("welfare (USD/period)", justify="right")
    table.add_column("main route")
    table.add_column("non-zero prices")
    for point in points:
        main = max(point.routing.items(), key=lambda item: item[1])[0] if point.routing else "-"
        binding = ", ".join(f"{row}={value:.4g}" for row, value in point.prices.items()
                            if value and not row.startswith(("routing", "prefill", "decode")))
        table.add_row(f"{point.value:g}", point.status,
                      "-" if point.welfare is None else f"{point.welfare + 0.0:,.4f}", main, escape(binding or "-"))
    console.print(table)


ViewOption = Annotated[list[str] | None, typer.Option(
    "--view", help="Prices a layer sees, e.g. router=value,compute,latency (repeatable; "
    "overrides the instance's views).")]


@app.command("compare")
def compare_command(
    file: Annotated[Path, typer.Argument(help="Instance file.")],
    set_: SetOption = None,
    view: ViewOption = None,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="Layer policy preset, e.g. frontier-default, cost-min:0.8, token-min:0.9, "
        "throughput-max, hit-rate-max, rollout-max (repeatable).")] = None,
    attribution: Annotated[bool, typer.Option(
        "--attribution", help="Attribute the gap to each hidden price (Shapley; 2^k siloed runs).")] = False,
    threshold: Annotated[list[str] | None, typer.Option(
        "--threshold", help="Failure-mode threshold, e.g. surplus=0.05 (surplus, marginal, "
        "shortfall, utilization; shares).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the full comparison as JSON.")] = False,
    time_limit: Annotated[float | None, typer.Option(
        help="Seconds allowed for the global solve and for each solver of every siloed step.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write compare.json into this directory.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw welfare, gap by layer and attribution to this PNG.")] = None,
    verbose: VerboseOption = 0,
) -> None:
    """Run each layer with only its price view and compare with the global optimum."""
    _configure_logging(verbose)
    try:
        instance = load_instance(file, set_ or [])
        views = resolve_views(instance.views, _parse_views(view or []))
        thresholds = _parse_thresholds(threshold or [])
        policies = dict(parse_policy(item) for item in policy or [])
        report = run_comparison(Economy(instance), views, thresholds, attribution, policies, time_limit)
    except (TokenomyError, ValueError) as error:
        if isinstance(error, TokenomyError):
            raise _fail(error) from None
        errors.print(f"invalid option: {error}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "compare.json", json.dumps(report, indent=2))
    if plot is not None:
        from .plots import plot_comparison

        plot_comparison(report, plot)
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        _print_comparison(report)


@app.command("congestion")
def congestion_command(
    file: Annotated[Path, typer.Argument(help="Instance file with at least one pool delay curve.")],
    set_: SetOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    time_limit: Annotated[float | None, typer.Option(help="Seconds allowed for each of the solves.")] = None,
) -> None:
    """Compare flat per-token pricing (user equilibrium) with congestion pricing (system optimum)."""
    try:
        instance = load_instance(file, set_ or [])
        result = flat_pricing_equilibrium(instance, time_limit)
    except TokenomyError as error:
        raise _fail(error) from None
    if json_output:
        print(json.dumps(result, indent=2))
        return
    console.print(f"delay cost at the system optimum: {result['delay_cost_optimum']:,.6g} USD per period")
    console.print(f"delay cost at the flat-pricing equilibrium: {result['delay_cost_equilibrium']:,.6g} USD per period")
    if result["delay_cost_ratio"] is not None:
        console.print(f"ratio (price of anarchy of flat pricing): {result['delay_cost_ratio']:.4f}")
    table = Table(title="congestion prices at the system optimum")
    for column in ("pool", "phase", "load optimum", "load flat", "util. optimum", "util. flat",
                   "price (USD/token)", "own delay", "toll"):
        table.add_column(column)
    for row in result["pools"]:
        table.add_row(row["pool"], row["phase"], f"{row['load_optimum']:.4g}",
                      f"{row['load_equilibrium']:.4g}", _percent(row["utilization_optimum"]),
                      _percent(row["utilization_equilibrium"]), f"{row['congestion_price']:.4g}",
                      f"{row['own_delay_cost']:.4g}", f"{row['toll']:.4g}")
    console.print("loads are in GPU-equivalents; the utilisation of a pool whose delay does not "
                  "depend on its GPUs is arbitrary")
    console.print(table)


def _check_solvers(names: list[str] | None) -> None:
    import cvxpy as cp

    installed = set(cp.installed_solvers())
    unknown = [name for name in names or [] if name.upper() not in installed]
    if unknown:
        errors.print(f"invalid option --solver {', '.join(unknown)}: not installed; "
                     f"use one of {', '.join(sorted(installed))}", markup=False)
        raise typer.Exit(EXIT_INVALID)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _parse_views(items: list[str]) -> dict[str, list[str]]:
    views = {}
    for item in items:
        layer, separator, keys = item.partition("=")
        if not separator:
            raise ValueError(f"--view {item!r} is not of the form LAYER=PRICE,PRICE")
        views[layer.strip()] = [key.strip() for key in keys.split(",") if key.strip()]
    return views


def _parse_thresholds(items: list[str]) -> Thresholds:
    values = {}
    for item in items:
        name, separator, number = item.partition("=")
        if not separator or name not in Thresholds.__dataclass_fields__:
            raise ValueError(f"--threshold {item!r}: use NAME=SHARE with NAME one of "
                             + ", ".join(Thresholds.__dataclass_fields__))
        values[name] = float(number)
    return Thresholds(**values)


def _print_comparison(report: dict) -> None:
    console.print(f"[bold]{escape(report['instance'] or 'instance')}[/bold]: siloed versus global")
    console.print(f"global welfare: {report['global_welfare']:,.4f} USD per period")
    console.print(f"siloed welfare: {report['siloed_welfare']:,.4f} USD per period")
    console.print(f"gap: {report['gap']:,.4f} USD per period ({report['gap_percent']:.2f}%)")
    console.print(f"gap with budget overruns charged at equilibrium prices: "
                  f"{report['priced_gap']:,.4f} USD per period")

    views = Table(title="price views")
    views.add_column("layer")
    views.add_column("sees")
    for layer, keys in report["views"].items():
        views.add_row(layer, ", ".join(keys))
    console.print(views)

    layers = Table(title="gap by layer (global minus siloed welfare, USD per period)")
    layers.add_column("layer")
    layers.add_column("gap", justify="right")
    for layer, gap in report["gap_by_layer"].items():
        layers.add_row(layer, f"{gap:,.4f}")
    console.print(layers)

    if report["overruns"]:
        overruns = Table(title="budgets the siloed allocation overruns")
        for column in ("market", "budget", "usage", "excess", "unit"):
            overruns.add_column(column)
        for row in report["overruns"]:
            overruns.add_row(escape(row["market"]), f"{row['rhs']:,.4g}", f"{row['usage']:,.4g}",
                             f"{row['excess']:,.4g}", row["unit"])
        console.print(overruns)

    modes = Table(title="failure modes detected")
    modes.add_column("mode")
    modes.add_column("where")
    modes.add_column("numbers")
    for row in report["failure_modes"]:
        where = failure_location(row)
        numbers = ", ".join(f"{key}={value:.4g}" for key, value in row.items()
                            if isinstance(value, float))
        modes.add_row(row["mode"], escape(str(where)), escape(numbers))
    console.print(modes if report["failure_modes"] else "failure modes detected: none")

    attribution = report.get("attribution")
    if attribution:
        shares = Table(title="priced gap attributed to hidden prices (Shapley, USD per period)")
        shares.add_column("price")
        shares.add_column("share", justify="right")
        shares.add_column("revealed alone", justify="right")
        for price in attribution["prices"]:
            shares.add_row(price, f"{attribution['shapley'][price]:,.4f}",
                           f"{attribution['single_reveal'][price]:,.4f}")
        console.print(shares)
        console.print(f"the single price that recovers the most welfare: {attribution['best_single_price']}")

    equilibrium = report.get("serving_equilibrium")
    if equilibrium and equilibrium.get("delay_cost_ratio"):
        console.print(f"queueing cost, flat pricing over congestion pricing: "
                      f"{equilibrium['delay_cost_ratio']:.4f}")


@app.command()
def generate(
    tasks: Annotated[int, typer.Option(help="Number of task classes.")] = 100,
    models: Annotated[int, typer.Option(help="Number of model tiers.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the instance here instead of stdout.")] = None,
) -> None:
    """Write a synthetic instance (YAML) of the given size."""
    try:
        data = generate_instance(tasks, models, seed)
    except ValueError as error:
        errors.print(f"invalid size: {error}", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    text = yaml.safe_dump(data, sort_keys=False)
    if out is None:
        print(text, end="")
    else:
        write_atomic(out, text)
        console.print(f"wrote {out}")


def _explain_failure(result: Result) -> None:
    if result.diagnosis is not None:
        shortfalls = result.diagnosis.get("shortfalls", [])
        if not shortfalls:
            errors.print(result.diagnosis["message"], markup=False)
            return
        errors.print(result.diagnosis.get("headline", "infeasible:"), markup=False)
        for item in shortfalls:
            errors.print(f"  - {item['message']}", markup=False)
        if result.diagnosis.get("hint"):
            errors.print(result.diagnosis["hint"], markup=False)
    elif result.termination is TerminationReason.LIMIT:
        errors.print(f"no solution within the time limit of {result.time_limit:g} s; "
                     "raise --time-limit", markup=False)
    else:
        errors.print(f"no solution: the solver stopped with {result.termination.value} "
                     f"({result.message}); try --solver with another solver", markup=False)


def _print_summary(report: dict) -> None:
    welfare = report["welfare"]
    console.print(f"[bold]{escape(report['instance'] or 'instance')}[/bold]: {report['status']} "
                  f"({report['termination']}, {report['solver']})")
    if welfare is None:
        return
    console.print(f"welfare: {welfare + 0.0:,.4f} USD per period")

    routing = Table(title="routing")
    for column in ("task", "model", "share", "requests/period"):
        routing.add_column(column, justify="right" if column != "task" else "left")
    for row in report["routing"]:
        if row["share"] > 1e-6:
            routing.add_row(row["task"], row["model"], f"{row['share']:.3f}", f"{row['requests']:,.1f}")
    console.print(routing)

    if report["tokens"]:
        tokens = Table(title="tokens per routed request")
        for column in ("task", "model", "use", "amount"):
            tokens.add_column(column)
        for row in report["tokens"]:
            tokens.add_row(row["task"], row["model"], row["use"],
                           f"{row['per_request']:,.1f} {row['unit']}")
        console.print(tokens)

    if report["pools"]:
        pools = Table(title="serving pools")
        for column in ("pool", "GPUs prefill", "GPUs decode", "prefill util.", "decode util."):
            pools.add_column(column, justify="right")
        for row in report["pools"]:
            pools.add_row(row["pool"], f"{row['gpus_prefill']:.2f}", f"{row['gpus_decode']:.2f}",
                          f"{row['prefill_utilization']:.1%}", f"{row['decode_utilization']:.1%}")
        console.print(pools)

    prices = Table(title="prices (d welfare / d right-hand side)")
    for column in ("market", "mode", "price", "unit", "binding", "right-hand side"):
        prices.add_column(column)
    for row in report["prices"]:
        price = "not certified" if row["price"] is None else f"{row['price']:.6g}"
        binding = ""
        if row["binding"] is not None:
            binding = "yes" if row["binding"] else "no"
        prices.add_row(escape(row["market"]), row["mode"], price, row["unit"], binding,
                       escape(row["rhs"] or ""))
    console.print(prices)
    normalized = report["normalized_prices"]
    if "risk" in normalized:
        console.print(f"normalized risk price rho: {normalized['risk']:.6g} {normalized['risk_unit']}")


from .cli_data import register as _register_data_commands  # noqa: E402, I001
from .cli_report import register as _register_report_command  # noqa: E402, I001
from .cli_extensions import register as _register_extensions_command  # noqa: E402, I001
from .cli_decompose import register as _register_decompose_command  # noqa: E402, I001
_register_data_commands(app)
_register_decompose_command(app)
_register_report_command(app)
_register_extensions_command(app)


def main() -> None:
    """Entry point of the ``tokenomy`` console script."""
    try:
        REGISTRY.ensure_loaded()  # extensions' entry points, before any command reads the registry
    except TokenomyError as error:
        errors.print(str(error), markup=False, highlight=False)
        sys.exit(EXIT_INVALID)
    try:
        app()
    except Exception as error:  # a bug, not bad input: report it without a traceback
        if os.environ.get("TOKENOMY_DEBUG"):
            raise
        errors.print(f"internal error in tokenomy: {type(error).__name__}: {error}. "
                     "Rerun with TOKENOMY_DEBUG=1 to see the traceback, and report it.", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
