"""Benchmark the per-iteration overhead of the decomposition engines.

Run on demand, not by the test suite:

    python benchmarks/bench_engines.py --chunks 2 4 --rows 250000 --iterations 300

For every chunk count and engine, the script starts the engine with chunks
of ``--rows`` float64 rows and ``--columns`` columns each, then times
``engine.call("respond", prices)`` round trips with a price vector of
``--prices`` floats. Each worker returns a usage vector of the same
length, a value and its call count.

Two kinds of work are timed on the same engine:

* ``trivial``: the answer is computed from the prices alone, so the time is
  the engine's overhead (pickling, transport, waking the workers, gathering).
* ``pass``: one pass over the chunk (``chunk @ weights``, with the first
  ``--columns`` prices as weights), so the time shows when spreading chunks
  over processes pays for the overhead.

Engines with worker processes run with one worker per chunk and, when
there are more chunks than ``--max-workers``, also with that many workers.
Ray runs one local instance for the whole benchmark (started before the
first ray engine, not counted in its start time). MPI spawns its workers
with ``MPI.COMM_SELF.Spawn``. Results are written as JSON and printed as a
table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# Workers import this module by name to unpickle BenchWorker, so the
# benchmark uses the class from the module, not from __main__.
sys.path.insert(0, str(Path(__file__).resolve().parent))

logger = logging.getLogger("bench_engines")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "engines.json"
ENGINE_ORDER = ("serial", "process", "ray", "mpi")
WORK_KINDS = ("trivial", "pass")

RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
"""Keeps the benchmark's Ray instance on 127.0.0.1 and without usage statistics."""


class BenchWorker:
    """A resident chunk of request rows that returns small aggregates for a price vector."""

    def __init__(self, spec: dict[str, Any]) -> None:
        rows, columns, seed = spec["rows"], spec["columns"], spec["seed"]
        # The chunk is built on the worker, so start time does not include
        # pickling it; chunk_bytes in the results gives its size.
        self.chunk = np.random.default_rng(seed).random((rows, columns))
        self.calls = 0

    def respond(self, prices: np.ndarray, work: str) -> tuple[np.ndarray, float, int]:
        self.calls += 1
        if work == "pass":
            demand = self.chunk @ prices[: self.chunk.shape[1]]
            value = float(demand.sum())
        else:
            value = float(prices[0])
        return prices * 0.5, value, self.calls


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=ENGINE_ORDER, default=list(ENGINE_ORDER),
                        help="engines to measure (default: all four)")
    parser.add_argument("--chunks", nargs="+", type=positive_int, default=[2, 4],
                        help="numbers of chunks (default: 2 4)")
    parser.add_argument("--rows", type=positive_int, default=250_000, help="rows per chunk (default: 250000)")
    parser.add_argument("--columns", type=positive_int, default=4, help="float64 columns per chunk (default: 4)")
    parser.add_argument("--prices", type=positive_int, default=100, help="length of the price vector (default: 100)")
    parser.add_argument("--iterations", type=positive_int, default=300,
                        help="timed calls per engine and kind of work (default: 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before timing (default: 20)")
    parser.add_argument("--blas-threads", type=positive_int, default=None,
                        help="BLAS threads per worker of the process and mpi engines "
                             "(default: the engines' own, CPUs divided by workers)")
    parser.add_argument("--max-workers", type=positive_int, default=2,
                        help="also run with this many workers when there are more chunks (default: 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON file for the results (default: benchmarks/results/engines.json)")
    arguments = parser.parse_args(argv)
    if arguments.columns > arguments.prices:
        parser.error("--columns must not exceed --prices, because the first prices weight the columns")
    return arguments


def configurations(arguments: argparse.Namespace) -> list[tuple[int, str, int]]:
    """List (chunks, engine, workers) in the order they run."""
    runs = []
    for chunks in arguments.chunks:
        for name in arguments.engines:
            if name == "serial":
                runs.append((chunks, name, 1))
                continue
            for workers in sorted({chunks, min(chunks, arguments.max_workers)}):
                runs.append((chunks, name, workers))
    return runs


def make_engine_for(name: str, workers: int, blas_threads: int | None) -> Any:
    from tokenomy.solvers.decompose.engines import make_engine

    if name == "ray":
        import ray

        # Actors share the instance's CPUs when there are more workers than CPUs.
        cpus = ray.cluster_resources().get("CPU", 1.0)
        return make_engine("ray", workers=workers, cpus_per_worker=min(1.0, cpus / workers))
    if name == "serial":
        return make_engine("serial")
    return make_engine(name, workers=workers, blas_threads=blas_threads)


def time_calls(engine: Any, prices: np.ndarray, work: str, iterations: int, warmup: int) -> list[float]:
    """Return the wall-clock seconds of each timed call."""
    for _ in range(warmup):
        engine.call("respond", prices, work)
    seconds = []
    for _ in range(iterations):
        began = time.perf_counter()
        engine.call("respond", prices, work)
        seconds.append(time.perf_counter() - began)
    return seconds


def summarize_calls(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    microseconds = 1e6

    def percentile(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * microseconds

    return {
        "median_us": statistics.median(ordered) * microseconds,
        "mean_us": statistics.fmean(ordered) * microseconds,
        "p10_us": percentile(0.10),
        "p90_us": percentile(0.90),
        "min_us": ordered[0] * microseconds,
        "max_us": ordered[-1] * microseconds,
    }


def measure(chunks: int, name: str, workers: int, arguments: argparse.Namespace) -> dict[str, Any]:
    """Start one engine, time both kinds of work, close it, and return the record."""
    from bench_engines import BenchWorker as ImportableWorker

    specs = [{"rows": arguments.rows, "columns": arguments.columns, "seed": index} for index in range(chunks)]
    prices = np.random.default_rng(0).random(arguments.prices)
    record: dict[str, Any] = {
        "engine": name, "chunks": chunks, "workers": workers,
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
    }
    began = time.perf_counter()
    engine = make_engine_for(name, workers, arguments.blas_threads)
    engine.start(ImportableWorker, specs)
    record["start_seconds"] = time.perf_counter() - began
    try:
        record["mode"] = getattr(engine, "mode", "")
        counts_before = [calls for _, _, calls in engine.call("respond", prices, "trivial")]
        for work in WORK_KINDS:
            seconds = time_calls(engine, prices, work, arguments.iterations, arguments.warmup)
            record[work] = summarize_calls(seconds)
        counts_after = [calls for _, _, calls in engine.call("respond", prices, "trivial")]
        # Resident workers count every call; a restarted worker would not.
        expected = 1 + 2 * (arguments.iterations + arguments.warmup)
        record["resident"] = all(after - before == expected for before, after in zip(counts_before, counts_after, strict=True))
    finally:
        closing = time.perf_counter()
        engine.close()
        record["close_seconds"] = time.perf_counter() - closing
    return record


def add_ratios(records: list[dict[str, Any]]) -> None:
    """Add each record's median divided by the serial median for the same chunks."""
    serial = {(record["chunks"]): record for record in records if record["engine"] == "serial"}
    for record in records:
        reference = serial.get(record["chunks"])
        for work in WORK_KINDS:
            if reference is not None and work in record:
                record[work]["ratio_to_serial"] = record[work]["median_us"] / reference[work]["median_us"]


def describe_machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in ("numpy", "ray", "mpi4py", "mpich"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    # BLAS variables change the "pass" timings, and OPENBLAS_CORETYPE the kernel.
    environment = {variable: value for variable, value in os.environ.items()
                   if variable.startswith(("OMP_", "OPENBLAS_", "MKL_"))}
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "blas_environment": environment,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def describe_code() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"commit": commit, "working_tree_modified": dirty}


def start_ray(arguments: argparse.Namespace) -> float | None:
    """Start the benchmark's local Ray instance; return its start seconds, or None without ray."""
    if "ray" not in arguments.engines:
        return None
    for variable, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)
    import ray

    began = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             object_store_memory=200 * 2**20, log_to_driver=False)
    return time.perf_counter() - began


def print_table(records: list[dict[str, Any]]) -> None:
    header = (f"{'engine':<8} {'chunks':>6} {'workers':>7} {'start s':>8} "
              f"{'trivial median us':>18} {'p90 us':>8} {'x serial':>9} "
              f"{'pass median us':>15} {'x serial':>9} {'close s':>8}")
    print(header)
    print("-" * len(header))
    for record in records:
        trivial, passes = record["trivial"], record["pass"]
        print(f"{record['engine']:<8} {record['chunks']:>6} {record['workers']:>7} {record['start_seconds']:>8.2f} "
              f"{trivial['median_us']:>18.1f} {trivial['p90_us']:>8.1f} {trivial.get('ratio_to_serial', float('nan')):>9.1f} "
              f"{passes['median_us']:>15.1f} {passes.get('ratio_to_serial', float('nan')):>9.2f} "
              f"{record['close_seconds']:>8.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ray_init_seconds = start_ray(arguments)

    records = []
    for chunks, name, workers in configurations(arguments):
        record = measure(chunks, name, workers, arguments)
        records.append(record)
        print(f"measured {name} with {chunks} chunks on {workers} worker(s): "
              f"{record['trivial']['median_us']:.1f} us per trivial call", flush=True)
    add_ratios(records)

    if ray_init_seconds is not None:
        import ray

        ray.shutdown()

    document = {
        "benchmark": "bench_engines",
        "command": [Path(sys.executable).name, *sys.argv],
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rows_per_chunk": arguments.rows, "columns": arguments.columns,
            "chunk_bytes": arguments.rows * arguments.columns * 8, "prices": arguments.prices,
            "iterations": arguments.iterations, "warmup": arguments.warmup,
            "blas_threads": arguments.blas_threads,
        },
        "ray_init_seconds": ray_init_seconds,
        "machine": describe_machine(),
        "code": describe_code(),
        "records": records,
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print()
    print_table(records)
    print(f"\nresults written to {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
