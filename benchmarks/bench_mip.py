"""Benchmark the mixed-integer form: Pyomo, the direct highspy path and raw highspy, side by side.

Run on demand, not by the test suite:

    python benchmarks/bench_mip.py --requests 1000 10000 100000 --repeats 3 --time-limit 120

Each size N is a number of requests per period. A child process per size
generates an instance with ``generate_instance`` (N / 70 task classes, the
generator's mean volume being about 70), scales the task volumes to whole
requests that add up to N, builds the form once, and then measures, one
after another in that process:

* ``raw``: the floor. The same matrix, bounds, costs and integrality, stacked
  before the clock starts, go to highspy through ``passModel``. Then the MIP
  is run, every integer column is fixed at its rounded value, integrality is
  dropped and the LP is run. No tokenomy code runs inside the clock.
* ``direct``: ``solve_highs(form)``: stacking, ``passModel``, the MIP, the
  fixed-integer LP with its margins, prices, welfare parts and the autonomy
  schedule. ``report`` is ``mip_report`` afterwards (tables for ``--out``).
* ``pyomo``: ``solve_mip(form)``: the Pyomo model build, the MIP and the
  fixed-integer LP through Pyomo's APPSI interface to HiGHS, and the same
  post-processing.

Raw and direct alternate ``--repeats`` times and the median run is kept,
because the MIP time of the same model varies from run to run on a shared
machine.

``form`` (``build_form``) is shared by both tokenomy paths and timed once.
Each MIP solve has ``--time-limit`` seconds, and a solve that reaches it is
recorded with its status. A child that exceeds ``--timeout`` is killed and
the size is recorded as not finished. Results go to ``--out`` as JSON, with
the ratios of each path's wall clock to the raw floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import scipy.sparse as sp

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mip.json"
MEAN_VOLUME = 70.0
"""About the mean task volume of ``generate_instance`` (requests per task class)."""


def sized_document(requests: int, models: int, seed: int) -> dict:
    """Return a generated instance whose whole task volumes add up to ``requests``."""
    from tokenomy.model.generate import generate_instance

    tasks = max(1, round(requests / MEAN_VOLUME))
    document = generate_instance(tasks, models, seed)
    volumes = np.array([task["volume"] for task in document["tasks"].values()])
    scaled = volumes * requests / volumes.sum()
    whole = np.maximum(1.0, np.floor(scaled))
    # Largest remainders first, until the total is reached (or every task has its share).
    for x in np.argsort(whole - scaled)[: max(0, requests - int(whole.sum()))]:
        whole[x] += 1.0
    for task, volume in zip(document["tasks"].values(), whole, strict=True):
        task["volume"] = float(volume)
    return document


def measure_raw(form, time_limit: float, mip_gap: float) -> dict:
    """Time highspy alone on the form's arrays: passModel, the MIP, then the fixed LP."""
    import highspy

    from tokenomy.solvers.mip_diagnose import new_highs

    blocks = list(form.rows) + list(form.market_rows.values())
    matrix = sp.vstack([block.matrix for block in blocks], format="csc")
    matrix.sort_indices()
    arrays = (form.objective, *form.column_bounds(),
              np.concatenate([block.lower for block in blocks]),
              np.concatenate([block.upper for block in blocks]),
              matrix.indptr.astype(np.int32), matrix.indices.astype(np.int32), matrix.data)
    integer = form.integer_mask()
    columns = np.arange(matrix.shape[1], dtype=np.int32)
    highs = new_highs()
    highs.setOptionValue("mip_rel_gap", mip_gap)
    highs.setOptionValue("time_limit", time_limit)
    started = time.perf_counter()
    highs.passModel(matrix.shape[1], matrix.shape[0], matrix.nnz,
                    int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMaximize), 0.0,
                    *arrays, integer.astype(np.int32))
    passed = time.perf_counter()
    highs.run()
    solved = time.perf_counter()
    record = {"pass_seconds": passed - started, "mip_seconds": solved - passed,
              "status": highs.modelStatusToString(highs.getModelStatus()),
              "nodes": int(highs.getInfo().mip_node_count),
              "simplex_iterations": int(highs.getInfo().simplex_iteration_count)}
    objective = highs.getInfo().objective_function_value
    has_solution = highs.getInfo().primal_solution_status == 2
    record["welfare"] = objective * form.welfare_scale if has_solution else None
    if has_solution:
        values = np.array(highs.getSolution().col_value)
        lower, upper = form.column_bounds()
        lower[integer] = upper[integer] = np.round(values[integer])
        started = time.perf_counter()
        highs.changeColsBounds(len(columns), columns, lower, upper)
        flagged = np.flatnonzero(integer).astype(np.int32)
        highs.changeColsIntegrality(len(flagged), flagged, np.zeros(len(flagged), np.uint8))
        highs.setOptionValue("time_limit", float("inf"))
        highs.run()
        record["lp_seconds"] = time.perf_counter() - started
        record["lp_status"] = highs.modelStatusToString(highs.getModelStatus())
    else:
        record["lp_seconds"] = 0.0
    record["seconds"] = record["pass_seconds"] + record["mip_seconds"] + record["lp_seconds"]
    return record


def measure_path(solver, form, time_limit: float, mip_gap: float) -> dict:
    """Time one tokenomy path and split its wall clock into build, MIP, LP and the rest."""
    from tokenomy.solvers.mip_report import mip_report

    form._stacked = None  # the path pays for stacking the rows, as a fresh form would
    started = time.perf_counter()
    result = solver(form, time_limit=time_limit, mip_gap=mip_gap)
    wall = time.perf_counter() - started
    stages = {attempt["stage"]: attempt for attempt in result.attempts}
    mip = stages.get("MIP", {}).get("seconds", 0.0)
    lp = stages.get("fixed-integer LP", {}).get("seconds", 0.0)
    started = time.perf_counter()
    mip_report(form, result)
    report = time.perf_counter() - started
    return {"seconds": wall, "build_seconds": result.timings.build, "mip_seconds": mip,
            "lp_seconds": lp, "other_seconds": wall - result.timings.build - mip - lp,
            "report_seconds": report, "status": result.status.value,
            "termination": result.termination.value,
            "mip_status": stages.get("MIP", {}).get("status"),
            "nodes": stages.get("MIP", {}).get("nodes"),
            "simplex_iterations": stages.get("MIP", {}).get("simplex_iterations"),
            "welfare": result.welfare, "mip_gap": result.mip_gap}


def _median(runs: list[dict]) -> dict:
    """Return the run with the median wall clock, with every run's seconds attached."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_seconds"] = [run["seconds"] for run in runs]
    return chosen


def measure(requests: int, models: int, seed: int, time_limit: float, mip_gap: float,
            repeats: int) -> dict:
    """Return the timings and outcomes of one size (runs in the child process).

    Raw and direct runs alternate ``repeats`` times and the run with the
    median wall clock is kept. Pyomo runs once.
    """
    from tokenomy.model.loader import validate
    from tokenomy.solvers.mip import solve_mip
    from tokenomy.solvers.mip_form import build_form
    from tokenomy.solvers.mip_highs import solve_highs

    document = sized_document(requests, models, seed)
    instance = validate(document, f"generated-{requests}")
    record: dict = {"requests": int(sum(t["volume"] for t in document["tasks"].values())),
                    "tasks": len(document["tasks"]), "models": models, "seed": seed,
                    "time_limit": time_limit, "mip_gap": mip_gap}
    started = time.perf_counter()
    form = build_form(instance)
    record["form_seconds"] = time.perf_counter() - started
    matrix, _, _ = form.stacked()
    record.update(columns=form.columns, integer_columns=int(form.integer_mask().sum()),
                  rows=matrix.shape[0], nonzeros=int(matrix.nnz))
    raw, direct = [], []
    for _ in range(repeats):
        raw.append(measure_raw(form, time_limit, mip_gap))
        direct.append(measure_path(solve_highs, form, time_limit, mip_gap))
    record["raw"], record["direct"] = _median(raw), _median(direct)
    record["pyomo"] = measure_path(solve_mip, form, time_limit, mip_gap)
    record["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def ratios(record: dict) -> dict:
    """Return each path's wall clock over the raw floor's, in total and outside the solver."""
    raw = record["raw"]
    result = {}
    for path in ("direct", "pyomo"):
        if path not in record:
            continue
        run = record[path]
        result[f"{path}_total"] = run["seconds"] / raw["seconds"]
        result[f"{path}_outside_solver_seconds"] = (
            run["seconds"] - run["mip_seconds"] - run["lp_seconds"])
        result[f"{path}_build_over_raw_pass"] = run["build_seconds"] / raw["pass_seconds"]
    return result


def run_child(requests: int, args: argparse.Namespace) -> dict:
    """Run one size in a child process and return its record, or why it has none."""
    command = [sys.executable, __file__, "--child", str(requests), "--models", str(args.models),
               "--seed", str(args.seed), "--time-limit", str(args.time_limit),
               "--mip-gap", str(args.mip_gap), "--repeats", str(args.repeats)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                                   check=False)
    except subprocess.TimeoutExpired:
        return {"requests": requests, "finished": False, "load_before": load,
                "message": f"not finished within the {args.timeout:g} s limit of the size"}
    wall = time.perf_counter() - started
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        return {"requests": requests, "finished": False, "load_before": load,
                "message": f"child failed with exit code {completed.returncode}",
                "stderr": completed.stderr[-2000:]}
    record = json.loads(lines[-1])
    record.update(finished=True, load_before=load, child_seconds=wall, ratios=ratios(record))
    return record


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, text=True,
                               capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[1000, 10000, 100000],
                        help="Requests per period of each size.")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="Seconds allowed to each MIP solve.")
    parser.add_argument("--mip-gap", type=float, default=1e-6,
                        help="Relative MIP gap at which HiGHS stops.")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Runs of the raw and direct paths per size (the median is kept).")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="Seconds allowed to one size, all paths together.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        record = measure(args.child, args.models, args.seed, args.time_limit, args.mip_gap,
                         args.repeats)
        print(json.dumps(record))  # noqa: T201 - the parent reads this line
        return

    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "cpus": os.cpu_count(), "highspy": metadata.version("highspy"),
               "pyomo": metadata.version("pyomo"), "numpy": metadata.version("numpy"),
               "scipy": metadata.version("scipy"), "commit": _commit()}
    records = []
    for requests in args.requests:
        records.append(run_child(requests, args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "records": records}, indent=2))
        print(json.dumps(records[-1]), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
