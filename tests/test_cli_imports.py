"""``hpcdiff --help`` stays fast: the CLI loads no heavy module before a command runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "h5py", "scipy", "mpi4py", "dask", "sklearn")

_PROBE = """
import json, runpy, sys
sys.argv = ["hpcdiff", *sys.argv[1:]]
try:
    runpy.run_module("hpcdiff", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _loaded(*args: str) -> tuple[int, set[str]]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return int(result["code"] or 0), set(result["modules"])


def test_help_imports_no_heavy_module():
    code, modules = _loaded("--help")
    assert code == 0
    assert "hpcdiff.cli" in modules and "hpcdiff.cli.classify" in modules  # it did run
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"hpcdiff --help imported {heavy}"


def test_subcommand_help_imports_no_heavy_module():
    code, modules = _loaded("classify", "--help")
    assert code == 0
    assert not sorted(m for m in modules if m.split(".")[0] in HEAVY)
