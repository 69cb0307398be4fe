"""Static checks run by the test command: mypy (config in pyproject.toml) and ruff are clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_is_clean_on_hpcdiff() -> None:
    pytest.importorskip("mypy", reason="mypy is in the [test] extra")
    out = _run([sys.executable, "-m", "mypy", "hpcdiff"])
    assert out.returncode == 0, f"mypy hpcdiff:\n{out.stdout}{out.stderr}"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the [test] extra)")
    out = _run([ruff, "check", "hpcdiff", "tests", "benchmarks"])
    assert out.returncode == 0, f"ruff check:\n{out.stdout}{out.stderr}"
