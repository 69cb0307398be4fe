"""OpenMP settings of the process, applied before torch loads its OpenMP runtime.

On a CPU rank, torch's intra-op threads (libgomp) share the cores with the reader thread
that reads and preprocesses the next batch (:class:`~hpcdiff.parallel.prefetch.Prefetcher`),
and often with other jobs.  libgomp's default lets a thread that reaches the end of a
parallel region spin for a while before it sleeps; a spinning torch thread takes the core
that the reader thread, or the torch thread it waits for, needs.  ``OMP_WAIT_POLICY=PASSIVE``
makes it sleep at once.

Measured (``benchmarks/bench_throughput.py --only e2e``, 16 CSPAD frames, batch 8, 2 torch
threads, a 2-core machine shared with other jobs): VGG16 alone 34.5 CPU ms per image with
PASSIVE against 66 with the default (the rest spun), end to end (read, preprocess, VGG16)
9.4-11.6 frames/s against 6.4-6.8.

libgomp reads the variable once, when it is loaded (when torch is first imported), so
:func:`passive_omp_waits` must run before that; a value the user set is kept
(``OMP_WAIT_POLICY=ACTIVE`` restores spinning).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

#: Environment variable and value set by :func:`passive_omp_waits`.
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


def passive_omp_waits(
    environ: MutableMapping[str, str] | None = None, *, loaded: bool | None = None
) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless a value is set already.

    Parameters
    ----------
    environ
        The environment to change (default: :data:`os.environ`).
    loaded
        Whether the OpenMP runtime is loaded already (default: whether ``torch`` has been
        imported); then nothing changes, since the runtime would not read the value.

    Returns
    -------
    bool
        True when the value was set here (it takes effect at the runtime's loading).
    """
    env = os.environ if environ is None else environ
    if loaded is None:
        loaded = "torch" in sys.modules
    name, value = WAIT_POLICY
    if loaded or name in env:
        return False
    env[name] = value
    return True


__all__ = ["WAIT_POLICY", "passive_omp_waits"]
