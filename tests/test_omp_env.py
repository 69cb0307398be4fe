"""OpenMP wait policy set by the command line before torch loads its runtime."""

from __future__ import annotations

import os
import subprocess
import sys

from hpcdiff.parallel.omp_env import WAIT_POLICY, passive_omp_waits


def test_sets_passive_when_unset_and_not_loaded():
    env: dict[str, str] = {}
    assert passive_omp_waits(env, loaded=False)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_keeps_a_users_value():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not passive_omp_waits(env, loaded=False)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_no_change_once_the_runtime_is_loaded():
    env: dict[str, str] = {}
    assert not passive_omp_waits(env, loaded=True)
    assert env == {}


def test_cli_sets_it_before_torch_is_imported(tmp_path):
    """The command line applies it before a command runs (and torch is not imported by
    parsing), so a command that imports torch sees the value."""
    code = (
        "import os, sys\n"
        "import hpcdiff.cli as cli\n"
        "seen = {}\n"
        "def run(args):\n"
        "    seen['torch'] = 'torch' in sys.modules\n"
        "    seen['policy'] = os.environ.get('OMP_WAIT_POLICY')\n"
        "    return 0\n"
        "parser = cli.build_parser()\n"
        "cli.build_parser = lambda: parser\n"
        "parser.set_defaults(func=run, command='probe')\n"
        "assert cli.main([]) == 0\n"
        "print(seen['torch'], seen['policy'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != WAIT_POLICY[0]}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "PASSIVE"]
