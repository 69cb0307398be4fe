"""Overnight reprocessing of a whole experiment with a trained model.

An *experiment job* is a job file with a ``[reprocess]`` section: ``runs`` lists run
folders (frame files matching ``frames`` inside) or per-run job files, and ``[output]
model`` is the trained model.  :func:`submit_experiment` writes one job file per run into
the output folder and submits a SLURM array (one MPI ``hpcdiff classify predict`` per run,
at most ``[slurm] array_throttle`` at a time) and a summary job that runs after it
(``--dependency=afterany``).  Everything about progress lives in the output folder::

    OUT/jobs/RUN.toml             per-run job file (experiment section of the run)
    OUT/runs/RUN/                 the run's predict outputs (predictions.h5, predict-run.json,
                                  predict.shards/ while incomplete)
    OUT/state/RUN.json            the last task of the run: running / done / preempted / failed
    OUT/submissions/NNN/          array.sbatch, summary.sbatch, submission.json (ids, runs)
    OUT/logs/                     SLURM output of every task
    OUT/experiment-report.json    the summary; OUT/diffuse-fraction.png its plot

Submitting the same experiment again resumes: finished runs are left out of the new array,
runs still queued or running in SLURM are left alone, the others continue from their
checkpoint shards.  A preempted task exits with
:data:`~hpcdiff.parallel.signals.EXIT_PREEMPTED` and its script requeues it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import json
import logging
import os
import platform
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w

from hpcdiff.config import JobConfig, SlurmConfig, load_job
from hpcdiff.errors import ConfigError, FormatError, OutputExistsError
from hpcdiff.io.outputs import provenance, write_json
from hpcdiff.parallel.shards import ShardStore
from hpcdiff.parallel.signals import EXIT_PREEMPTED, STOP_SIGNALS
from hpcdiff.pipelines.layout import ClassifyLayout
from hpcdiff.slurm.env import SlurmEnvironment
from hpcdiff.slurm.sbatch import launcher_words, render_sbatch

RunState = Literal["done", "running", "failed", "left"]
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
log = logging.getLogger("hpcdiff.reprocess")


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One run of the experiment.

    Attributes
    ----------
    index
        Position in the experiment (sorted by name); the x axis of the summary plot.
    name
        Run folder name or per-run job file stem; names its outputs.
    source
        The run folder or per-run job file.
    experiment
        The ``[experiment]`` table of the run's job file (plain values, absolute paths).
    """

    index: int
    name: str
    source: Path
    experiment: Mapping[str, Any]


@dataclass(frozen=True)
class Layout:
    """Where an experiment's files live in its output folder."""

    root: Path

    def run_job(self, name: str) -> Path:
        return self.root / "jobs" / f"{name}.toml"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def state(self, name: str) -> Path:
        return self.root / "state" / f"{name}.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def report(self) -> Path:
        return self.root / "experiment-report.json"

    @property
    def plot(self) -> Path:
        return self.root / "diffuse-fraction.png"


def _require_reprocess(job: JobConfig) -> None:
    src = job.source or "<job>"
    if job.reprocess is None or not job.reprocess.runs:
        raise ConfigError(f"{src}: [reprocess] runs is missing; list run folders or job files")
    if job.output.model is None:
        raise ConfigError(
            f"{src}: [output] model is missing; name the trained model file "
            "(hpcdiff classify train writes it)"
        )


def discover_runs(job: JobConfig) -> list[Run]:
    """The experiment's runs, globs expanded, sorted by name.

    Raises
    ------
    ConfigError
        If a pattern matches nothing, a run folder holds no frame files, two runs share
        a name, or a name is not a plain file name.
    """
    _require_reprocess(job)
    assert job.reprocess is not None
    src = str(job.source or "<job>")
    base = job.source.parent if job.source is not None else Path.cwd()
    found: dict[str, Run] = {}
    for i, pattern in enumerate(job.reprocess.runs):
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            raise ConfigError(f"{src}: [reprocess.runs[{i}]] {pattern!r} matches no run")
        for match in matches:
            path = Path(match).resolve()
            if path.is_dir():
                name, table = path.name, _folder_experiment(job, path, src=src)
            elif path.suffix == ".toml":
                name, table = path.stem, _job_file_experiment(path)
            else:
                raise ConfigError(
                    f"{src}: [reprocess.runs[{i}]] {match} is neither a run folder nor a "
                    "per-run job file (.toml)"
                )
            if name == "job" and path.suffix == ".toml":
                name = path.parent.name
            if not _RUN_NAME.fullmatch(name):
                raise ConfigError(f"{src}: run name {name!r} (from {path}) is not a plain name")
            if name in found:
                raise ConfigError(
                    f"{src}: two runs are named {name!r}: {found[name].source} and {path}"
                )
            found[name] = Run(index=-1, name=name, source=path, experiment=table)
    return [
        dataclasses.replace(r, index=i)
        for i, r in enumerate(sorted(found.values(), key=lambda r: r.name))
    ]


def _folder_experiment(job: JobConfig, folder: Path, *, src: str) -> dict[str, Any]:
    assert job.reprocess is not None
    files = sorted(str(p) for p in folder.glob(job.reprocess.frames) if p.is_file())
    if not files:
        raise ConfigError(
            f"{src}: run folder {folder} holds no frame files matching "
            f"[reprocess] frames = {job.reprocess.frames!r}"
        )
    table = job.to_dict()["experiment"]
    table.update(name=folder.name, frames=files)
    return table


def _job_file_experiment(path: Path) -> dict[str, Any]:
    run_job = load_job(path)
    if run_job.simulate is not None:
        # A simulated run's job names files the simulator wrote; they must exist now.
        missing = [str(f) for f in run_job.frame_files() if not f.is_file()]
        if missing:
            raise ConfigError(f"{path}: frame files not written yet: {', '.join(missing[:3])}")
    table = run_job.to_dict()["experiment"]
    table["frames"] = [str(f.resolve()) for f in run_job.frame_files()]
    return table


def run_job_mapping(job: JobConfig, run: Run, layout: Layout) -> dict[str, Any]:
    """The per-run job file: the experiment job with the run's ``[experiment]`` section.

    Processing sections come from the experiment job (every run is treated alike);
    ``[slurm]``, ``[reprocess]`` and ``[simulate]`` are left out, so changing SLURM
    settings between submissions does not invalidate a run's checkpoints.
    """
    plain = job.to_dict()
    for key in ("slurm", "reprocess", "simulate"):
        plain.pop(key, None)
    plain["experiment"] = dict(run.experiment)
    plain["output"] = {
        **plain["output"],
        "dir": str(layout.run_dir(run.name)),
        "model": str(job.output.model),
    }
    return _without_none(plain)


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def write_run_jobs(
    job: JobConfig, runs: Sequence[Run], layout: Layout, *, force: bool = False
) -> list[Path]:
    """Write each run's job file; an identical existing file is kept.

    Raises
    ------
    OutputExistsError
        If a run's job file exists with other contents (the experiment job changed, so
        its checkpoints would not match) and ``force`` is false.
    """
    paths = []
    for run in runs:
        path = layout.run_job(run.name)
        text = tomli_w.dumps(run_job_mapping(job, run, layout))
        if path.exists() and path.read_text() == text:
            paths.append(path)
            continue
        if path.exists() and not force:
            raise OutputExistsError(
                f"{path} exists with other settings (the experiment job changed since run "
                f"{run.name!r} was submitted); pass --force to rewrite it (the run restarts)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- state of runs


@dataclass(frozen=True)
class RunStatus:
    """Where one run stands, from the output folder (and squeue where given).

    Attributes
    ----------
    state
        ``done`` (run report written), ``running``, ``failed`` or ``left`` (not started,
        queued, or stopped with checkpoints to resume from).
    detail
        A short human explanation.
    frames_checkpointed
        Frames already in checkpoint shards of an unfinished run.
    task
        SLURM task label (``ARRAY_INDEX``) of the last task that ran it.
    """

    run: Run
    state: RunState
    detail: str
    frames_checkpointed: int = 0
    task: str | None = None
    report: Mapping[str, Any] | None = None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from None


def checkpointed_frames(run_dir: Path) -> int:
    """Frames in the checkpoint shards of an unfinished predict run (from shard names)."""
    return ShardStore(ClassifyLayout(run_dir).stage("predict").shards).n_done_by_name()


def run_status(run: Run, layout: Layout, *, queue: Mapping[str, str] | None = None) -> RunStatus:
    """The state of ``run``; ``queue`` (task label -> SLURM state) refines running/queued."""
    report = _read_json(ClassifyLayout(layout.run_dir(run.name)).stage("predict").run_report)
    state = _read_json(layout.state(run.name)) or {}
    task = state.get("task")
    if report is not None:
        return RunStatus(run, "done", "predictions written", task=task, report=report)
    frames = checkpointed_frames(layout.run_dir(run.name))
    saved = f"; {frames} frames checkpointed" if frames else ""
    slurm_state = queue.get(task) if queue is not None and task else None
    recorded = state.get("state")
    if recorded == "running":
        if queue is not None and slurm_state is None:
            return RunStatus(
                run, "failed", f"task {task} is no longer in SLURM's queue{saved}", frames, task
            )
        return RunStatus(run, "running", f"task {task} on {state.get('host')}{saved}", frames, task)
    if recorded == "failed":
        detail = f"task {task} exited with status {state.get('exit_status')}{saved}"
        if slurm_state in ("PENDING", "REQUEUED", "RUNNING"):
            return RunStatus(run, "left", f"requeued after: {detail}", frames, task)
        return RunStatus(run, "failed", detail, frames, task)
    if recorded == "preempted":
        return RunStatus(
            run, "left", f"preempted (task {task}), resumes from checkpoint{saved}", frames, task
        )
    if slurm_state is not None:
        return RunStatus(run, "left", f"{slurm_state.lower()} in SLURM{saved}", frames, task)
    return RunStatus(run, "left", f"not started{saved}" if not frames else saved[2:], frames, task)


def latest_submission(layout: Layout) -> dict[str, Any] | None:
    """The record of the last submission of the experiment, or ``None``."""
    if not layout.submissions.is_dir():
        return None
    records = sorted(p for p in layout.submissions.glob("*/submission.json"))
    return _read_json(records[-1]) if records else None


def queue_labels(
    layout: Layout, *, squeue: Callable[[list[str]], dict[str, str]]
) -> dict[str, str]:
    """SLURM states of this experiment's jobs, keyed by task label and by run name.

    Run names map to the state of the task that runs them in any submission still in
    the queue (``{"run:r0003": "PENDING", "12_3": "PENDING", ...}``).
    """
    records = (
        [
            r
            for p in sorted(layout.submissions.glob("*/submission.json"))
            if (r := _read_json(p)) is not None
        ]
        if layout.submissions.is_dir()
        else []
    )
    ids = [str(r[k]) for r in records for k in ("array_job_id", "summary_job_id") if r.get(k)]
    states = squeue(ids) if ids else {}
    result = dict(states)
    for record in records:
        for index, name in enumerate(record.get("runs", [])):
            label = f"{record.get('array_job_id')}_{index}"
            if label in states:
                result[f"run:{name}"] = states[label]
    return result


def experiment_status(job: JobConfig, *, queue: Mapping[str, str] | None = None) -> list[RunStatus]:
    """Status of every run of the experiment job (:func:`run_status`)."""
    layout = Layout(job.output.dir)
    statuses = []
    for run in discover_runs(job):
        status = run_status(run, layout, queue=queue)
        if queue is not None and status.state != "done" and queue.get(f"run:{run.name}"):
            slurm_state = queue[f"run:{run.name}"]
            if slurm_state == "RUNNING" and status.state != "running":
                status = dataclasses.replace(
                    status, state="running", detail=f"running in SLURM; {status.detail}"
                )
            elif status.state == "failed":
                status = dataclasses.replace(
                    status, state="left", detail=f"{slurm_state.lower()}; {status.detail}"
                )
        statuses.append(status)
    return statuses


# --------------------------------------------------------------------------- submitting


@dataclass(frozen=True)
class Plan:
    """What a submission of the experiment does."""

    runs: tuple[Run, ...]
    skipped: Mapping[str, str]
    array_script: str | None
    summary_script: str
    submission_dir: Path


def summary_script(job: JobConfig, settings: SlurmConfig, *, after: str | None) -> str:
    """sbatch text of the summary job: one CPU, no GPU, after the array ``after`` ends."""
    small = dataclasses.replace(
        settings,
        nodes=1,
        tasks_per_node=1,
        gpus_per_task=0,
        cpus_per_task=1,
        signal_ahead_s=0,
        requeue=False,
    )
    return render_sbatch(
        small,
        ["hpcdiff", "reprocess", _job_path(job), "--summarise"],
        kind="reprocess summary",
        job_name=f"{settings.job_name}-{job.experiment.name}-summary",
        output=str(Layout(job.output.dir).logs / "%x-%j.out"),
        dependency=None if after is None else f"afterany:{after}",
        srun=False,
    )


def _job_path(job: JobConfig) -> str:
    return str(job.source) if job.source is not None else "JOB.toml"


def plan_submission(
    job: JobConfig, settings: SlurmConfig, *, queue: Mapping[str, str] | None = None
) -> Plan:
    """Decide which runs go into the next array and render its scripts.

    Runs that are done, or queued/running in SLURM (per ``queue``), are skipped.
    """
    layout = Layout(job.output.dir)
    todo, skipped = [], {}
    for status in experiment_status(job, queue=queue):
        if status.state == "done":
            skipped[status.run.name] = "done"
        elif queue is not None and queue.get(f"run:{status.run.name}"):
            skipped[status.run.name] = f"{queue[f'run:{status.run.name}'].lower()} in SLURM"
        else:
            todo.append(status.run)
    number = (
        1
        + max(
            (int(p.name) for p in layout.submissions.glob("[0-9]*") if p.name.isdigit()), default=0
        )
        if layout.submissions.is_dir()
        else 1
    )
    sub_dir = layout.submissions / f"{number:03d}"
    array_script = None
    name = job.experiment.name
    if todo:
        throttle = min(settings.array_throttle, len(todo))
        array_script = render_sbatch(
            settings,
            ["hpcdiff", "reprocess", _job_path(job), "--task", "--submission", str(sub_dir)],
            kind="reprocess array",
            job_name=f"{settings.job_name}-{name}",
            output=str(layout.logs / "%x-%A_%a.out"),
            array=f"0-{len(todo) - 1}%{throttle}",
            srun=False,
        )
    summary = summary_script(job, settings, after="ARRAY_JOB_ID" if todo else None)
    return Plan(tuple(todo), skipped, array_script, summary, sub_dir)


def submit_experiment(
    job: JobConfig,
    settings: SlurmConfig,
    *,
    force: bool = False,
    queue: Mapping[str, str] | None = None,
    sbatch: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Write per-run job files, submit the array and the dependent summary job.

    Parameters
    ----------
    job
        The experiment job (with ``[reprocess]``).
    settings
        Its SLURM settings, site file merged (:func:`hpcdiff.slurm.settings.resolve_settings`).
    force
        Rewrite per-run job files that differ from the experiment job.
    queue
        SLURM states from :func:`queue_labels`; ``None`` where squeue is unavailable.
    sbatch
        Submits script text and returns the job id; ``None`` plans only (dry run).

    Returns
    -------
    dict
        The submission record (also written to ``submissions/NNN/submission.json``
        unless dry run): ``runs``, ``skipped``, ``array_job_id``, ``summary_job_id``.
    """
    layout = Layout(job.output.dir)
    if not Path(job.output.model).is_file():  # type: ignore[arg-type]
        raise ConfigError(f"{job.source}: [output] model {job.output.model} does not exist")
    runs = discover_runs(job)
    plan = plan_submission(job, settings, queue=queue)
    record: dict[str, Any] = {
        "experiment_job": str(job.source),
        "runs": [r.name for r in plan.runs],
        "run_jobs": [str(layout.run_job(r.name)) for r in plan.runs],
        "skipped": dict(plan.skipped),
        "array_job_id": None,
        "summary_job_id": None,
        "array_script": plan.array_script,
        "summary_script": plan.summary_script,
        "submission_dir": str(plan.submission_dir),
        **provenance(job.config_hash()),
    }
    if sbatch is None:
        return record
    write_run_jobs(job, runs, layout, force=force)
    layout.logs.mkdir(parents=True, exist_ok=True)
    plan.submission_dir.mkdir(parents=True, exist_ok=False)
    summary = plan.summary_script
    # The record goes first: array tasks read it to find their run.
    write_json(plan.submission_dir / "submission.json", record)
    if plan.array_script is not None:
        (plan.submission_dir / "array.sbatch").write_text(plan.array_script)
        record["array_job_id"] = sbatch(plan.array_script)
        summary = summary_script(job, settings, after=record["array_job_id"])
        write_json(plan.submission_dir / "submission.json", record, force=True)
    record["summary_script"] = summary
    (plan.submission_dir / "summary.sbatch").write_text(summary)
    record["summary_job_id"] = sbatch(summary)
    write_json(plan.submission_dir / "submission.json", record, force=True)
    return record


# --------------------------------------------------------------------------- one array task


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _write_state(layout: Layout, name: str, **state: Any) -> None:
    write_json(layout.state(name), {**state, "updated_utc": _now()}, force=True)


def run_task(
    job: JobConfig,
    submission_dir: Path,
    index: int,
    *,
    launcher: Sequence[str],
    environment: SlurmEnvironment,
    command: Sequence[str] | None = None,
) -> int:
    """Run one array task: the predict job of run ``index`` of a submission.

    Records the task in ``state/RUN.json`` (running, then done / preempted / failed),
    runs ``launcher + hpcdiff classify predict RUN_JOB`` and passes the first SIGUSR1 or
    SIGTERM on to it, so the ranks checkpoint and stop.

    Returns
    -------
    int
        The predict job's exit status (:data:`EXIT_PREEMPTED` when it saved its place).
    """
    layout = Layout(job.output.dir)
    record = _read_json(Path(submission_dir) / "submission.json")
    if record is None:
        raise FormatError(Path(submission_dir) / "submission.json", "submission record missing")
    runs = record.get("runs", [])
    if not 0 <= index < len(runs):
        raise FormatError(
            Path(submission_dir) / "submission.json",
            f"array task {index} has no run (the submission has {len(runs)})",
        )
    name, run_job = runs[index], record["run_jobs"][index]
    argv = [*launcher, *(command or ["hpcdiff", "classify", "predict"]), run_job]
    common = {
        "run": name,
        "task": environment.task_label,
        "job_id": environment.job_id,
        "restart_count": environment.restart_count,
        "host": platform.node(),
        "pid": os.getpid(),
        "command": argv,
    }
    _write_state(layout, name, state="running", **common)
    log.info("run %s (task %d): %s", name, index, shlex.join(argv))
    forwarded: list[int] = []
    process: subprocess.Popen | None = None

    def forward(signum: int, _frame: Any) -> None:
        # Once: the ranks are stopping already, and a repeated signal could reach them
        # after their handlers are gone.  Installed until the final state is written, so
        # that a late signal cannot kill this process before it records the outcome.
        if forwarded:
            log.info("received %s again; the step is stopping already", signal.Signals(signum).name)
            return
        log.info("received %s: passing it to the step", signal.Signals(signum).name)
        forwarded.append(signum)
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        process = subprocess.Popen(argv)
        if forwarded:  # a signal came before the step existed
            process.send_signal(forwarded[0])
        status = process.wait()
        done = ClassifyLayout(layout.run_dir(name)).stage("predict").run_report.is_file()
        outcome = "done" if done else "preempted" if status == EXIT_PREEMPTED else "failed"
        _write_state(layout, name, state=outcome, exit_status=status, **common)
        log.info("run %s: %s (exit status %d)", name, outcome, status)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def task_launcher(settings: SlurmConfig, environment: SlurmEnvironment) -> list[str]:
    """``srun --mpi=...`` inside a SLURM job, nothing outside one (runs in this process group)."""
    return launcher_words(settings) if environment.in_job else []


# --------------------------------------------------------------------------- summary


def _run_numbers(run_dir: Path, report: Mapping[str, Any]) -> dict[str, Any]:
    frames = report.get("frames", {})
    numbers: dict[str, Any] = {
        "frames": frames.get("total"),
        "rejects": frames.get("rejected"),
        "frames_done_before": frames.get("done_before"),
        "frames_processed": frames.get("processed"),
        "diffuse_fraction": report.get("diffuse_fraction"),
    }
    if numbers["diffuse_fraction"] is None:
        numbers["diffuse_fraction"] = diffuse_fraction(ClassifyLayout(run_dir).predictions)
    return numbers


def diffuse_fraction(path: Path) -> float | None:
    """Fraction of frames with a predicted class above 0 (some diffuse scattering).

    Reads the ``class`` dataset of a predictions file (:func:`hpcdiff.pipelines.classify.
    run_predict`); ``None`` when the file is absent or holds no frames.

    Raises
    ------
    FormatError
        If the file has no ``class`` dataset.
    """
    if not path.is_file():
        return None
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        if "class" not in f:
            raise FormatError(path, "no 'class' dataset of predicted classes", dataset="class")
        classes = np.asarray(f["class"][()])
    return float(np.mean(classes > 0)) if classes.size else None


def summarise(job: JobConfig, *, queue: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Gather every run into the experiment report and its plot.

    Writes ``experiment-report.json`` (per run: state, frames, rejects, diffuse fraction;
    the runs that failed or are incomplete) and ``diffuse-fraction.png``.  Both are a view
    of the output folder, so each summary replaces the previous one.
    """
    from hpcdiff.report.figures import run_fraction_figure

    layout = Layout(job.output.dir)
    statuses = experiment_status(job, queue=queue)
    runs = []
    for status in statuses:
        entry: dict[str, Any] = {
            "run": status.run.name,
            "index": status.run.index,
            "state": status.state,
            "detail": status.detail,
            "task": status.task,
        }
        if status.report is not None:
            entry.update(_run_numbers(layout.run_dir(status.run.name), status.report))
        else:
            entry["frames_checkpointed"] = status.frames_checkpointed
        runs.append(entry)
    done = [r for r in runs if r["state"] == "done"]
    report = {
        "experiment": job.experiment.name,
        "runs": runs,
        "totals": {
            "runs": len(runs),
            "done": len(done),
            "frames": sum(r.get("frames") or 0 for r in done),
            "rejects": sum(r.get("rejects") or 0 for r in done),
        },
        "failed": [r["run"] for r in runs if r["state"] == "failed"],
        "incomplete": [r["run"] for r in runs if r["state"] in ("left", "running")],
        "plot": str(layout.plot),
        **provenance(job.config_hash()),
    }
    fractions = [r.get("diffuse_fraction") for r in runs]
    figure = run_fraction_figure(
        [r["run"] for r in runs], [float("nan") if f is None else f for f in fractions]
    )
    figure.suptitle(f"{job.experiment.name}: diffuse fraction per run")
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.plot.with_name(f".{layout.plot.name}.part")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, layout.plot)
    write_json(layout.report, report, force=True)
    if job.output.report:
        _write_html(job, report, figure, layout.root / "report")
    return report


def _write_html(job: JobConfig, summary: dict[str, Any], figure: Any, out: Path) -> Path:
    """The summary as an HTML page: totals, the per-run table and the plot."""
    from hpcdiff.report import Report

    page = Report(
        f"hpcdiff reprocess: {job.experiment.name}",
        provenance={k: summary.get(k) for k in ("hpcdiff_version", "config_hash", "created_utc")},
    )
    totals = summary["totals"]
    page.add_section(
        "Experiment",
        text=(
            f"{totals['done']} of {totals['runs']} runs done, {totals['frames']} frames, "
            f"{totals['rejects']} rejected. Failed: {', '.join(summary['failed']) or 'none'}. "
            f"Incomplete: {', '.join(summary['incomplete']) or 'none'}."
        ),
    )
    columns = ["run", "state", "frames", "rejects", "diffuse_fraction"]
    page.add_table(
        "Runs",
        [[r.get(c, "") if r.get(c) is not None else "" for c in columns] for r in summary["runs"]],
        columns=columns,
    )
    page.add_figure("Diffuse fraction per run", figure)
    return page.write(out, force=True)


def load_experiment(path: str | Path) -> JobConfig:
    """Load an experiment job file and check its ``[reprocess]`` and ``[output] model``."""
    job = load_job(path)
    _require_reprocess(job)
    return job


__all__ = [
    "Layout",
    "Plan",
    "Run",
    "RunStatus",
    "checkpointed_frames",
    "discover_runs",
    "experiment_status",
    "latest_submission",
    "load_experiment",
    "plan_submission",
    "queue_labels",
    "run_job_mapping",
    "run_status",
    "run_task",
    "summary_script",
    "submit_experiment",
    "summarise",
    "task_launcher",
    "write_run_jobs",
]
