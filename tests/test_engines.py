"""Tests of the decomposition engines: results, resident data, errors and shutdown.

Every engine starts its own local workers: worker processes, a local Ray
instance, or MPI processes spawned from the test process. The ray and mpi
tests are skipped when ``tokenomy[cluster]`` is not installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tokenomy.solvers.decompose.engines import (
    INSTALL_HINT,
    EngineError,
    EngineUnavailableError,
    WorkerError,
    available_cpus,
    make_engine,
)

ENGINE_NAMES = ["serial", "process", "ray", "mpi"]
SPEC_COUNT = 5
COLUMNS = 4

RAY_INIT_OPTIONS = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
"""A small local Ray instance: two CPUs and a 100 MiB object store."""

RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
"""Environment that keeps a test Ray instance on 127.0.0.1 and turns off usage statistics.

Ray otherwise listens on the machine's network address. Ray reads these
variables when it is imported."""

RAY_CPUS_PER_WORKER = 0.25
"""CPUs each test actor reserves, so that the actors of several engines fit the instance."""


class ChunkWorker:
    """Toy worker: a chunk of request rows that returns its usage at given prices."""

    def __init__(self, spec):
        self.index = spec["index"]
        self.chunk = spec["chunk"]
        self.calls = 0

    def respond(self, prices, scale=1.0):
        self.calls += 1
        demand = np.maximum(self.chunk @ prices, 0.0) * scale
        return {"usage": self.chunk.T @ demand, "value": float(demand.sum()), "index": self.index}

    def count(self):
        return self.calls

    def pid(self):
        return os.getpid()

    def environment(self, variable):
        return os.environ.get(variable)

    def scale_chunk(self, factor):
        self.chunk *= factor
        return float(self.chunk.sum())

    def fail(self, message):
        if self.index == 3:
            raise ValueError(message)
        return self.index

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def exit(self, code):
        os._exit(code)

    def unpicklable(self):
        return threading.Lock()


def failing_factory(spec):
    if spec["index"] == 1:
        raise RuntimeError(f"cannot build chunk {spec['index']}")
    return ChunkWorker(spec)


def make_specs(count=SPEC_COUNT, rows=40):
    rng = np.random.default_rng(7)
    return [{"index": index, "chunk": rng.normal(size=(rows, COLUMNS))} for index in range(count)]


def require(name):
    if name == "ray":
        pytest.importorskip("ray", reason=f"ray is not installed ({INSTALL_HINT})")
    if name == "mpi":
        pytest.importorskip("mpi4py", reason=f"mpi4py is not installed ({INSTALL_HINT})")


def make_test_engine(request, name, workers=2, **options):
    """Make an engine of this name with test settings; skip when its package is missing.

    Ray engines join the module's local Ray instance (the ``ray_instance`` fixture).
    """
    require(name)
    if name == "ray":
        request.getfixturevalue("ray_instance")
        options = {"cpus_per_worker": RAY_CPUS_PER_WORKER, **options}
    return make_engine(name, workers=workers, **options)


def make_fresh_engine(request, name, workers=2):
    """Make an engine for one test; process engines fork from one server, which starts faster."""
    options = {"start_method": "forkserver"} if name == "process" else {}
    return make_test_engine(request, name, workers, **options)


def is_running(pid):
    """Return whether a process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state and "dead" not in state


def wait_until_gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    running = [pid for pid in pids if is_running(pid)]
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [pid for pid in running if is_running(pid)]
    return running


def assert_same_responses(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got["index"] == want["index"]
        np.testing.assert_allclose(got["usage"], want["usage"], rtol=1e-12, atol=1e-12)
        assert got["value"] == pytest.approx(want["value"], rel=1e-12, abs=1e-12)


@pytest.fixture(scope="module")
def ray_instance():
    """Start a local Ray instance through a ray engine, which shuts it down at close."""
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in RAY_LOOPBACK.items():
            patch.setenv(variable, value)
        ray = pytest.importorskip("ray", reason=f"ray is not installed ({INSTALL_HINT})")
        assert not ray.is_initialized()
        owner = make_engine("ray", workers=1, cpus_per_worker=RAY_CPUS_PER_WORKER, init_options=RAY_INIT_OPTIONS)
        owner.start(ChunkWorker, make_specs(count=1))
        assert ray.is_initialized()
        yield
        owner.close()
        assert not ray.is_initialized()


@pytest.fixture(scope="module")
def serial_reference():
    engine = make_engine("serial")
    engine.start(ChunkWorker, make_specs())
    yield engine
    engine.close()


@pytest.fixture(scope="module", params=ENGINE_NAMES)
def engine(request):
    engine = make_test_engine(request, request.param)
    engine.start(ChunkWorker, make_specs())
    yield engine
    engine.close()


# --- every engine -----------------------------------------------------------


def test_results_match_serial(engine, serial_reference):
    rng = np.random.default_rng(1)
    for _ in range(3):
        prices = rng.normal(size=COLUMNS)
        expected = serial_reference.call("respond", prices, scale=2.0)
        actual = engine.call("respond", prices, scale=2.0)
        assert_same_responses(actual, expected)


def test_results_in_spec_order(engine):
    responses = engine.call("respond", np.ones(COLUMNS))
    assert [response["index"] for response in responses] == list(range(SPEC_COUNT))


def test_data_stays_resident(engine):
    before = engine.call("count")
    engine.call("respond", np.ones(COLUMNS))
    engine.call("respond", np.ones(COLUMNS))
    after = engine.call("count")
    assert after == [calls + 2 for calls in before]

    # An in-place change of a chunk persists to the next call.
    first = engine.call("scale_chunk", 2.0)
    second = engine.call("scale_chunk", 0.5)
    assert second == pytest.approx([total / 2.0 for total in first], rel=1e-12)


def test_workers_run_elsewhere(engine):
    pids = engine.call("pid")
    if engine.name == "serial":
        assert set(pids) == {os.getpid()}
        return
    assert os.getpid() not in pids
    # Round-robin over two workers: specs 0, 2, 4 share a process, and 1, 3 the other.
    assert len(set(pids)) == 2
    assert pids[0] == pids[2] == pids[4]
    assert pids[1] == pids[3]


def test_worker_error_propagates(engine):
    with pytest.raises(WorkerError, match="boom") as caught:
        engine.call("fail", "boom")
    assert caught.value.spec_index == 3
    assert caught.value.method == "fail"
    assert "ValueError" in str(caught.value)
    assert "Traceback" in caught.value.remote_traceback
    # The engine stays usable after a worker's exception.
    assert len(engine.call("count")) == SPEC_COUNT


def test_missing_method_propagates(engine):
    with pytest.raises(WorkerError, match="AttributeError"):
        engine.call("no_such_method")


@pytest.mark.parametrize("engine", ["process", "mpi"], indirect=True)
def test_blas_threads_limited(engine):
    variable = "OPENBLAS_NUM_THREADS"
    # Two workers share the CPUs, unless this environment sets the variable itself.
    expected = os.environ.get(variable, str(max(1, available_cpus() // 2)))
    assert engine.call("environment", variable) == [expected] * SPEC_COUNT


def test_unpicklable_result(engine):
    if engine.name == "serial":
        # The serial engine passes results by reference, without pickling.
        assert {type(result) for result in engine.call("unpicklable")} == {type(threading.Lock())}
        return
    with pytest.raises(WorkerError, match="pickle") as caught:
        engine.call("unpicklable")
    # Every result fails, and the error names the lowest spec index.
    assert caught.value.spec_index == 0
    assert len(engine.call("count")) == SPEC_COUNT


# --- engines started for one test -------------------------------------------
# These engines start one or two workers, because every worker process
# imports tokenomy.solvers, which takes seconds.


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_start_error_propagates(request, name):
    engine = make_fresh_engine(request, name, workers=1)
    with pytest.raises(WorkerError, match="cannot build chunk 1") as caught:
        engine.start(failing_factory, make_specs())
    assert caught.value.spec_index == 1
    assert caught.value.method == "start"
    with pytest.raises(EngineError, match="closed"):
        engine.call("count")


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_close_leaves_no_processes(request, name):
    with make_fresh_engine(request, name) as engine:
        with pytest.raises(EngineError, match="call start"):
            engine.call("count")
        engine.start(ChunkWorker, make_specs(count=2))
        pids = set(engine.call("pid")) - {os.getpid()}
        assert engine.call("count") == [0, 0]
    assert wait_until_gone(pids) == []
    engine.close()  # a second close does nothing
    with pytest.raises(EngineError, match="closed"):
        engine.call("count")
    with pytest.raises(EngineError, match="already"):
        engine.start(ChunkWorker, make_specs(count=2))


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_empty_specs_rejected(request, name):
    engine = make_fresh_engine(request, name)
    with pytest.raises(ValueError, match="specs is empty"):
        engine.start(ChunkWorker, [])
    engine.close()


@pytest.mark.parametrize("name", ["process", "ray"])
def test_dead_worker_closes_engine(request, name):
    engine = make_fresh_engine(request, name, workers=1)
    engine.start(ChunkWorker, make_specs(count=2))
    pids = engine.call("pid")
    with pytest.raises(EngineError, match="worker"):
        engine.call("exit", 3)
    with pytest.raises(EngineError, match="closed"):
        engine.call("count")
    assert wait_until_gone(pids) == []


@pytest.mark.parametrize("name", ["process", "mpi"])
def test_interrupt_stops_workers(request, name):
    engine = make_fresh_engine(request, name, workers=1)
    engine.start(ChunkWorker, make_specs(count=2))
    pids = engine.call("pid")
    timer = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGINT))
    began = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.call("sleep", 30.0)
    finally:
        timer.cancel()
    assert time.monotonic() - began < 10.0
    assert wait_until_gone(pids) == []
    with pytest.raises(EngineError, match="closed"):
        engine.call("count")


def test_process_engine_with_forkserver(request, serial_reference):
    with make_fresh_engine(request, "process", workers=1) as engine:
        engine.start(ChunkWorker, make_specs())
        pids = engine.call("pid")
        prices = np.linspace(-1.0, 1.0, COLUMNS)
        assert_same_responses(engine.call("respond", prices), serial_reference.call("respond", prices))
    assert wait_until_gone(pids) == []


def test_process_engine_rejects_fork():
    with pytest.raises(ValueError, match="start_method"):
        make_engine("process", start_method="fork")


# --- engine selection -------------------------------------------------------


def test_unknown_engine_name():
    with pytest.raises(ValueError, match="unknown engine 'dask'.*serial, process, ray, mpi"):
        make_engine("dask")


def test_unknown_engine_option():
    with pytest.raises(ValueError, match="unknown option.*adress"):
        make_engine("serial", adress="auto")


def test_invalid_worker_count():
    with pytest.raises(ValueError, match="workers=0"):
        make_engine("process", workers=0)


@pytest.mark.parametrize(("name", "module"), [("ray", "ray"), ("mpi", "mpi4py")])
def test_missing_package_names_fix(name, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(EngineUnavailableError) as caught:
        make_engine(name)
    message = str(caught.value)
    assert f"'{name}' engine" in message
    assert "pip install 'tokenomy[cluster]'" in message


# --- MPI under mpiexec and Ray clusters started outside the engine ----------

COORDINATOR_SCRIPT = """
import json
import sys

import numpy as np

sys.path.insert(0, {tests!r})
from test_engines import ChunkWorker, make_specs

from tokenomy.solvers.decompose.engines import make_engine

with make_engine("mpi") as engine:
    engine.start(ChunkWorker, make_specs())
    engine.call("respond", np.ones(4))
    responses = engine.call("respond", np.ones(4))
    report = {{"mode": engine.mode, "workers": engine.workers, "counts": engine.call("count")}}
# The worker ranks are reused by a second engine.
with make_engine("mpi", workers=1) as engine:
    engine.start(ChunkWorker, make_specs(count=2))
    report["second"] = engine.call("count")
print(json.dumps(report))
"""


def test_mpi_engine_under_mpiexec(tmp_path):
    require("mpi")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR_SCRIPT.format(tests=str(Path(__file__).parent)))
    command = [str(mpiexec), "-n", "3", sys.executable, "-m", "tokenomy.solvers.decompose.mpi_worker", str(script)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    report = finished.stdout.strip().splitlines()[-1]
    assert report == '{"mode": "mpiexec", "workers": 2, "counts": [2, 2, 2, 2, 2], "second": [0, 0]}'


JOIN_SCRIPT = """
import sys

sys.path.insert(0, {tests!r})
from test_engines import ChunkWorker, make_specs

from tokenomy.solvers.decompose.engines import make_engine

with make_engine("ray", workers=2, address={address!r}) as engine:
    engine.start(ChunkWorker, make_specs())
    print(engine.call("count"))
"""


@pytest.mark.slow
def test_ray_engine_joins_cluster(tmp_path, request):
    require("ray")
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("starts and stops a separate Ray cluster (about 20 s); select with -m slow")
    ray_command = Path(sys.executable).parent / "ray"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Token authentication is off for this cluster, which listens on
    # 127.0.0.1 (RAY_LOOPBACK) and stops at the end of the test.
    environment = {**os.environ, **RAY_LOOPBACK, "RAY_AUTH_MODE": "disabled"}
    start = [str(ray_command), "start", "--head", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, env=environment, capture_output=True, timeout=120, check=True)
    try:
        script = tmp_path / "join.py"
        address = f"127.0.0.1:{port}"
        script.write_text(JOIN_SCRIPT.format(tests=str(Path(__file__).parent), address=address))
        finished = subprocess.run([sys.executable, str(script)], env=environment, capture_output=True,
                                  text=True, timeout=120, check=False)
    finally:
        subprocess.run([str(ray_command), "stop", "--force"], env=environment, capture_output=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0, 0]"
