"""Progress and timing: a small progress bar and run summary for command-line loops, and
the per-stage :class:`Timings`, rank-prefixed log lines (:func:`setup_logging`) and
progress lines (:func:`log_progress`) of the MPI job.

On a terminal the bar redraws in place (``\\r``); in a log file (SLURM output) it prints one
line at most every ``log_interval_s`` seconds, so batch logs stay short.  Nothing is printed
when ``enabled=False`` (e.g. on MPI ranks other than 0).

>>> with Progress(1000, label="features", unit="frames") as bar:   # doctest: +SKIP
...     for batch in batches:
...         bar.update(len(batch))
features: 1000/1000 frames [100%] 52.1 frames/s, 19.2 s
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"


class Progress:
    """Count work done against a total; print rate and time left.

    Parameters
    ----------
    total
        Units of work expected, or ``None`` when unknown (no percentage or ETA).
    label
        What is being done (printed first).
    unit
        Name of one unit of work (``"frames"``).
    stream
        Where to print (default ``sys.stderr``).
    enabled
        Print at all; ``None`` means yes.
    log_interval_s
        Minimum time between lines when ``stream`` is not a terminal.
    width
        Bar width in characters on a terminal.
    """

    def __init__(
        self,
        total: int | None,
        *,
        label: str = "",
        unit: str = "items",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        log_interval_s: float = 10.0,
        width: int = 30,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = True if enabled is None else bool(enabled)
        self.log_interval_s = float(log_interval_s)
        self.width = int(width)
        self.done = 0
        self.start = time.perf_counter()
        self._last_print = -float("inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._closed = False
        self._printed_done = -1

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        """Units per second so far."""
        t = self.elapsed_s
        return self.done / t if t > 0 else 0.0

    def line(self) -> str:
        """The current status as one line of text."""
        head = f"{self.label}: " if self.label else ""
        rate = f"{self.rate:.1f} {self.unit}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = ""
            if self._tty:
                filled = int(round(frac * self.width))
                bar = "[" + "#" * filled + "." * (self.width - filled) + "] "
            left = (self.total - self.done) / self.rate if self.rate > 0 else float("nan")
            eta = (
                f", {format_duration(left)} left" if self.done < self.total and left == left else ""
            )
            return (
                f"{head}{bar}{self.done}/{self.total} {self.unit} [{frac:4.0%}] {rate}, "
                f"{format_duration(self.elapsed_s)}{eta}"
            )
        return f"{head}{self.done} {self.unit}, {rate}, {format_duration(self.elapsed_s)}"

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units done and print if due."""
        self.done += int(n)
        if not self.enabled:
            return
        now = time.perf_counter()
        interval = 0.1 if self._tty else self.log_interval_s
        finished = self.total is not None and self.done >= self.total
        if now - self._last_print >= interval or finished:
            self._last_print = now
            self._emit(final=False)

    def _emit(self, *, final: bool) -> None:
        if final and not self._tty and self._printed_done == self.done:
            return  # the last line already says it
        self._printed_done = self.done
        if self._tty:
            end = "\n" if final else ""
            self.stream.write("\r" + self.line() + "\x1b[K" + end)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    label: str = "",
    unit: str = "items",
    stream: TextIO | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Iterate with a progress bar counting one unit per item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, label=label, unit=unit, stream=stream, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def format_summary(title: str, items: Mapping[str, Any]) -> str:
    """A titled block of ``key: value`` lines, keys aligned; floats to 4 significant digits."""
    width = max((len(k) for k in items), default=0)
    lines = [title]
    for key, value in items.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {text}")
    return "\n".join(lines)


def print_summary(title: str, items: Mapping[str, Any], *, stream: TextIO | None = None) -> None:
    """Print :func:`format_summary` (default to ``sys.stdout``)."""
    print(format_summary(title, items), file=stream if stream is not None else sys.stdout)


# --------------------------------------------------------------------------- job timings and logs


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, size: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}/{size}]"

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


def setup_logging(rank: int, size: int, *, level: int = logging.INFO) -> logging.Logger:
    """Send the ``hpcdiff`` logger to stderr with every line prefixed by ``[rank r/size]``.

    Calling it again replaces the handler it installed before (idempotent).
    """
    logger = logging.getLogger("hpcdiff")
    for handler in list(logger.handlers):
        if getattr(handler, "_hpcdiff_rank", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._hpcdiff_rank = True  # type: ignore[attr-defined]
    handler.addFilter(_RankFilter(rank, size))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(rank_prefix)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


@dataclass
class Timings:
    """Seconds spent per stage on one rank, and frames each stage handled.

    Stages used by the job: ``read`` (HDF5 reads), ``reader`` (all the reader thread's
    work: reads, checks and any preprocessing it does), ``wait_input`` (main thread
    blocked on the prefetch queue), ``compute`` (main thread processing batches), ``preprocess``, ``features``, ``predict``,
    ``checkpoint`` (writing shards), ``collective`` (MPI calls), ``total``.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float, frames: int = 0) -> None:
        """Add ``seconds`` (and ``frames``) to ``stage`` (from any thread)."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.frames[stage] = self.frames.get(stage, 0) + frames

    @contextlib.contextmanager
    def section(self, stage: str, frames: int = 0) -> Iterator[None]:
        """Time the ``with`` block as ``stage``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0, frames)

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        """``{stage: {"seconds": s, "frames": n, "frames_per_s": n / s}}``."""
        out = {}
        for stage, sec in sorted(self.seconds.items()):
            n = self.frames.get(stage, 0)
            out[stage] = {
                "seconds": round(sec, 6),
                "frames": n,
                "frames_per_s": round(n / sec, 3) if sec > 0 and n else None,
            }
        return out


def timings_table(per_rank: list[dict[str, dict[str, float | None]]]) -> str:
    """A plain-text table of seconds and frames/s per stage (rows) and rank (columns)."""
    stages = sorted({s for t in per_rank for s in t})
    head = f"{'stage':<12}" + "".join(f"{'rank ' + str(r):>22}" for r in range(len(per_rank)))
    lines = [head, f"{'':<12}" + f"{'s':>10}{'frames/s':>12}" * len(per_rank)]
    for stage in stages:
        row = f"{stage:<12}"
        for t in per_rank:
            entry = t.get(stage)
            if entry is None:
                row += f"{'-':>10}{'-':>12}"
                continue
            rate = entry.get("frames_per_s")
            row += f"{entry['seconds']:>10.2f}" + (f"{rate:>12.1f}" if rate else f"{'-':>12}")
        lines.append(row)
    return "\n".join(lines)


def log_progress(done: int, total: int, this_run: int, elapsed_s: float) -> None:
    """Log one progress line of a job: frames done of total, rate of this run, ETA."""
    rate = this_run / elapsed_s if elapsed_s > 0 else 0.0
    left = total - done
    eta = f"{left / rate:.0f} s" if rate > 0 else "?"
    pct = 100.0 * done / total if total else 100.0
    logging.getLogger("hpcdiff.parallel").info(
        "frames %d/%d (%.1f%%), %.1f frames/s, ETA %s", done, total, pct, rate, eta
    )
