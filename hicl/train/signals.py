"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (schedulers, preemptible cloud machines).

The first signal is only remembered: the loop finishes the step it is in, writes a mid-epoch checkpoint
and raises `Stopped`. A second signal interrupts at once (KeyboardInterrupt), leaving the previous
checkpoint in place.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


COLLAPSE_EXIT_CODE = 3  # the run stopped itself: a stage collapsed (runtime.on_collapse: stop)


class Stopped(Exception):
    """The run stopped after writing a checkpoint at `step`: on a signal, or for `reason` (a collapse)."""

    def __init__(self, signum: int, step: int, reason: str | None = None):
        cause = reason or f"by {signal.Signals(signum).name}"
        super().__init__(f"stopped at step {step}: {cause}" if reason else f"stopped {cause} at step {step}")
        self.signum, self.step, self.reason = signum, step, reason

    @property
    def exit_code(self) -> int:
        if self.reason is not None:
            return COLLAPSE_EXIT_CODE
        return EXIT_CODES.get(self.signum, 128 + self.signum)


@contextmanager
def stop_requests() -> Iterator[Callable[[], int | None]]:
    """Inside: SIGINT/SIGTERM are remembered; the yielded function returns the first one (or None)."""
    received: list[int] = []

    def remember(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield lambda: None
        return
    previous = {s: signal.signal(s, remember) for s in EXIT_CODES}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
