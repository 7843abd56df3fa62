"""Worker processes of the mpi engine, and the launcher for runs under mpiexec.

Spawned by :class:`~.engines.MPIEngine` (no arguments), the module serves
the parent process over the intercommunicator until the engine closes.

Under mpiexec, it launches a coordinator script on rank 0 and makes every
other rank a worker::

    mpiexec -n 5 python -m tokenomy.solvers.decompose.mpi_worker script.py [args...]
    mpiexec -n 5 python -m tokenomy.solvers.decompose.mpi_worker -m package.module [args...]

The script runs as ``__main__`` with ``sys.argv = [script.py, args...]``; an
``mpi`` engine it creates uses ranks 1 to 4. The workers stop when the
script ends, also when it raises. An optional first argument
``--max-sleep SECONDS`` sets the longest sleep between two polls of a
waiting worker (default 0.001).
"""

from __future__ import annotations

import runpy
import signal
import sys
import time
import traceback
from typing import Any

from .engines import STOP, Host, MPIEngine, Reply, encode

COMMAND_TAG = 17
"""MPI tag of commands from the coordinator."""

REPLY_TAG = 18
"""MPI tag of replies from the workers."""

SPIN_SECONDS = 1e-3
"""Time a waiting process polls without sleeping, to keep round trips short."""

MAX_SLEEP = 1e-3
"""Default longest sleep, in seconds, between two polls of a waiting process."""

CANCEL_SIGNAL = signal.SIGUSR2
"""Signal with which the coordinator cancels the method a worker is running."""

USAGE = (
    "usage: mpiexec -n K+1 python -m tokenomy.solvers.decompose.mpi_worker [--max-sleep SECONDS] script.py [args...]\n"
    "   or: mpiexec -n K+1 python -m tokenomy.solvers.decompose.mpi_worker [--max-sleep SECONDS] -m module [args...]"
)


class CallCancelled(Exception):
    """Raised inside a worker's method when the coordinator cancels the call."""


def receive(comm: Any, source: int, tag: int, max_sleep: float, timeout: float | None = None) -> Any:
    """Receive one message, polling with sleeps that double up to ``max_sleep`` seconds.

    MPICH's blocking receive keeps a core busy for as long as it waits,
    which starves the workers when the coordinator waits for them on a small
    machine. Polling gives the core back and keeps Ctrl-C responsive.

    Raises
    ------
    TimeoutError
        When ``timeout`` seconds pass without a message.
    """
    now = time.monotonic()
    spin_until = now + SPIN_SECONDS
    deadline = None if timeout is None else now + timeout
    delay = 0.0
    while not comm.Iprobe(source=source, tag=tag):
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise TimeoutError(f"no message from rank {source} within {timeout:g} s")
        if now < spin_until:
            continue
        delay = min(max(2.0 * delay, 2e-5), max_sleep)
        time.sleep(delay)
    return comm.recv(source=source, tag=tag)


def serve(comm: Any, coordinator: int, max_sleep: float = MAX_SLEEP) -> None:
    """Run the coordinator's commands on this process's chunks until ``stop``."""
    host = Host()
    busy = False

    def cancel(signum: int, frame: Any) -> None:
        # Only a running command is cancelled; a signal that arrives while
        # the worker waits or sends is ignored.
        if busy:
            raise CallCancelled("the coordinator cancelled this call")

    signal.signal(CANCEL_SIGNAL, cancel)
    while True:
        data = receive(comm, coordinator, COMMAND_TAG, max_sleep)
        busy = True
        try:
            reply = host.run(data)
        except CallCancelled:
            reply = encode(Reply(False, traceback=traceback.format_exc()))
        finally:
            busy = False
        if reply is None:
            return
        comm.send(reply, dest=coordinator, tag=REPLY_TAG)


def run_coordinator(world: Any, argv: list[str]) -> None:
    """Run the script or module named in ``argv`` on rank 0, then stop the worker ranks."""
    MPIEngine.world_communicator = world
    try:
        if argv[0] == "-m":
            if len(argv) < 2:
                raise SystemExit(USAGE)
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    finally:
        for rank in range(1, world.Get_size()):
            world.send(STOP, dest=rank, tag=COMMAND_TAG)


def parse_max_sleep(argv: list[str]) -> tuple[float, list[str]]:
    """Split a leading ``--max-sleep SECONDS`` from the arguments."""
    if not argv or argv[0] != "--max-sleep":
        return MAX_SLEEP, argv
    try:
        max_sleep = float(argv[1])
    except (IndexError, ValueError):
        raise SystemExit(f"invalid --max-sleep value: expected seconds as a number\n{USAGE}") from None
    if max_sleep < 0:
        raise SystemExit(f"invalid --max-sleep {max_sleep!r}: expected seconds >= 0")
    return max_sleep, argv[2:]


def main(argv: list[str] | None = None) -> None:
    """Serve a spawning parent, or launch a coordinator script under mpiexec."""
    max_sleep, argv = parse_max_sleep(sys.argv[1:] if argv is None else argv)
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent != MPI.COMM_NULL:
        # The parent decides what Ctrl-C in its terminal means for the workers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve(parent, 0, max_sleep)
        parent.Disconnect()
        return

    world = MPI.COMM_WORLD
    if not argv:
        raise SystemExit(USAGE)
    if world.Get_rank() == 0:
        run_coordinator(world, argv)
    else:
        serve(world, 0, max_sleep)


if __name__ == "__main__":
    main()
