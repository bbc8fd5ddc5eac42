"""Long file reads and writes (``torch.load``, safetensors) that Ctrl-C can stop.

Python runs signal handlers in the main thread between bytecodes, so a Ctrl-C during a call that
stays in C++ for minutes lands only when it returns. :func:`interruptible` runs such a call in a
worker thread while the main thread waits in short slices, free to take the signal. The worker is
one long-lived daemon thread, and a daemon does not hold up the exit of an interrupted process.

The decompositions go to the worker only while the whole process is svs's own (the CLI, inside
:func:`own_process`): a second thread that runs OpenMP/LAPACK work keeps a second thread team
alive, and on 2 cores every later LAPACK call of the process, a user's own included, then ran
about 7x slower (torch.linalg.svdvals of 40 x 128 x 512 float64: 145 ms before, about 1000 ms
after one call in the worker; torch 2.13 CPU). In a user's process they run on the caller's
thread (:func:`compute`), in batches of bounded work, so Ctrl-C lands between batches.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator, Optional, TypeVar

T = TypeVar("T")
_jobs: "Optional[queue.SimpleQueue]" = None
_start_lock = threading.Lock()
_own_process = False


@contextlib.contextmanager
def own_process() -> Iterator[None]:
    """While the process does nothing but svs's work (a CLI command): :func:`compute` uses the
    worker, so Ctrl-C lands during a long decomposition too."""
    global _own_process
    previous, _own_process = _own_process, True
    try:
        yield
    finally:
        _own_process = previous


def compute(fn: Callable[[], T]) -> T:
    """A decomposition: :func:`interruptible` inside :func:`own_process`, else ``fn()`` on the
    caller's thread (see the module docstring for why)."""
    return interruptible(fn) if _own_process else fn()


def interruptible(fn: Callable[[], T]) -> T:
    """``fn()``, run so that KeyboardInterrupt (Ctrl-C, or SIGTERM turned into it) is raised here
    at once. The interrupted call then finishes in the background and its result is dropped, so
    ``fn`` must not modify its inputs; callers keep each call short (one batch) to bound that.
    Off the main thread (where no signal is delivered) it is simply ``fn()``."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    done, outcome = threading.Event(), []
    _worker_jobs().put((fn, done, outcome))
    while not done.wait(0.05):
        pass
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _worker_jobs() -> queue.SimpleQueue:
    global _jobs
    with _start_lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            threading.Thread(target=_work, args=(_jobs,), name="svs-worker", daemon=True).start()
    return _jobs


def _work(jobs: queue.SimpleQueue) -> None:
    while True:
        fn, done, outcome = jobs.get()
        try:
            outcome.append((True, fn()))
        except BaseException as err:  # noqa: BLE001  (re-raised in the caller's thread)
            outcome.append((False, err))
        done.set()
