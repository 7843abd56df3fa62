"""Execution engines that keep chunks of request data resident on workers.

The decomposition solver splits the request block into chunks. An engine
builds one worker object per chunk spec, once, with ``factory(spec)``, and
then calls a method on every worker each iteration. Only the method's
arguments (a price vector) and its results (small aggregates) travel between
the coordinator and the workers.

=========  ==============================================================
engine     where the workers live
=========  ==============================================================
serial     in the calling process; the default for small runs and tests
process    long-lived local worker processes, one pipe each
ray        Ray actors, on a local Ray instance or an existing cluster
mpi        MPI processes (mpi4py), spawned with ``MPI.COMM_SELF.Spawn`` or
           started by ``mpiexec`` through :mod:`.mpi_worker`
=========  ==============================================================

Chunks are assigned round-robin: spec ``i`` lives on worker ``i % workers``.
Outside the serial engine, the factory and specs travel pickled, once, at
start, so every worker holds its own writable copy of its chunks. Results
come back in spec order. An exception raised by a worker is raised in the
coordinator as :class:`WorkerError` with the worker's traceback text.

Example
-------
>>> with make_engine("process", workers=2) as engine:  # doctest: +SKIP
...     engine.start(ChunkWorker, specs)
...     responses = engine.call("respond", prices)
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ...model.errors import TokenomyError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tokenomy[cluster]'"
"""Command that installs the optional packages of the ray and mpi engines."""

WORKER_MODULE = "tokenomy.solvers.decompose.mpi_worker"
"""Module that MPI worker processes run, spawned or under mpiexec."""

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


class EngineError(TokenomyError):
    """An engine cannot start, reach its workers or stop them."""


class EngineUnavailableError(EngineError):
    """An engine needs an optional package that is not installed."""


class WorkerError(EngineError):
    """A worker raised an exception; the message contains its traceback text.

    Attributes
    ----------
    engine:
        Name of the engine.
    spec_index:
        Index of the spec whose worker raised, or ``None`` when the factory
        and specs could not be unpickled on the worker.
    method:
        Method that raised, or ``"start"`` when the factory raised.
    remote_traceback:
        Traceback text formatted in the worker's process.
    """

    def __init__(self, engine: str, spec_index: int | None, method: str, remote_traceback: str):
        self.engine = engine
        self.spec_index = spec_index
        self.method = method
        self.remote_traceback = remote_traceback
        worker = "a worker" if spec_index is None else f"the worker of spec {spec_index}"
        step = "while starting" if method == "start" else f"in {method}()"
        super().__init__(f"{engine} engine: {worker} raised {step}:\n{remote_traceback.rstrip()}")


@runtime_checkable
class Engine(Protocol):
    """Resident workers, one per chunk spec, called together each iteration."""

    name: str

    def start(self, factory: Callable[[Any], Any], specs: Sequence[Any]) -> None:
        """Build ``worker = factory(spec)`` for every spec on the engine's workers.

        ``factory`` must be a picklable top-level callable and every spec
        picklable (for example a dict of numpy arrays).
        """
        ...

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``worker.method(*args, **kwargs)`` on every worker; return results in spec order."""
        ...

    def close(self) -> None:
        """Stop the workers and release their data; calling it again does nothing."""
        ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc_info: object) -> None: ...


# --- worker side ------------------------------------------------------------


class Reply(NamedTuple):
    """Answer of one worker process to one command."""

    ok: bool
    value: Any = None
    spec_index: int | None = None
    traceback: str = ""


def encode(message: Any) -> bytes:
    """Pickle a command or a reply for transport."""
    return pickle.dumps(message, protocol=PICKLE_PROTOCOL)


STOP = encode(("stop",))
"""Command that ends a worker process's serving loop."""


class Host:
    """Worker objects of the specs assigned to one worker process, and the commands they run.

    Commands are pickled tuples: ``("start", sys_path, payload)`` with the
    payload ``pickle((factory, [(spec_index, spec), ...]))``,
    ``("call", method, args, kwargs)``, ``("release",)`` and ``("stop",)``.
    Every command but ``stop`` gets a pickled :class:`Reply`.
    """

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.workers: list[Any] = []

    def run(self, data: bytes) -> bytes | None:
        """Run one pickled command; return the pickled reply, or ``None`` for ``stop``."""
        try:
            message = pickle.loads(data)
        except Exception:
            return encode(Reply(False, traceback=traceback.format_exc()))
        kind = message[0]
        if kind == "stop":
            return None
        if kind == "start":
            reply = self.start(*message[1:])
        elif kind == "call":
            reply = self.call(*message[1:])
        elif kind == "release":
            reply = self.release()
        else:
            reply = Reply(False, traceback=f"unknown engine command {kind!r}")
        try:
            return encode(reply)
        except Exception:
            # A result that cannot be pickled becomes an error of the call.
            index = self.indices[0] if self.indices else None
            return encode(Reply(False, spec_index=index, traceback=traceback.format_exc()))

    def start(self, sys_path: Sequence[str], payload: bytes) -> Reply:
        """Build the worker objects; the reply's value is ``(hostname, pid)``."""
        self.release()
        # The coordinator's import path, so that the factory's module is found.
        for entry in sys_path:
            if entry not in sys.path:
                sys.path.append(entry)
        try:
            factory, indexed_specs = pickle.loads(payload)
        except Exception:
            return Reply(False, traceback=traceback.format_exc())
        for index, spec in indexed_specs:
            try:
                worker = factory(spec)
            except Exception:
                return Reply(False, spec_index=index, traceback=traceback.format_exc())
            self.indices.append(index)
            self.workers.append(worker)
        return Reply(True, (socket.gethostname(), os.getpid()))

    def call(self, method: str, args: tuple, kwargs: dict) -> Reply:
        """Call ``method`` on every worker object in spec order; stop at the first exception."""
        results = []
        for index, worker in zip(self.indices, self.workers, strict=True):
            try:
                results.append(getattr(worker, method)(*args, **kwargs))
            except Exception:
                return Reply(False, spec_index=index, traceback=traceback.format_exc())
        return Reply(True, results)

    def release(self) -> Reply:
        """Drop the worker objects and their data."""
        self.indices = []
        self.workers = []
        return Reply(True)


def serve_pipe(connection: Any) -> None:
    """Serve commands from the coordinator of a process engine until ``stop`` or end of file."""
    # Ctrl-C reaches the whole process group; the coordinator alone decides
    # what to do, and terminates the workers if it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host = Host()
    while True:
        try:
            data = connection.recv_bytes()
        except EOFError:
            return
        reply = host.run(data)
        if reply is None:
            return
        connection.send_bytes(reply)


# --- coordinator side -------------------------------------------------------


def round_robin(spec_count: int, workers: int) -> list[list[int]]:
    """Assign spec indices to workers: spec ``i`` goes to worker ``i % workers``."""
    return [list(range(worker, spec_count, workers)) for worker in range(workers)]


def available_cpus() -> int:
    """Return the number of CPUs this process may run on."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def import_optional(module: str, engine: str, package: str) -> Any:
    """Import an optional dependency of an engine, or raise :class:`EngineUnavailableError`."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise EngineUnavailableError(
            f"the {engine!r} engine needs the {package} package, which cannot be imported "
            f"({error}); install it with: {INSTALL_HINT}"
        ) from error


def check_workers(workers: int | None) -> int | None:
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"invalid workers={workers!r}: expected a positive integer or None")
    return workers


class EngineBase:
    """Context manager support and the started/closed state shared by every engine."""

    name = ""

    def __init__(self) -> None:
        self._state = "new"

    def __enter__(self) -> EngineBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _begin_start(self, specs: Sequence[Any]) -> list[Any]:
        if self._state != "new":
            raise EngineError(f"{self.name} engine: start() was already called; make a new engine")
        specs = list(specs)
        if not specs:
            raise ValueError(f"{self.name} engine: specs is empty; pass at least one chunk spec")
        self._state = "running"
        return specs

    def _require_running(self) -> None:
        if self._state == "new":
            raise EngineError(f"{self.name} engine: call start() before call()")
        if self._state == "closed":
            raise EngineError(f"{self.name} engine: the engine is closed")


class SerialEngine(EngineBase):
    """Worker objects in the calling process.

    Arguments and results are passed by reference, not copied. Exceptions
    are raised as :class:`WorkerError` chained to the original exception.
    """

    name = "serial"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__()
        check_workers(workers)
        self._workers: list[Any] = []

    def start(self, factory: Callable[[Any], Any], specs: Sequence[Any]) -> None:
        specs = self._begin_start(specs)
        for index, spec in enumerate(specs):
            try:
                self._workers.append(factory(spec))
            except Exception as error:
                self.close()
                raise WorkerError(self.name, index, "start", traceback.format_exc()) from error

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        self._require_running()
        results = []
        for index, worker in enumerate(self._workers):
            try:
                results.append(getattr(worker, method)(*args, **kwargs))
            except Exception as error:
                raise WorkerError(self.name, index, method, traceback.format_exc()) from error
        return results

    def close(self) -> None:
        self._workers = []
        self._state = "closed"


class HostedEngine(EngineBase):
    """An engine whose workers run :class:`Host` objects in other processes.

    Subclasses connect the transport: ``_prepare`` (connect to a cluster),
    ``_default_workers``, ``_launch(count)``, ``_send(host, data)``,
    ``_receive(host, step)``, ``_stop`` (orderly) and ``_abort`` (forced).
    A transport failure raises :class:`EngineError` from ``_send`` or
    ``_receive``.
    """

    def __init__(self, workers: int | None) -> None:
        super().__init__()
        self._requested_workers = check_workers(workers)
        self._assignment: list[list[int]] = []
        self._spec_count = 0
        self.locations: list[tuple[str, int]] = []
        """``(hostname, pid)`` of each worker process, in worker order."""

    @property
    def workers(self) -> int:
        """Number of worker processes started."""
        return len(self._assignment)

    def start(self, factory: Callable[[Any], Any], specs: Sequence[Any]) -> None:
        specs = self._begin_start(specs)
        began = time.perf_counter()
        try:
            self._prepare()
            count = min(self._requested_workers or self._default_workers(), len(specs))
            self._assignment = round_robin(len(specs), count)
            self._spec_count = len(specs)
            self._launch(count)
        except BaseException:
            self._state = "closed"
            self._abort()
            raise

        messages = (self._start_message(factory, specs, indices) for indices in self._assignment)
        replies = self._exchange("start", messages)
        failure = self._first_failure(replies, "start")
        if failure is not None:
            self.close()
            raise failure
        self.locations = [reply.value for reply in replies]
        logger.info(
            "%s engine: %d worker process(es) hold %d chunk(s); started in %.2f s",
            self.name, count, len(specs), time.perf_counter() - began,
        )

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        self._require_running()
        try:
            data = encode(("call", method, args, kwargs))
        except Exception as error:
            raise EngineError(f"{self.name} engine: the arguments of {method}() cannot be pickled: {error}") from error
        replies = self._exchange(f"{method}()", itertools.repeat(data, self.workers))
        failure = self._first_failure(replies, method)
        if failure is not None:
            raise failure
        results: list[Any] = [None] * self._spec_count
        for indices, reply in zip(self._assignment, replies, strict=True):
            for index, result in zip(indices, reply.value, strict=True):
                results[index] = result
        return results

    def close(self) -> None:
        if self._state == "closed":
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closed"
        try:
            self._stop()
        except BaseException:
            self._abort()
            raise
        logger.debug("%s engine: closed", self.name)

    def _start_message(self, factory: Callable[[Any], Any], specs: list[Any], indices: list[int]) -> bytes:
        try:
            payload = encode((factory, [(index, specs[index]) for index in indices]))
        except Exception as error:
            raise EngineError(
                f"{self.name} engine: the factory or the specs cannot be pickled ({error}); "
                "the factory must be a top-level function or class of an importable module"
            ) from error
        return encode(("start", list(sys.path), payload))

    def _exchange(self, step: str, messages: Iterable[bytes]) -> list[Reply]:
        """Send one command to every worker process, then collect every reply."""
        try:
            sent = 0
            for host, data in enumerate(messages):
                self._send(host, data)
                sent += 1
            return [pickle.loads(self._receive(host, step)) for host in range(sent)]
        except KeyboardInterrupt:
            logger.warning("%s engine: interrupted during %s; stopping the workers", self.name, step)
            self._state = "closed"
            self._abort()
            raise
        except EngineError:
            self._state = "closed"
            self._abort()
            raise

    def _first_failure(self, replies: list[Reply], method: str) -> WorkerError | None:
        failures = [reply for reply in replies if not reply.ok]
        if not failures:
            return None
        first = min(failures, key=lambda reply: -1 if reply.spec_index is None else reply.spec_index)
        return WorkerError(self.name, first.spec_index, method, first.traceback)

    # Transport hooks.
    def _prepare(self) -> None:
        pass

    def _default_workers(self) -> int:
        return available_cpus()

    def _launch(self, count: int) -> None:
        raise NotImplementedError

    def _send(self, host: int, data: bytes) -> None:
        raise NotImplementedError

    def _receive(self, host: int, step: str) -> bytes:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


class ProcessEngine(HostedEngine):
    """Long-lived local worker processes, each connected to the coordinator by a pipe.

    Parameters
    ----------
    workers:
        Number of worker processes; the number of CPUs this process may use
        when ``None``, and never more than the number of specs.
    start_method:
        ``"forkserver"`` (the default where the platform has it) or
        ``"spawn"`` (a fresh interpreter per worker, the default elsewhere).
        Fork is not offered, because a forked child inherits the
        coordinator's threads and open pipes.
    stop_timeout:
        Seconds ``close()`` waits for workers to exit before terminating them.

    Notes
    -----
    Both start methods import the coordinator's main module in each worker,
    so a script that starts an engine needs an ``if __name__ == "__main__":``
    guard, as with any multiprocessing program.

    A worker imports :mod:`tokenomy.solvers`, which takes about a second.
    With ``"forkserver"`` the fork server imports it once and every later
    worker starts from that copy, so the first engine of a program starts
    in seconds and later ones in a fraction of a second. The fork server
    process lives until the program exits.
    """

    name = "process"
    START_METHODS = ("forkserver", "spawn")

    def __init__(
        self, workers: int | None = None, start_method: str | None = None, stop_timeout: float = 10.0
    ) -> None:
        super().__init__(workers)
        if start_method is None:
            available = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in available else "spawn"
        if start_method not in self.START_METHODS:
            raise ValueError(
                f"invalid start_method={start_method!r} for the process engine: expected one of {', '.join(self.START_METHODS)}"
            )
        self._start_method = start_method
        self._stop_timeout = stop_timeout
        self._processes: list[Any] = []
        self._connections: list[Any] = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the worker processes."""
        return [process.pid for process in self._processes]

    def _launch(self, count: int) -> None:
        context = multiprocessing.get_context(self._start_method)
        if self._start_method == "forkserver":
            # NOTE: this replaces a preload list set elsewhere in the program.
            # It takes effect only if the fork server has not started yet.
            context.set_forkserver_preload(["__main__", __name__])
        for host in range(count):
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=serve_pipe, args=(child_end,), name=f"tokenomy-process-worker-{host}", daemon=True
            )
            process.start()
            # Only the child keeps its end, so the parent's recv sees end of
            # file when the child dies.
            child_end.close()
            self._processes.append(process)
            self._connections.append(parent_end)

    def _send(self, host: int, data: bytes) -> None:
        try:
            self._connections[host].send_bytes(data)
        except OSError as error:
            raise self._lost(host, "a send") from error

    def _receive(self, host: int, step: str) -> bytes:
        try:
            return self._connections[host].recv_bytes()
        except (EOFError, OSError) as error:
            raise self._lost(host, step) from error

    def _lost(self, host: int, step: str) -> EngineError:
        process = self._processes[host]
        process.join(timeout=1.0)
        return EngineError(
            f"process engine: worker process {process.pid} (worker {host}) exited with code "
            f"{process.exitcode} during {step}; the engine is closed"
        )

    def _stop(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.send_bytes(STOP)
        deadline = time.monotonic() + self._stop_timeout
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [process.pid for process in self._processes if process.is_alive()]
        if stuck:
            logger.warning("process engine: workers %s did not exit within %.1f s; terminating them", stuck, self._stop_timeout)
        self._abort()

    def _abort(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self._connections:
            connection.close()
        self._connections = []


class RayEngine(HostedEngine):
    """Ray actors, each holding the chunks assigned to it.

    Parameters
    ----------
    workers:
        Number of actors; the cluster's CPU count when ``None``, and never
        more than the number of specs.
    address:
        Address of an existing Ray cluster, for example ``"10.0.0.5:6379"``,
        ``"ray://head:10001"``, or ``"auto"`` for the cluster named by
        ``RAY_ADDRESS`` or started by ``ray start`` on this machine. With
        ``None``, the engine starts a new local Ray instance, which
        ``close()`` shuts down.
    cpus_per_worker:
        CPUs each actor reserves. Actors that do not fit the cluster wait
        for resources until ``start_timeout``.
    start_timeout:
        Seconds to wait for every actor to build its chunks.
    init_options:
        Further keyword arguments of ``ray.init``, for example
        ``{"runtime_env": {...}}`` so that remote nodes can import the factory.

    Notes
    -----
    If Ray is already initialized in this process, the engine uses that
    session and leaves it running at ``close()``. A local instance started
    here runs with Ray's usage statistics disabled unless the environment
    sets ``RAY_USAGE_STATS_ENABLED``.
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        start_timeout: float = 120.0,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(workers)
        self._ray = import_optional("ray", self.name, "ray")
        self._address = address
        self._cpus_per_worker = cpus_per_worker
        self._start_timeout = start_timeout
        self._init_options = dict(init_options or {})
        self._owns_ray = False
        self._actors: list[Any] = []
        self._pending: dict[int, Any] = {}

    def _prepare(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            if self._address is not None:
                logger.warning("ray engine: Ray is already initialized here; address=%r is ignored", self._address)
            return
        options = {"include_dashboard": False, **self._init_options}
        if self._address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # "local" starts a new instance even where ray.init() would join a
        # cluster found through RAY_ADDRESS or ray start.
        ray.init(address=self._address or "local", **options)
        # ray.shutdown() at close stops a local instance and disconnects
        # from a joined cluster, leaving the cluster running.
        self._owns_ray = True

    def _default_workers(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def _launch(self, count: int) -> None:
        actor_class = self._ray.remote(num_cpus=self._cpus_per_worker)(Host)
        self._actors = [actor_class.remote() for _ in range(count)]

    def _send(self, host: int, data: bytes) -> None:
        self._pending[host] = self._actors[host].run.remote(data)

    def _receive(self, host: int, step: str) -> bytes:
        ray = self._ray
        timeout = self._start_timeout if step == "start" else None
        try:
            return ray.get(self._pending.pop(host), timeout=timeout)
        except ray.exceptions.GetTimeoutError as error:
            resources = ray.cluster_resources().get("CPU", 0)
            raise EngineError(
                f"ray engine: worker {host} did not start within {self._start_timeout:g} s; the cluster has "
                f"{resources:g} CPUs and each of the {self.workers} actors asks for {self._cpus_per_worker:g}. "
                "Lower workers or cpus_per_worker, or raise start_timeout"
            ) from error
        except ray.exceptions.RayError as error:
            raise EngineError(f"ray engine: actor of worker {host} failed during {step}: {error}") from error

    def _stop(self) -> None:
        self._abort()

    def _abort(self) -> None:
        ray = self._ray
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors = []
        self._pending = {}
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()


class MPIEngine(HostedEngine):
    """MPI worker processes, connected through mpi4py.

    Two launch patterns, chosen at ``start()``:

    * spawn (a plain ``python`` process): the engine starts ``workers``
      processes with ``MPI.COMM_SELF.Spawn`` and talks to them over the
      intercommunicator; ``close()`` stops them.
    * mpiexec: ``mpiexec -n K+1 python -m tokenomy.solvers.decompose.mpi_worker
      script.py`` runs the script on rank 0 and makes ranks 1 to K workers.
      The engine uses those ranks, and ``close()`` only releases their
      chunks, so a later engine in the same script can use them again.

    Parameters
    ----------
    workers:
        Number of worker processes. When spawning, the number of CPUs this
        process may use when ``None``. Under mpiexec, the number of worker
        ranks when ``None``, and at most that.
    max_sleep:
        Longest sleep, in seconds, between two polls for a message, in the
        coordinator and in spawned workers (workers under mpiexec take it
        from the launcher's ``--max-sleep``). Waiting processes poll and
        sleep instead of blocking in MPI, because a process blocked in MPICH
        keeps its core busy.
    stop_timeout:
        Seconds to wait for the workers' replies after Ctrl-C cancelled
        their calls.

    Notes
    -----
    On Ctrl-C (KeyboardInterrupt) in the coordinator, the engine sends the
    workers on this host ``SIGUSR2``, which raises inside the running method,
    collects their replies and stops them. A worker that dies ends the whole
    MPI job, because MPI processes cannot outlive a failed peer.

    Spawning from a singleton MPICH process needs ``mpiexec`` on ``PATH``.
    The engine adds the directory of ``sys.executable`` for the call when
    it holds ``mpiexec`` (where the ``mpich`` wheel installs it in a
    virtual environment).
    """

    name = "mpi"
    world_communicator: Any = None
    """COMM_WORLD when rank 0 runs a script under :mod:`.mpi_worker`; set by that module."""
    _world_state = "free"
    """``"free"``, ``"in use"`` by an engine, or ``"lost"`` when workers stopped answering."""

    def __init__(self, workers: int | None = None, max_sleep: float = 1e-3, stop_timeout: float = 10.0) -> None:
        super().__init__(workers)
        import_optional("mpi4py", self.name, "mpi4py")
        if not max_sleep >= 0:
            raise ValueError(f"invalid max_sleep={max_sleep!r} for the mpi engine: expected seconds >= 0")
        self._max_sleep = max_sleep
        self._stop_timeout = stop_timeout
        self._outstanding: set[int] = set()
        self._mpi: Any = None
        self._worker_module: Any = None
        self._comm: Any = None
        self._ranks: list[int] = []
        self._spawned = False

    @property
    def mode(self) -> str:
        """``"spawn"`` or ``"mpiexec"`` once started, ``""`` before."""
        if self._comm is None:
            return ""
        return "spawn" if self._spawned else "mpiexec"

    def _prepare(self) -> None:
        try:
            from mpi4py import MPI
        except (ImportError, RuntimeError) as error:
            raise EngineUnavailableError(
                f"the 'mpi' engine cannot load an MPI library ({error}); install one with: {INSTALL_HINT}"
            ) from error
        self._mpi = MPI
        self._worker_module = importlib.import_module(WORKER_MODULE)
        world = MPI.COMM_WORLD
        if self.world_communicator is None and world.Get_size() > 1:
            raise EngineError(
                f"mpi engine: this process is rank {world.Get_rank()} of {world.Get_size()} MPI processes, "
                f"but not started through the worker launcher; run: mpiexec -n K+1 {Path(sys.executable).name} "
                f"-m {WORKER_MODULE} script.py"
            )

    def _default_workers(self) -> int:
        if self.world_communicator is not None:
            return self.world_communicator.Get_size() - 1
        return available_cpus()

    def _launch(self, count: int) -> None:
        if self.world_communicator is not None:
            self._use_world(count)
        else:
            self._spawn(count)

    def _use_world(self, count: int) -> None:
        available = self.world_communicator.Get_size() - 1
        if count > available:
            raise EngineError(
                f"mpi engine: workers={count} but mpiexec started {available} worker rank(s); "
                f"start mpiexec with -n {count + 1} or pass workers<={available}"
            )
        if MPIEngine._world_state == "in use":
            raise EngineError("mpi engine: another mpi engine uses the worker ranks; close it first")
        if MPIEngine._world_state == "lost":
            raise EngineError("mpi engine: the worker ranks stopped answering after a cancelled call; restart the job")
        MPIEngine._world_state = "in use"
        self._comm = self.world_communicator
        self._ranks = list(range(1, count + 1))

    def _spawn(self, count: int) -> None:
        with mpiexec_on_path():
            self._comm = self._mpi.COMM_SELF.Spawn(
                sys.executable,
                args=["-m", WORKER_MODULE, "--max-sleep", repr(self._max_sleep)],
                maxprocs=count,
            )
        self._spawned = True
        self._ranks = list(range(count))
        if self._comm.Get_remote_size() != count:
            raise EngineError(f"mpi engine: asked MPI to spawn {count} workers, got {self._comm.Get_remote_size()}")

    def _send(self, host: int, data: bytes) -> None:
        self._comm.send(data, dest=self._ranks[host], tag=self._worker_module.COMMAND_TAG)
        self._outstanding.add(host)

    def _receive(self, host: int, step: str) -> bytes:
        module = self._worker_module
        data = module.receive(self._comm, self._ranks[host], module.REPLY_TAG, self._max_sleep)
        self._outstanding.discard(host)
        return data

    def _stop(self) -> None:
        if self._comm is None:
            return
        if self._spawned:
            for rank in self._ranks:
                self._comm.send(STOP, dest=rank, tag=self._worker_module.COMMAND_TAG)
            self._comm.Disconnect()
        else:
            try:
                self._exchange("close", itertools.repeat(encode(("release",)), len(self._ranks)))
            finally:
                MPIEngine._world_state = "free"
        self._comm = None

    def _abort(self) -> None:
        """Cancel the calls still running, collect their replies, then stop or release the workers.

        Killing an MPI process would make the process manager end the whole
        job, this process included, so the workers are asked to stop instead.
        """
        if self._comm is None:
            return
        comm, self._comm = self._comm, None
        module = self._worker_module
        try:
            self._cancel(comm)
            if self._spawned:
                for rank in self._ranks:
                    comm.send(STOP, dest=rank, tag=module.COMMAND_TAG)
                comm.Disconnect()
                return
            release = encode(("release",))
            for rank in self._ranks:
                comm.send(release, dest=rank, tag=module.COMMAND_TAG)
            for rank in self._ranks:
                module.receive(comm, rank, module.REPLY_TAG, self._max_sleep, self._stop_timeout)
            MPIEngine._world_state = "free"
        except TimeoutError:
            # NOTE: spawned workers that never answer stay connected, and
            # MPI_Finalize at the exit of this process waits for them.
            logger.error(
                "mpi engine: workers did not answer within %.1f s after their calls were cancelled; "
                "they stay connected until they finish", self._stop_timeout,
            )
            if not self._spawned:
                MPIEngine._world_state = "lost"

    def _cancel(self, comm: Any) -> None:
        """Signal the workers on this host whose replies are outstanding, then collect the replies."""
        module = self._worker_module
        pending = sorted(self._outstanding)
        hostname = socket.gethostname()
        for host in pending:
            if host < len(self.locations) and self.locations[host][0] == hostname:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.locations[host][1], module.CANCEL_SIGNAL)
        deadline = time.monotonic() + self._stop_timeout
        for host in pending:
            remaining = max(0.0, deadline - time.monotonic())
            module.receive(comm, self._ranks[host], module.REPLY_TAG, self._max_sleep, remaining)
            self._outstanding.discard(host)


@contextlib.contextmanager
def mpiexec_on_path() -> Iterator[None]:
    """Make ``mpiexec`` findable on ``PATH`` while MPI spawns processes."""
    if shutil.which("mpiexec") is not None:
        yield
        return
    beside_python = Path(sys.executable).parent
    if not (beside_python / "mpiexec").exists():
        raise EngineError(
            "mpi engine: spawning workers needs mpiexec, which is neither on PATH nor next to "
            f"{sys.executable}; install an MPI with: {INSTALL_HINT}, or add the bin directory of your MPI to PATH"
        )
    saved = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(filter(None, [str(beside_python), saved]))
    logger.debug("mpi engine: added %s to PATH to spawn workers", beside_python)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


ENGINES: dict[str, type[EngineBase]] = {
    "serial": SerialEngine,
    "process": ProcessEngine,
    "ray": RayEngine,
    "mpi": MPIEngine,
}
"""Engine classes by name."""


def make_engine(name: str, workers: int | None = None, **options: Any) -> Engine:
    """Create an engine by name.

    Parameters
    ----------
    name:
        ``"serial"``, ``"process"``, ``"ray"`` or ``"mpi"``.
    workers:
        Number of worker processes (ignored by ``serial``); each engine's
        default is in its class docstring.
    **options:
        Keyword arguments of the engine's class, for example ``address`` for
        ``ray`` or ``start_method`` for ``process``.

    Raises
    ------
    ValueError
        For an unknown name or option.
    EngineUnavailableError
        When ``ray`` or ``mpi4py`` cannot be imported; the message gives the
        install command.
    """
    engine_class = ENGINES.get(name)
    if engine_class is None:
        raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)}")
    accepted = [option for option in inspect.signature(engine_class).parameters if option != "workers"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for the {name!r} engine; "
            f"it accepts: {', '.join(accepted) or 'no options'}"
        )
    return engine_class(workers=workers, **options)
