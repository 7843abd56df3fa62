"""Benchmark the joint conic solve on synthetic instances of growing size.

Run on demand, not by the test suite:

    python benchmarks/bench_joint.py --sizes 100 1000 10000 --models 5 --seed 0

For each number of tasks N the script generates an instance with
``generate_instance``, validates it, builds the ``Economy`` and solves it with
``tokenomy.solvers.joint.solve``. It then re-solves twice through
``Economy.update``: after changing one task's value, then after also changing
the compute budget. ``update`` reuses the compiled DPP problem when only
CVXPY Parameters changed.

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

import tokenomy.model
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
# NOTE: RLIMIT_AS limits address space, not resident memory. On a machine
# where other processes use memory too, the kernel OOM killer can still end
# a size before the limit is reached. The run then records "killed by SIGKILL".

CHANGE_FACTOR = 1.1
"""Each re-solve multiplies one field of the instance by this factor."""

BUDGET_PATH = ("markets", "compute", "budget")
"""Field changed by the second re-solve: the compute budget (USD per period)."""

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
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(DEFAULT_SIZES), metavar="N",
                        help="Numbers of tasks to benchmark, run one after another "
                             f"(default: {' '.join(map(str, DEFAULT_SIZES))}).")
    parser.add_argument("--models", type=positive_int, default=5,
                        help="Number of model tiers in each instance (default: 5).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the instance generator (default: 0).")
    parser.add_argument("--solver", action="append", default=None, metavar="NAME",
                        help="CVXPY solver to try, in order (repeatable). Default: the fallback "
                             "order of tokenomy.solvers.joint.solve.")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="Wall-clock limit in seconds for each size, from the start of its "
                             "child process to the end of the re-solves "
                             f"(default: {DEFAULT_TIMEOUT_SECONDS:g}).")
    parser.add_argument("--memory-limit", type=non_negative_float, default=None, metavar="GIB",
                        help="Address-space limit (RLIMIT_AS) in GiB for each size, so that a size "
                             "that runs out of memory fails with MemoryError instead of invoking "
                             f"the kernel OOM killer. Default: {DEFAULT_MEMORY_SHARE * 100:.0f}%% of "
                             "physical memory. 0 disables the limit.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="PATH",
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
        os.chmod(temporary, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def describe_code() -> dict[str, Any]:
    """Return where tokenomy was imported from and, for a git checkout, its commit.

    ``modified`` lists the changed or untracked files under model/ and solvers/,
    so that results from a tree with uncommitted changes can be identified.
    """
    root = Path(tokenomy.model.__file__).resolve().parent.parent
    code: dict[str, Any] = {"path": str(root), "pythonpath": os.environ.get("PYTHONPATH"),
                            "commit": None, "modified": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=60)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "model", "solvers"],
                                check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("cannot read the git commit of %s: %s", root, error)
        return code
    code["commit"] = commit.stdout.strip()
    code["modified"] = status.stdout.splitlines()
    return code


def max_rss_mib(usage: resource.struct_rusage) -> float:
    """Return ``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    divisor = 1024**2 if sys.platform == "darwin" else 1024
    return round(usage.ru_maxrss / divisor, 1)


# -- child process: one size ------------------------------------------------


def run_worker(arguments: argparse.Namespace) -> int:
    """Measure one size and write the record to ``--worker-output`` after every step."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output: Path = arguments.worker_output
    record: dict[str, Any] = {"stage": "started"}

    def checkpoint(stage: str) -> None:
        record["stage"] = stage
        record["worker_peak_rss_mib"] = max_rss_mib(resource.getrusage(resource.RUSAGE_SELF))
        write_json_atomic(output, record)

    if arguments.worker_memory_bytes > 0:
        limit = arguments.worker_memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    record["code"] = describe_code()
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
        logger.error("tasks=%d failed after stage %r: %s", arguments.worker_size,
                     record["stage"], record["error"])
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

    # The task value is data of the objective, and the compute budget is a
    # market right-hand side, so the two show both kinds of update. The
    # changes accumulate: the budget re-solve keeps the changed task value.
    task_value = ("tasks", next(iter(data["tasks"])), "value")
    record["resolves"] = {}
    for name, path in (("task_value", task_value), ("compute_budget", BUDGET_PATH)):
        data = scaled_copy(data, path)
        record["resolves"][name] = timed_update(economy, validate(data, source), path, solvers)
        checkpoint(f"re-solved {name}")


def scaled_copy(data: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with the number at ``path`` multiplied by CHANGE_FACTOR."""
    changed = copy.deepcopy(data)
    node = changed
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] *= CHANGE_FACTOR
    return changed


def timed_update(
    economy: Economy, instance: Any, path: Sequence[str], solvers: list[str] | None,
) -> dict[str, Any]:
    """Load ``instance`` with ``Economy.update``, solve again and return the timings."""
    started = time.perf_counter()
    reused = economy.update(instance)
    update_seconds = time.perf_counter() - started
    return {
        "changed_field": ".".join(path),
        "factor": CHANGE_FACTOR,
        "compiled_problem_reused": reused,
        "update_seconds": update_seconds,
        **timed_solve(economy, solvers),
    }


def timed_solve(economy: Economy, solvers: list[str] | None) -> dict[str, Any]:
    """Solve ``economy`` and return the library's timings next to the measured wall clock."""
    started = time.perf_counter()
    result = solve(economy, solvers)
    wall = time.perf_counter() - started
    # Result.checks contains the outcome of the optimality checks that solve()
    # runs after an optimal status. Versions of tokenomy before those checks lack it.
    checks = getattr(result, "checks", None) or {}
    return {
        "compile_seconds": result.timings.compile,
        "solve_seconds": result.timings.solve,
        "wall_seconds": wall,
        "status": result.status.value,
        "termination": result.termination.value,
        "solver": result.solver,
        "welfare": result.welfare,
        "checks_passed": checks.get("passed"),
        "check_violations": checks.get("violations", [])[:3],
        "message": result.message,
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
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() >= deadline:
                timed_out = True
                logger.warning("child %d timed out after %g s and is killed with its process group",
                               process.pid, timeout)
                os.killpg(process.pid, signal.SIGKILL)
                _, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(POLL_SECONDS)
    except BaseException:
        # The child runs in its own session, so it would outlive this process.
        logger.warning("killing child %d and its process group before exiting", process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        os.wait4(process.pid, 0)
        raise
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
    build = partial.get("build_seconds")
    compile_seconds = first.get("compile_seconds")
    total = build + first["wall_seconds"] if build is not None and first else None
    record: dict[str, Any] = {
        "tasks": size,
        "commit": (partial.get("code") or {}).get("commit"),
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
        # Time inside solve() that is neither compile nor solver time: checks,
        # reading prices and building the result. Negative when the library's
        # timings exceed the wall clock.
        "other_seconds": (first["wall_seconds"] - compile_seconds - first["solve_seconds"]
                          if first else None),
        "total_seconds": total,
        "compile_share": compile_seconds / total if total else None,
        "status": first.get("status"),
        "termination": first.get("termination"),
        "solver": first.get("solver"),
        "welfare": first.get("welfare"),
        "checks_passed": first.get("checks_passed"),
        "timings_exceed_wall_clock": timings_exceed_wall_clock(first),
    }
    record["resolves"] = {
        name: summarize_resolve(resolve, first, total)
        for name, resolve in (partial.get("resolves") or {}).items()
    }
    return record


def summarize_resolve(
    resolve: dict[str, Any], first: dict[str, Any], first_total: float | None,
) -> dict[str, Any]:
    """Return the fields of one re-solve and its time relative to the first solve."""
    resolve_total = resolve["update_seconds"] + resolve["wall_seconds"]
    return {
        **{key: resolve[key] for key in (
            "changed_field", "factor", "compiled_problem_reused", "update_seconds",
            "compile_seconds", "solve_seconds", "wall_seconds", "status", "solver", "welfare",
            "checks_passed")},
        "total_seconds": resolve_total,
        "ratio_to_first": resolve_total / first_total if first_total else None,
        "same_solver_as_first": resolve["solver"] == first.get("solver"),
        "timings_exceed_wall_clock": timings_exceed_wall_clock(resolve),
    }


def timings_exceed_wall_clock(solve_record: dict[str, Any]) -> bool | None:
    """Return whether the library's compile plus solve seconds exceed the measured wall clock.

    This happens when a solver raises before compiling or solving, because the
    library then adds the compile and solver time of the previous attempt again.
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


def format_ratio(resolve: dict[str, Any] | None) -> str:
    if not resolve or resolve["ratio_to_first"] is None:
        return "-"
    return f"{resolve['ratio_to_first']:.2f}" + ("" if resolve["compiled_problem_reused"] else "r")


def format_status(row: dict[str, Any]) -> str:
    if row["status"] is None:
        return "-"
    return row["status"] + (", checks failed" if row["checks_passed"] is False else "")


def print_table(results: list[dict[str, Any]]) -> None:
    header = (f"{'tasks':>6} {'options':>7} {'variables':>9} {'build s':>8} {'compile s':>9} "
              f"{'solve s':>8} {'total s':>8} {'compile':>7} {'peak MiB':>9} {'value':>6} "
              f"{'budget':>6}  {'status':<22} {'solver':<15} outcome")
    print(header)
    print("-" * len(header))
    for row in results:
        share = row["compile_share"]
        flag = "*" if row["timings_exceed_wall_clock"] else ""
        print(f"{row['tasks']:>6} {row['options'] or '-':>7} {row['variables'] or '-':>9} "
              f"{format_seconds(row['build_seconds']):>8} "
              f"{format_seconds(row['compile_seconds']) + flag:>9} "
              f"{format_seconds(row['solve_seconds']):>8} {format_seconds(row['total_seconds']):>8} "
              f"{'-' if share is None else f'{share:.0%}':>7} {row['peak_rss_mib']:>9.0f} "
              f"{format_ratio(row['resolves'].get('task_value')):>6} "
              f"{format_ratio(row['resolves'].get('compute_budget')):>6}  "
              f"{format_status(row):<22} {row['solver'] or '-':<15} {row['outcome']}")
    print("total s = build + wall clock of solve(). compile share = compile / total.")
    print("value, budget = (update + solve) / total of the first solve, after multiplying the first "
          f"task's value or the compute budget by {CHANGE_FACTOR:g}; r = the problem was rebuilt.")
    if any(row["timings_exceed_wall_clock"] for row in results):
        print("* the library's compile + solve seconds exceed the measured wall clock of solve().")


def raise_system_exit(signal_number: int, frame: Any) -> None:
    """Turn SIGTERM into SystemExit, so that the running child is killed and temporary files are removed."""
    raise SystemExit(f"stopped by {signal.Signals(signal_number).name}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.worker_size is not None:
        return run_worker(arguments)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, raise_system_exit)
    if arguments.memory_limit is None:
        memory_bytes = int(DEFAULT_MEMORY_SHARE * physical_memory_bytes())
    else:
        memory_bytes = int(arguments.memory_limit * GIB)
    document: dict[str, Any] = {
        "benchmark": "joint conic solve",
        "command": [Path(sys.executable).name, *sys.argv],
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "code": describe_code(),
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
