"""SIGTERM and SIGHUP handled as Ctrl-C is: a KeyboardInterrupt, so that `finally` blocks and cleanup run
(a run records how it ended, predict removes its half-written output) before the process exits.
Nothing here imports TensorFlow or TFX."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

INTERRUPTING_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped the command; KeyboardInterrupt so that TFX's launcher lets it through untouched."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise RunInterrupted like Ctrl-C does (in the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise RunInterrupted(signal.Signals(signum).name)

    previous = {}
    for name in INTERRUPTING_SIGNALS:
        if hasattr(signal, name):
            signum = getattr(signal, name)
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """What must not be cut in two (an interruption's record, the swap of an output folder) runs to its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN)
                for s in (getattr(signal, name) for name in INTERRUPTING_SIGNALS if hasattr(signal, name))}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
