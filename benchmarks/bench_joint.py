"""Benchmark the joint conic solve on synthetic instances of growing size.

Run on demand, not by the test suite:

    python benchmarks/bench_joint.py --sizes 100 1000 10000 --models 5 --seed 0

For each number of tasks N the script generates an instance with
``generate_instance``, validates it, builds the ``Economy``, solves it with
``tokenomy.solvers.joint.solve``, then changes one task's value and solves
again through ``Economy.update``, which reuses the compiled DPP problem when
the structure is unchanged.

Each size runs in its own child process, one after another. Peak memory is
therefore per size, and a size that runs out of memory or time is recorded
as a result instead of ending the run. The child writes its partial record
after every step, so a killed size still shows how far it got. Results are
written as JSON (to a temporary file, then renamed) after every size.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tokenomy.model.economy import Economy
from tokenomy.model.generate import generate_instance
from tokenomy.model.loader import validate
from tokenomy.solvers.joint import solve

logger = logging.getLogger("bench_joint")

DEFAULT_SIZES = (100, 1000, 10000)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "joint.json"
DEFAULT_TIMEOUT_SECONDS = 900.0
DEFAULT_MEMORY_SHARE = 0.8
"""Share of physical memory that one size may address when --memory-limit is not given."""

VALUE_FACTOR = 1.1
"""The re-solve multiplies the first task's value (USD per success) by this factor."""

POLL_SECONDS = 0.1
STDERR_TAIL_LINES = 20
EXIT_OUT_OF_MEMORY = 3
GIB = 1024**3
PACKAGES = ("tokenomy", "cvxpy", "clarabel", "scs", "ecos", "numpy", "scipy")


# -- command line -----------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or greater, got {text}")
    return value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time build, compile and solve of the joint conic program per number of tasks.")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(DEFAULT_SIZES),
                        help="Numbers of tasks to benchmark, run one after another "
                             f"(default: {' '.join(map(str, DEFAULT_SIZES))}).")
    parser.add_argument("--models", type=positive_int, default=5,
                        help="Number of model tiers in each instance (default: 5).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the instance generator (default: 0).")
    parser.add_argument("--solver", action="append", default=None, metavar="NAME",
                        help="CVXPY solver to try, in order (repeatable); default: the fallback "
                             "order of tokenomy.solvers.joint.solve.")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS,
                        help="Wall-clock limit in seconds for each size, from instance generation "
                             f"to the end of the re-solve (default: {DEFAULT_TIMEOUT_SECONDS:g}).")
    parser.add_argument("--memory-limit", type=non_negative_float, default=None, metavar="GIB",
                        help="Address-space limit (RLIMIT_AS) in GiB for each size, so that a size "
                             "that runs out of memory fails with MemoryError instead of invoking "
                             f"the kernel OOM killer; default: {DEFAULT_MEMORY_SHARE:.0%} of physical "
                             "memory; 0 for no limit.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON file for the results (default: benchmarks/results/joint.json).")
    parser.add_argument("--worker-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-memory-bytes", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- shared helpers ---------------------------------------------------------


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to a temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def max_rss_mib(usage: resource.struct_rusage) -> float:
    """Return ``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    divisor = 1024**2 if sys.platform == "darwin" else 1024
    return round(usage.ru_maxrss / divisor, 1)


# -- child process: one size ------------------------------------------------


def run_worker(arguments: argparse.Namespace) -> int:
    """Measure one size and write the record to ``--worker-output`` after every step."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    output: Path = arguments.worker_output
    record: dict[str, Any] = {"stage": "started"}

    def checkpoint(stage: str) -> None:
        record["stage"] = stage
        record["worker_peak_rss_mib"] = max_rss_mib(resource.getrusage(resource.RUSAGE_SELF))
        write_json_atomic(output, record)

    if arguments.worker_memory_bytes > 0:
        limit = arguments.worker_memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    checkpoint("started")
    try:
        measure_size(arguments.worker_size, arguments.models, arguments.seed, arguments.solver,
                     record, checkpoint)
    except MemoryError as error:
        record["error"] = f"MemoryError: {error}" if str(error) else "MemoryError"
        checkpoint(record["stage"])
        logger.error("tasks=%d ran out of memory after stage %r", arguments.worker_size,
                     record["stage"])
        traceback.print_exc(file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except Exception as error:  # every failure of a size is a benchmark result
        record["error"] = f"{type(error).__name__}: {error}"
        checkpoint(record["stage"])
        traceback.print_exc(file=sys.stderr)
        return 1
    return 0


def measure_size(
    size: int, models: int, seed: int, solvers: list[str] | None,
    record: dict[str, Any], checkpoint: Callable[[str], None],
) -> None:
    """Generate, validate, build, solve and re-solve one instance, filling ``record``."""
    source = f"generate_instance(tasks={size}, models={models}, seed={seed})"
    started = time.perf_counter()
    data = generate_instance(tasks=size, models=models, seed=seed)
    record["generate_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    instance = validate(data, source)
    record["validate_seconds"] = time.perf_counter() - started
    checkpoint("validated")

    started = time.perf_counter()
    economy = Economy(instance)
    record["build_seconds"] = time.perf_counter() - started
    record["options"] = economy.data.option_count
    record["variables"] = sum(v.size for v in economy.problem.variables())
    record["parameter_entries"] = sum(p.size for p in economy.problem.parameters())
    checkpoint("built")

    record["first_solve"] = timed_solve(economy, solvers)
    checkpoint("solved")

    changed = copy.deepcopy(data)
    task = next(iter(changed["tasks"]))
    changed["tasks"][task]["value"] *= VALUE_FACTOR
    new_instance = validate(changed, source)
    started = time.perf_counter()
    reused = economy.update(new_instance)
    update_seconds = time.perf_counter() - started
    record["resolve"] = {
        "changed_field": f"tasks.{task}.value",
        "factor": VALUE_FACTOR,
        "compiled_problem_reused": reused,
        "update_seconds": update_seconds,
        **timed_solve(economy, solvers),
    }
    checkpoint("resolved")


def timed_solve(economy: Economy, solvers: list[str] | None) -> dict[str, Any]:
    """Solve ``economy`` and return the library's timings next to the measured wall clock."""
    started = time.perf_counter()
    result = solve(economy, solvers)
    wall = time.perf_counter() - started
    return {
        "compile_seconds": result.timings.compile,
        "solve_seconds": result.timings.solve,
        "wall_seconds": wall,
        "status": result.status.value,
        "termination": result.termination.value,
        "solver": result.solver,
        "welfare": result.welfare,
        "attempts": result.attempts,
    }


# -- parent process: run the sizes ------------------------------------------


def run_size(size: int, arguments: argparse.Namespace, memory_bytes: int) -> dict[str, Any]:
    """Run one size in a child process under the wall-clock limit and return its record."""
    with tempfile.TemporaryDirectory(prefix="bench_joint.") as directory:
        output = Path(directory) / "record.json"
        command = [
            sys.executable, str(Path(__file__).resolve()),
            "--worker-size", str(size), "--worker-output", str(output),
            "--worker-memory-bytes", str(memory_bytes),
            "--models", str(arguments.models), "--seed", str(arguments.seed),
        ]
        for name in arguments.solver or []:
            command += ["--solver", name]

        load_before = os.getloadavg()
        with open(Path(directory) / "stderr.txt", "w+", encoding="utf-8") as stderr:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                       start_new_session=True)
            status, usage, timed_out = wait_with_limit(process, arguments.timeout)
            wall = time.perf_counter() - started
            stderr.seek(0)
            stderr_tail = stderr.read().splitlines()[-STDERR_TAIL_LINES:]

        partial = json.loads(output.read_text(encoding="utf-8")) if output.exists() else {}

    record = summarize(size, partial, status, timed_out, arguments.timeout)
    record.update({
        "child_wall_seconds": wall,
        "peak_rss_mib": max_rss_mib(usage),
        "cpu_user_seconds": usage.ru_utime,
        "cpu_system_seconds": usage.ru_stime,
        "load_average_before": [round(value, 2) for value in load_before],
        "stderr_tail": stderr_tail,
        "worker": partial,
    })
    return record


def wait_with_limit(
    process: subprocess.Popen, timeout: float,
) -> tuple[int, resource.struct_rusage, bool]:
    """Wait for the child and return its wait status, its own resource usage and whether it timed out.

    ``os.wait4`` gives the rusage of this child alone, so the peak RSS is
    right even when the child is killed.
    """
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            logger.warning("size timed out after %g s; killing process group %d", timeout, process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(POLL_SECONDS)
    # The child is reaped; tell Popen so that it does not wait for it again.
    process.returncode = os.waitstatus_to_exitcode(status)
    return status, usage, timed_out


def summarize(
    size: int, partial: dict[str, Any], status: int, timed_out: bool, timeout: float,
) -> dict[str, Any]:
    """Flatten the child's record into the fields of the results table."""
    exit_code = os.waitstatus_to_exitcode(status)
    error = partial.get("error")
    if timed_out:
        outcome = f"timed out after {timeout:g} s"
    elif exit_code == 0:
        outcome = "completed"
    elif exit_code == EXIT_OUT_OF_MEMORY or (error or "").startswith("MemoryError"):
        outcome = "out of memory"
    elif exit_code < 0:
        name = signal.Signals(-exit_code).name
        # NOTE: SIGKILL without a timeout usually means the kernel OOM killer,
        # but this script cannot tell it apart from another sender.
        outcome = f"killed by {name}"
    else:
        outcome = "failed"

    first = partial.get("first_solve") or {}
    resolve = partial.get("resolve") or {}
    build = partial.get("build_seconds")
    compile_seconds = first.get("compile_seconds")
    total = build + first["wall_seconds"] if build is not None and first else None
    record: dict[str, Any] = {
        "tasks": size,
        "outcome": outcome,
        "exit_code": exit_code,
        "last_stage": partial.get("stage"),
        "error": error,
        "options": partial.get("options"),
        "variables": partial.get("variables"),
        "parameter_entries": partial.get("parameter_entries"),
        "build_seconds": build,
        "compile_seconds": compile_seconds,
        "solve_seconds": first.get("solve_seconds"),
        "solve_wall_seconds": first.get("wall_seconds"),
        "total_seconds": total,
        "compile_share": compile_seconds / total if total else None,
        "status": first.get("status"),
        "termination": first.get("termination"),
        "solver": first.get("solver"),
        "welfare": first.get("welfare"),
        "timings_exceed_wall_clock": timings_exceed_wall_clock(first),
    }
    if resolve:
        first_total = total
        resolve_total = resolve["update_seconds"] + resolve["wall_seconds"]
        record["resolve"] = {
            **{key: resolve[key] for key in (
                "changed_field", "factor", "compiled_problem_reused", "update_seconds",
                "compile_seconds", "solve_seconds", "wall_seconds", "status", "solver", "welfare")},
            "total_seconds": resolve_total,
            "ratio_to_first": resolve_total / first_total if first_total else None,
            "same_solver_as_first": resolve["solver"] == first.get("solver"),
            "timings_exceed_wall_clock": timings_exceed_wall_clock(resolve),
        }
    return record


def timings_exceed_wall_clock(solve_record: dict[str, Any]) -> bool | None:
    """Return whether the library's compile plus solve seconds exceed the measured wall clock.

    This happens when a solver rejects the problem before compiling it: the
    library then adds the compile time of the previous attempt again.
    """
    if not solve_record:
        return None
    reported = solve_record["compile_seconds"] + solve_record["solve_seconds"]
    return reported > 1.01 * solve_record["wall_seconds"]


# -- reporting --------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    """Return the hardware and software facts that the numbers depend on."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    machine: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_gib": round(physical_memory_bytes() / GIB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        machine["cpu_model"] = names[0] if names else None
    return machine


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(results: list[dict[str, Any]]) -> None:
    header = (f"{'tasks':>6} {'options':>7} {'variables':>9} {'build s':>8} {'compile s':>9} "
              f"{'solve s':>8} {'total s':>8} {'compile':>7} {'peak MiB':>9} {'re-solve':>8}  "
              f"{'status':<11} {'solver':<14} outcome")
    print(header)
    print("-" * len(header))
    for row in results:
        share = row["compile_share"]
        resolve = row.get("resolve") or {}
        ratio = resolve.get("ratio_to_first")
        flag = "*" if row["timings_exceed_wall_clock"] else ""
        print(f"{row['tasks']:>6} {row['options'] or '-':>7} {row['variables'] or '-':>9} "
              f"{format_seconds(row['build_seconds']):>8} "
              f"{format_seconds(row['compile_seconds']) + flag:>9} "
              f"{format_seconds(row['solve_seconds']):>8} {format_seconds(row['total_seconds']):>8} "
              f"{'-' if share is None else f'{share:.0%}':>7} {row['peak_rss_mib']:>9.0f} "
              f"{'-' if ratio is None else f'{ratio:.2f}':>8}  "
              f"{row['status'] or '-':<11} {row['solver'] or '-':<14} {row['outcome']}")
    print("total s = build + wall clock of solve(); compile share = compile / total; "
          "re-solve = (update + solve) / (build + solve) of the first solve.")
    if any(row["timings_exceed_wall_clock"] for row in results):
        print("* the library's compile + solve seconds exceed the measured wall clock of solve().")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.worker_size is not None:
        return run_worker(arguments)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    if arguments.memory_limit is None:
        memory_bytes = int(DEFAULT_MEMORY_SHARE * physical_memory_bytes())
    else:
        memory_bytes = int(arguments.memory_limit * GIB)
    document: dict[str, Any] = {
        "benchmark": "joint conic solve",
        "command": [Path(sys.executable).name, *sys.argv],
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "settings": {
            "sizes": arguments.sizes, "models": arguments.models, "seed": arguments.seed,
            "solvers": arguments.solver, "timeout_seconds": arguments.timeout,
            "memory_limit_gib": round(memory_bytes / GIB, 2) if memory_bytes else None,
        },
        "results": [],
    }
    for size in arguments.sizes:
        logger.info("tasks=%d: running (limit %g s, %s)", size, arguments.timeout,
                    f"{memory_bytes / GIB:.1f} GiB" if memory_bytes else "no memory limit")
        record = run_size(size, arguments, memory_bytes)
        logger.info("tasks=%d: %s in %.1f s, peak %.0f MiB", size, record["outcome"],
                    record["child_wall_seconds"], record["peak_rss_mib"])
        document["results"].append(record)
        write_json_atomic(arguments.out, document)
    document["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(arguments.out, document)
    print_table(document["results"])
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
