"""glibc malloc thresholds that let batch-sized arrays reuse freed memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from hpcdiff.parallel.malloc_env import keep_batch_buffers

PROBE = """
import resource, sys
import numpy as np
from hpcdiff.parallel.malloc_env import keep_batch_buffers
if sys.argv[1] == "on":
    assert keep_batch_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 40 << 20  # a 40 MiB batch, above glibc's largest adaptive mmap threshold
np.ones(n, np.uint8)
before = faults()
for _ in range(5):
    np.ones(n, np.uint8)
print(faults() - before)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_batches_are_reused_not_faulted_in_again():
    off, on = _faults("off"), _faults("on")
    # off: every batch is fresh memory, faulted in (4 KiB or 2 MiB pages: thousands);
    # on: the freed batch's memory, mapped already
    assert off >= 5 * (40 << 20) // (2 << 20)
    assert on <= off // 10


def test_returns_whether_it_applies(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert keep_batch_buffers() is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # the user's own tuning wins
    assert keep_batch_buffers() is False
