"""Preemption: SIGTERM / SIGUSR1 ask a running job to save its place and stop.

SLURM sends ``--signal=USR1@N`` (or SIGTERM at the time limit and on preemption) to every
task.  The handler here only raises a flag; the rank loop looks at it between batches,
agrees with the other ranks (one small reduction, so a signal that reaches a single rank
stops them all), finishes the batch in hand, writes its checkpoint shard and raises
:class:`Preempted`.  The CLI turns that into exit status :data:`EXIT_PREEMPTED`
(75, ``EX_TEMPFAIL`` of ``sysexits.h``: "preempted, resumable"); rerunning the same job
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from hpcdiff.errors import HpcdiffError

EXIT_PREEMPTED = 75
"""Exit status of a job stopped by SIGTERM/SIGUSR1 after saving its place (``EX_TEMPFAIL``)."""

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that request a clean, resumable stop."""

log = logging.getLogger("hpcdiff.parallel")


class Preempted(HpcdiffError):
    """A stop signal arrived; every rank saved its shard.  Rerun the same job to resume.

    Raised identically on every rank (the decision to stop is collective).
    """

    collective = True

    def __init__(self, message: str, *, frames_done: int = 0, frames_total: int = 0) -> None:
        super().__init__(message)
        self.frames_done = frames_done
        self.frames_total = frames_total


class StopFlag:
    """Set when a stop signal arrives; read by the rank loop between batches.

    Attributes
    ----------
    signum
        The first stop signal received, or ``None``.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int | None = None) -> None:
        """Request a stop (as a signal would)."""
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.set(signum)
        log.warning(
            "received %s: finishing the current batch, then saving and stopping",
            signal.Signals(signum).name,
        )


@contextlib.contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopFlag]:
    """Install handlers that set a :class:`StopFlag`; restore the previous ones on exit.

    Handlers can only be installed from the main thread; elsewhere (a test runner's
    worker thread) the flag is returned without handlers and can still be set by hand.
    """
    flag = StopFlag()
    previous: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, flag._handler)
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


__all__ = ["EXIT_PREEMPTED", "STOP_SIGNALS", "Preempted", "StopFlag", "stop_on_signals"]
