"""sbatch scripts from one pure function of a job's SLURM settings.

:func:`render_sbatch` is the only place that writes sbatch text; ``hpcdiff slurm render``,
``hpcdiff slurm submit``, ``hpcdiff reprocess`` and the committed scripts in ``slurm/``
all come from it, and golden tests hold its output.

Every script runs its one step in the background and waits for it, so that the batch
shell can pass the warning signal SLURM sends ahead of the time limit
(``--signal=B:USR1@N``) and SIGTERM on to the step (``srun`` hands it to every rank).
The ranks save their place and exit with :data:`~hpcdiff.parallel.signals.EXIT_PREEMPTED`;
the script then requeues the job, which resumes from the saved shards.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from hpcdiff import __version__
from hpcdiff.config import SlurmConfig
from hpcdiff.errors import ConfigError
from hpcdiff.parallel.signals import EXIT_PREEMPTED

_BARE_DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./\-\[\]]+")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Shell(str):
    """A command word that is shell syntax already (``"$JOB"``); emitted without quoting."""

    __slots__ = ()


@dataclass(frozen=True)
class ScriptArgument:
    """A positional argument of a generic script (``sbatch classify.sbatch JOB.toml``).

    Attributes
    ----------
    name
        Shell variable it is stored in, e.g. ``JOB``; refer to it with ``Shell('"$JOB"')``.
    usage
        What to pass, shown when it is missing, e.g. ``JOB.toml``.
    default
        Value when absent; ``None`` makes the argument required.
    """

    name: str
    usage: str
    default: str | None = None


def format_time_limit(minutes: int) -> str:
    """SLURM time limit text: ``HH:MM:SS`` below a day, ``D-HH:MM:SS`` from one day."""
    if minutes <= 0:
        raise ValueError(f"time limit must be > 0 minutes, got {minutes}")
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    clock = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{clock}" if days else clock


def quote_directive_value(value: str, *, key: str = "value") -> str:
    """Quote one ``#SBATCH`` option value the way sbatch reads it back.

    sbatch's directive parser knows double quotes and backslash escapes, not the single
    quotes of :func:`shlex.quote`, so values that are not plain words are double-quoted.

    Raises
    ------
    ConfigError
        If the value is empty or holds a newline (it cannot be one directive).
    """
    text = str(value)
    if not text or "\n" in text or "\r" in text:
        raise ConfigError(f"[slurm] {key} is {text!r}; expected a non-empty single-line value")
    if _BARE_DIRECTIVE_VALUE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _directive_lines(
    settings: SlurmConfig,
    *,
    job_name: str,
    output: str | None,
    array: str | None,
    dependency: str | None,
) -> list[str]:
    q = quote_directive_value
    opts: list[tuple[str, str | None]] = [("job-name", q(job_name, key="job_name"))]
    for key in ("partition", "account", "qos"):
        value = getattr(settings, key)
        if value is not None:
            opts.append((key, q(value, key=key)))
    opts.append(("nodes", str(settings.nodes)))
    opts.append(("ntasks-per-node", str(settings.tasks_per_node)))
    if settings.gpus_per_task:
        opts.append(("gpus-per-task", str(settings.gpus_per_task)))
    opts.append(("cpus-per-task", str(settings.cpus_per_task)))
    if settings.mem is not None:
        opts.append(("mem", q(settings.mem, key="mem")))
    opts.append(("time", format_time_limit(settings.time_limit_min)))
    if settings.constraint is not None:
        opts.append(("constraint", q(settings.constraint, key="constraint")))
    if settings.signal_ahead_s:
        opts.append(("signal", f"B:USR1@{settings.signal_ahead_s}"))
    opts.append(("requeue" if settings.requeue else "no-requeue", None))
    opts.append(("open-mode", "append"))
    if output is not None:
        opts.append(("output", q(output, key="output")))
    if array is not None:
        opts.append(("array", q(array, key="array")))
    if dependency is not None:
        opts.append(("dependency", q(dependency, key="dependency")))
    lines = [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in opts]
    for i, extra in enumerate(settings.extra_directives):
        lines.append("#SBATCH " + _extra_directive(extra, index=i))
    return lines


def _extra_directive(text: str, *, index: int) -> str:
    key = f"extra_directives[{index}]"
    if not text.startswith("-") or "\n" in text:
        raise ConfigError(
            f"[slurm] {key} is {text!r}; expected one sbatch option such as '--exclusive' "
            "or '--mail-type=END'"
        )
    name, sep, value = text.partition("=")
    if not sep:
        if not _BARE_DIRECTIVE_VALUE.fullmatch(name):
            raise ConfigError(f"[slurm] {key} is {text!r}; expected an option name")
        return name
    return f"{name}={quote_directive_value(value, key=key)}"


def _argument_lines(script_name: str, arguments: Sequence[ScriptArgument]) -> list[str]:
    usage = " ".join(a.usage if a.default is None else f"[{a.usage}]" for a in arguments)
    lines = []
    for position, arg in enumerate(arguments, start=1):
        if not _SHELL_NAME.fullmatch(arg.name):
            raise ValueError(f"script argument name {arg.name!r} is not a shell variable name")
        if arg.default is None:
            message = f"usage: sbatch {script_name} {usage}"
            lines.append(f'{arg.name}="${{{position}:?{message}}}"')
        else:
            lines.append(f'{arg.name}="${{{position}:-{arg.default}}}"')
    return lines


def _command_text(words: Sequence[str]) -> str:
    return " ".join(w if isinstance(w, Shell) else shlex.quote(w) for w in words)


def launcher_words(settings: SlurmConfig) -> list[str]:
    """``srun --mpi=...``: how a script starts its ranks (one per task of the allocation)."""
    return ["srun", f"--mpi={settings.mpi}"]


def render_sbatch(
    settings: SlurmConfig,
    command: Sequence[str],
    *,
    kind: str = "classify",
    job_name: str | None = None,
    script_name: str = "job.sbatch",
    arguments: Sequence[ScriptArgument] = (),
    output: str | None = None,
    array: str | None = None,
    dependency: str | None = None,
    srun: bool = True,
) -> str:
    """The sbatch script that runs ``command`` with the job's SLURM settings.

    A pure function: the same arguments give the same text (no time stamps, no paths
    read from the machine).

    Parameters
    ----------
    settings
        The job's SLURM settings, site file already merged under them
        (:func:`hpcdiff.slurm.settings.resolve_settings`).
    command
        The step, one word per item; each is quoted with :func:`shlex.quote` unless it is
        a :class:`Shell` word.
    kind
        What the script runs (``classify``, ``fourier``, ``reprocess``...), for its header.
    job_name
        ``--job-name``; defaults to ``settings.job_name``.
    script_name
        Name shown in the usage message of required :class:`ScriptArgument` s.
    arguments
        Positional arguments of a generic script, read into shell variables.
    output
        ``--output`` pattern (``%j``, ``%A``, ``%a`` as sbatch knows them).
    array, dependency
        ``--array`` (e.g. ``0-9%4``) and ``--dependency`` (e.g. ``afterany:123``).
    srun
        Start the step with ``srun --mpi=...`` (one process per task); ``False`` runs
        ``command`` in the batch shell (a driver that starts its own steps).

    Returns
    -------
    str
        The script text, ending with a newline.
    """
    if not command:
        raise ValueError("render_sbatch needs a command to run")
    step = _command_text([*launcher_words(settings), *command] if srun else list(command))
    lines = [
        "#!/bin/bash",
        f"# hpcdiff {kind} job, rendered by hpcdiff {__version__} from the job's [slurm] settings.",
        "# Change the job file (or the site file it names) and render again; do not edit.",
        *_directive_lines(
            settings,
            job_name=job_name or settings.job_name,
            output=output,
            array=array,
            dependency=dependency,
        ),
        "set -euo pipefail",
        "",
    ]
    if arguments:
        lines += [*_argument_lines(script_name, arguments), ""]
    lines += [
        "# srun does not pass --cpus-per-task on to steps by itself (SLURM >= 22.05).",
        'export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"',
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "",
    ]
    if settings.setup:
        # A directive before a compound command covers all of it; the files the setup
        # lines source exist on the cluster only, so shellcheck cannot follow them.
        lines += [
            "# Site and job setup.",
            "# shellcheck disable=SC1090,SC1091",
            "{",
            *(f"  {line}" for line in settings.setup),
            "}",
            "",
        ]
    lines += [
        "# The step runs in the background so that this shell can pass SLURM's warning",
        "# signal (--signal=B:USR1@N) and SIGTERM on to it; the ranks then save their place",
        f"# and exit with status {EXIT_PREEMPTED}; "
        + ("the job is requeued to resume." if settings.requeue else "rerun the job to resume."),
        f"{step} &",
        "step=$!",
        "forwarded=''",
        "# shellcheck disable=SC2317  # forward is called from the traps below",
        "forward() {",
        '  if [ -n "$forwarded" ]; then',
        '    echo "hpcdiff: received SIG$1; the step is stopping already" >&2',
        "    return",
        "  fi",
        "  forwarded=$1",
        '  echo "hpcdiff: received SIG$1, passing it to the step" >&2',
        '  kill -s "$1" "$step" 2>/dev/null || true',
        "}",
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        'while kill -0 "$step" 2>/dev/null; do',
        '  wait "$step" || true',
        "done",
        "status=0",
        'wait "$step" || status=$?',
    ]
    if settings.requeue:
        lines += [
            f'if [ "$status" -eq {EXIT_PREEMPTED} ] && [ -n "${{SLURM_JOB_ID:-}}" ]; then',
            '  echo "hpcdiff: step saved its place; requeueing job $SLURM_JOB_ID" >&2',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "fi",
        ]
    lines += ['exit "$status"', ""]
    return "\n".join(lines)


__all__ = [
    "ScriptArgument",
    "Shell",
    "format_time_limit",
    "launcher_words",
    "quote_directive_value",
    "render_sbatch",
]
