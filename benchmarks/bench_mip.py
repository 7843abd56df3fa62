"""Benchmark the mixed-integer form: Pyomo build and solve, the direct highspy path, raw highspy.

Run on demand, not by the test suite:

    python benchmarks/bench_mip.py --sizes 10 100 1000 --models 5 --seed 0 --time-limit 120

For each number of tasks N the script generates an instance with
``generate_instance``, rounds each task's volume to whole requests, and measures, in one process, wall-clock seconds of:

* ``form``: building the sparse arrays (``build_form``), shared by both paths;
* ``pyomo``: ``solve_mip``, split into its Pyomo model build and its two HiGHS
  solves (the MIP and the fixed-integer LP), as ``MipResult.timings`` reports them;
* ``direct``: ``solve_highs`` (one ``passModel`` call, MIP, fixed-integer LP);
* ``raw``: ``passModel`` and ``run`` of the already built ``HighsLp`` MIP alone,
  the floor that any modelling layer adds to.

Results are written as JSON to ``benchmarks/results/mip.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import metadata
from pathlib import Path

import highspy
import numpy as np

from tokenomy.model.generate import generate_instance
from tokenomy.model.loader import validate
from tokenomy.solvers.mip import solve_mip
from tokenomy.solvers.mip_form import build_form
from tokenomy.solvers.mip_highs import highs_model, solve_highs

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mip.json"


def measure(tasks: int, models: int, seed: int, time_limit: float) -> dict:
    """Return the timings and outcomes of one size."""
    document = generate_instance(tasks, models, seed)
    for task in document["tasks"].values():
        task["volume"] = max(1, round(task["volume"]))  # whole requests, so counts are integer
    instance = validate(document, f"generated-{tasks}")
    record: dict = {"tasks": tasks, "models": models, "seed": seed}

    started = time.perf_counter()
    form = build_form(instance)
    record["form_seconds"] = time.perf_counter() - started
    integer = np.concatenate([block.integer for block in form.variables.values()])
    record["columns"] = form.columns
    record["integer_columns"] = int(integer.sum())
    record["rows"] = sum(b.matrix.shape[0] for b in form.rows) + sum(
        b.matrix.shape[0] for b in form.market_rows.values())

    started = time.perf_counter()
    result = solve_mip(form, time_limit=time_limit)
    record["pyomo"] = {"seconds": time.perf_counter() - started,
                       "build_seconds": result.timings.build, "solve_seconds": result.timings.solve,
                       "status": result.status.value, "welfare": result.welfare,
                       "mip_gap": result.mip_gap}

    started = time.perf_counter()
    direct = solve_highs(form, time_limit=time_limit)
    record["direct"] = {"seconds": time.perf_counter() - started,
                        "build_seconds": direct.timings.build,
                        "solve_seconds": direct.timings.solve,
                        "status": direct.status.value, "welfare": direct.welfare,
                        "mip_gap": direct.mip_gap}

    lp = highs_model(form, integer)
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("mip_rel_gap", 1e-6)
    highs.setOptionValue("time_limit", float(time_limit))
    started = time.perf_counter()
    highs.passModel(lp)
    highs.run()
    objective = highs.getInfo().objective_function_value
    record["raw"] = {"seconds": time.perf_counter() - started,
                     "status": highs.modelStatusToString(highs.getModelStatus()),
                     # HiGHS reports an infinite objective when it has no incumbent.
                     "welfare": objective * form.welfare_scale if np.isfinite(objective) else None}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="Seconds allowed to each MIP solve.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    records = []
    for size in args.sizes:
        records.append(measure(size, args.models, args.seed, args.time_limit))
        payload = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                               "highspy": metadata.version("highspy"),
                               "pyomo": metadata.version("pyomo")},
                   "records": records}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
        print(json.dumps(records[-1]))  # noqa: T201


if __name__ == "__main__":
    main()
