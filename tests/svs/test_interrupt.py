"""svs.interrupt.interruptible: Ctrl-C lands while the call is still running; results and errors
come back as from a plain call."""
import os
import signal
import threading

import pytest

from svs.interrupt import interruptible


def test_result_and_error_come_back():
    assert interruptible(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        interruptible(lambda: 1 / 0)
    out = []
    worker = threading.Thread(target=lambda: out.append(interruptible(threading.current_thread)))
    worker.start()
    worker.join()
    assert out == [worker]  # off the main thread: called in place


def test_ctrl_c_lands_while_the_call_runs():
    started, release = threading.Event(), threading.Event()

    def long_call():
        started.set()
        release.wait(60)  # stands for minutes in C++: no bytecode runs in this thread
        return "finished"

    threading.Thread(target=lambda: (started.wait(60), os.kill(os.getpid(), signal.SIGINT)), daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            interruptible(long_call)
        assert started.is_set() and not release.is_set()  # raised before the call returned
    finally:
        release.set()
