"""Command-line glue of the mixed-integer backends: run, export, print.

Only :func:`print_mip_summary` prints, to the console the CLI passes in.
"""

from __future__ import annotations

from pathlib import Path

from pyomo.opt import ProblemFormat
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model.loader import load_instance
from .mip import MipResult, build_pyomo, solve_mip
from .mip_form import build_form
from .mip_report import mip_report
from .report import write_outputs

BACKENDS = ("pyomo", "highs")
EXPORT_FORMATS = ("lp", "mps")


class OptionError(ValueError):
    """A command-line option of the mixed-integer backends is invalid."""


def run_mip(file: Path, overrides: list[str], time_limit: float | None, backend: str,
            mip_gap: float) -> tuple[dict, MipResult]:
    """Load an instance, solve its mixed-integer form and return ``(report, result)``."""
    if backend not in BACKENDS:
        raise OptionError(f"--backend {backend!r} is not known; use cvxpy, " + " or ".join(BACKENDS))
    if mip_gap < 0:
        raise OptionError(f"--mip-gap {mip_gap} is negative; give a relative gap such as 1e-4")
    instance = load_instance(file, overrides)
    form = build_form(instance)
    if backend == "highs":
        from .mip_highs import solve_highs

        result = solve_highs(form, time_limit, mip_gap)
    else:
        result = solve_mip(form, time_limit, mip_gap)
    return mip_report(form, result, backend), result


def write_mip_outputs(report: dict, directory: Path) -> list[Path]:
    """Write ``report.json`` and the convex backend's CSV tables into ``directory``.

    The report of :func:`run_mip` has the tables under the same keys, so this
    reuses the convex backend's writer. Every file goes through a temporary
    file and an atomic rename, and a table the report lacks is written empty.
    """
    return write_outputs(report, directory)


def export_model(file: Path, overrides: list[str], format_: str, out: Path) -> None:
    """Write the Pyomo model of an instance's mixed-integer form as LP or MPS."""
    if format_ not in EXPORT_FORMATS:
        raise OptionError(f"--format {format_!r} is not known; use lp or mps")
    model = build_pyomo(build_form(load_instance(file, overrides)))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = {"lp": ProblemFormat.cpxlp, "mps": ProblemFormat.mps}[format_]
    model.write(str(out), format=writer, io_options={"symbolic_solver_labels": True})


def print_mip_summary(console: Console, report: dict) -> None:
    """Print welfare, gap, discrete decisions, the autonomy schedule and prices."""
    console.print(f"[bold]{escape(report['instance'] or 'instance')}[/bold]: {report['status']} "
                  f"({report['termination']}, {report['solver']}, backend {report['backend']})")
    if report["welfare"] is None:
        return

    gap = report["mip_gap"]
    console.print(f"welfare: {report['welfare']:,.4f} USD per period; MIP gap "
                  f"{'-' if gap is None else f'{gap:.2e}'} (limit {report['mip_gap_limit']:g}); "
                  f"prices from the {report['price_basis']}")
    routing = Table(title="requests per period")
    for column in ("task", "model", "requests"):
        routing.add_column(column)
    for row in report.get("routing", []):
        if row["requests"] > 0.5:
            model = "(deferred)" if row["model"] == "defer" else row["model"]
            routing.add_row(row["task"], model, f"{row['requests']:,.0f}")
    console.print(routing)
    margins = report.get("routing_margins") or {}
    if margins:
        console.print("routing prices are for one more request sent to: " + ", ".join(
            f"{escape(task)} -> {escape(model)}" for task, model in margins.items()))

    if report.get("gpus"):
        gpus = Table(title="GPUs")
        for column in ("pool", "prefill", "decode"):
            gpus.add_column(column)
        for row in report["gpus"]:
            gpus.add_row(row["pool"], f"{row['prefill']:.0f}", f"{row['decode']:.0f}")
        console.print(gpus)
    for name, value in report.get("investments", {}).items():
        console.print(f"{name}: {value}")

    schedule = Table(title="autonomy schedule (USD per period)")
    for column in ("action", "level", "chosen", "expected loss", "review minutes", "oversight cost",
                   "total at prices"):
        schedule.add_column(column)
    for row in report.get("autonomy", []):
        for option in row["levels"]:
            schedule.add_row(row["action"], option["level"],
                             "yes" if option["level"] == row["level"] else "",
                             f"{option['expected_loss']:,.4g}", f"{option['review_minutes']:,.4g}",
                             f"{option['oversight_cost']:,.4g}", f"{option['total']:,.4g}")
    console.print(schedule)

    prices = Table(title=f"prices (d welfare / d right-hand side, {report['price_basis']})")
    for column in ("market", "mode", "price", "unit", "binding"):
        prices.add_column(column)
    for row in report.get("prices", []):
        price = "not certified" if row["price"] is None else f"{row['price']:.6g}"
        binding = ""
        if row["binding"] is not None:
            binding = "yes" if row["binding"] else "no"
        prices.add_row(escape(row["market"]), row["mode"], price, row["unit"], binding)
    console.print(prices)

    approximation = report["approximation"]
    console.print(f"tangent cuts: {approximation['pieces']} per curve; exp(-u) error at most "
                  f"{approximation['exp_error']:.2e}, success overstated by at most "
                  f"{approximation['success_error_usd']:,.4g} USD, risk understated by at most "
                  f"{approximation['risk_error_usd']:,.4g} USD per period")
    effort = approximation.get("effort")
    if effort:
        realised = approximation.get("effort_realised", {})
        console.print(
            f"geometric-mean cuts: {effort['pieces_per_link']} per link; effort overstated by at "
            f"most {effort['relative_error']:.2%} for token mixes within a factor "
            f"{effort['mix_factor']:.3g} of the cheapest mix, success value by at most "
            f"{effort['error_usd']:,.4g} USD per period; at this solution "
            f"{realised.get('max_relative_error', 0.0):.2%}, with "
            f"{realised.get('outside_mix_range', 0)} of {realised.get('options_checked', 0)} "
            "options outside that range")
