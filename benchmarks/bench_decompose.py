"""Benchmark the decomposition solvers on per-request instances, side by side in one run.

Instances: 20 task classes x 8 models x 4 token uses from
``tokenomy.model.generate.generate_instance`` (latency SLAs removed, so each
request can also be written as a task of its own), with per-request values
drawn around the class values. For each size the script runs, each in its own
process so peak memory is measured per run:

* ``bundle`` and ``subgradient`` price coordination, serial;
* ``bundle`` on the ``process`` engine with two workers;
* the joint CVXPY + Clarabel program with one task per request, and the same
  problem as a linear program with tangent cuts of the curves solved by
  HiGHS's interior point method, where they finish within the time limit;
* the cost of one dual evaluation (the per-iteration cost) at every size.

Usage::

    python benchmarks/bench_decompose.py                        # 1e4, 1e5, 1e6 requests
    python benchmarks/bench_decompose.py --sizes 10000 --time-limit 120

Results go to ``benchmarks/results/decompose.json``; docs/benchmarks.md
summarises them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "decompose.json"
CLASSES, MODELS, SEED = 20, 8, 0
GAP = 1e-4


def _instance(requests: int):
    from tokenomy.model.generate import generate_instance
    from tokenomy.model.loader import validate
    from tokenomy.solvers.decompose.request_rows import generate_requests

    data = generate_instance(CLASSES, MODELS, SEED)
    for task in data["tasks"].values():
        task.pop("latency_sla", None)
    instance = validate(data, "benchmark")
    instance, request_set = generate_requests(instance, requests, SEED, difficulty_spread=0.0)
    return data, instance, request_set


def _peak_megabytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_decomposition(requests: int, method: str, engine: str, time_limit: float) -> dict:
    from tokenomy.model.economy import Economy
    from tokenomy.solvers.decompose.coordinator import Decomposition

    _, instance, request_set = _instance(requests)
    started = time.perf_counter()
    runner = None
    if engine != "serial":
        from tokenomy.solvers.decompose.engines import make_engine

        runner = make_engine(engine, workers=2)
    # Eight chunks, so two workers share the requests evenly from the smallest size.
    chunk_size = max(1, -(-requests // 8))
    decomposition = Decomposition(Economy(instance), request_set, engine=runner, chunk_size=chunk_size)
    build = time.perf_counter() - started
    try:
        result = decomposition.solve(method, gap=GAP, max_iterations=2000, time_limit=time_limit)
    finally:
        decomposition.close()
    first_gap = next((item.seconds for item in result.iterations
                      if item.gap is not None and item.gap <= GAP), None)
    return {"seconds": time.perf_counter() - started, "build_seconds": build,
            "iterations": len(result.iterations), "termination": str(result.termination),
            "gap": result.gap, "dual_bound": result.dual_bound, "primal_bound": result.primal_bound,
            "seconds_to_target_gap": first_gap,
            "seconds_per_iteration": result.seconds / max(len(result.iterations), 1),
            "peak_megabytes": _peak_megabytes()}


def run_joint(requests: int, time_limit: float) -> dict:
    from tokenomy.model.economy import Economy
    from tokenomy.model.loader import validate
    from tokenomy.solvers.joint import solve

    expanded = _expanded(requests)
    started = time.perf_counter()
    economy = Economy(validate(expanded, "benchmark-expanded"))
    build = time.perf_counter() - started
    result = solve(economy, time_limit=time_limit)
    return {"seconds": time.perf_counter() - started, "build_seconds": build,
            "termination": str(result.termination), "certified": result.certified,
            "welfare": result.welfare, "peak_megabytes": _peak_megabytes()}


def _expanded(requests: int) -> dict:
    """Return the instance with one task per request (the same problem without request rows)."""
    data, instance, request_set = _instance(requests)
    classes = list(instance.tasks)
    class_value = np.array([instance.tasks[name].value for name in classes])
    volume = np.array([instance.tasks[name].volume for name in classes])
    tasks = {}
    for r, (x, weight, value) in enumerate(zip(request_set.task, request_set.weight, request_set.value,
                                               strict=True)):
        original = dict(data["tasks"][classes[x]])
        original.update(volume=float(weight * volume[x]), value=float(value * class_value[x]))
        tasks[f"request-{r}"] = original
    return dict(data, tasks=tasks)


def run_lp(requests: int, time_limit: float) -> dict:
    """Solve the same problem as an LP with tangent cuts of the curves, by HiGHS's interior point."""
    from tokenomy.model.loader import validate
    from tokenomy.solvers.mip_form import Options, build_form
    from tokenomy.solvers.mip_highs import new_highs, pass_form

    started = time.perf_counter()
    form = build_form(validate(_expanded(requests), "benchmark-expanded"), Options(relax=True))
    highs = new_highs()
    highs.setOptionValue("solver", "ipm")
    highs.setOptionValue("time_limit", float(time_limit))
    pass_form(highs, form, None)
    build = time.perf_counter() - started
    highs.run()
    return {"seconds": time.perf_counter() - started, "build_seconds": build,
            "termination": highs.modelStatusToString(highs.getModelStatus()),
            "welfare": highs.getInfo().objective_function_value * form.welfare_scale,
            "peak_megabytes": _peak_megabytes()}


def run_iteration_cost(requests: int) -> dict:
    from tokenomy.model.economy import Economy
    from tokenomy.solvers.decompose.coordinator import Decomposition

    _, instance, request_set = _instance(requests)
    decomposition = Decomposition(Economy(instance), request_set, chunk_size=100_000)
    prices = np.zeros(decomposition.lagrangian.size)
    decomposition.dual(prices)  # warm-up: compiles the CVXPY blocks
    times = []
    for _ in range(3):
        started = time.perf_counter()
        decomposition.dual(prices)
        times.append(time.perf_counter() - started)
    return {"seconds_per_dual": float(np.median(times)), "peak_megabytes": _peak_megabytes()}


def _child(kind: str, requests: int, argument: str, time_limit: float) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(requests), argument, str(time_limit)]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=time_limit + 300)
    except subprocess.TimeoutExpired:
        return {"failed": f"did not finish in {time_limit + 300:.0f} s", "seconds": time.perf_counter() - started}
    if completed.returncode != 0:
        return {"failed": completed.stderr.strip().splitlines()[-1] if completed.stderr else "failed",
                "seconds": time.perf_counter() - started}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--joint-max", type=int, default=10_000,
                        help="largest size at which the joint program and the LP are tried")
    parser.add_argument("--runs", nargs="+",
                        help="run only these (dual-evaluation, bundle:serial, bundle:process, "
                        "subgradient:serial, joint:clarabel, lp:highs-ipm) and merge them into --out")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.child:
        kind, requests, argument, limit = args.child
        requests, limit = int(requests), float(limit)
        if kind == "decompose":
            method, engine = argument.split(":")
            result = run_decomposition(requests, method, engine, limit)
        elif kind == "joint":
            result = run_joint(requests, limit)
        elif kind == "lp":
            result = run_lp(requests, limit)
        else:
            result = run_iteration_cost(requests)
        print(json.dumps(result))
        return

    selected = set(args.runs) if args.runs else None
    records = []

    def measure(size, label, kind, argument):
        if selected is not None and label not in selected:
            return
        record = {"requests": size, "run": label, **_child(kind, size, argument, args.time_limit)}
        print(record, flush=True)
        records.append(record)

    for size in sorted(set(args.sizes) | {max(1000, args.sizes[0] // 10)}):
        measure(size, "dual-evaluation", "cost", "-")
    for size in args.sizes:
        for run in ("bundle:serial", "bundle:process", "subgradient:serial"):
            measure(size, run, "decompose", run)
        if size <= args.joint_max:
            measure(size, "joint:clarabel", "joint", "-")
            measure(size, "lp:highs-ipm", "lp", "-")
    if selected is not None and args.out.exists():
        # Keep the earlier records of the runs not repeated now.
        earlier = json.loads(args.out.read_text())["records"]
        fresh = {(record["requests"], record["run"]) for record in records}
        records = [record for record in earlier
                   if (record["requests"], record["run"]) not in fresh] + records

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": f"{platform.machine()}, {platform.processor() or 'unknown CPU'}, "
                   f"Python {platform.python_version()}",
        "classes": CLASSES, "models": MODELS, "gap": GAP, "time_limit": args.time_limit,
        "records": records}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
