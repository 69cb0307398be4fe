"""A job's SLURM settings with the site file merged under them.

Facility details (partition, account, module loads) live in a site TOML file the job
names with ``[slurm] site_file``; nothing facility-specific is written in hpcdiff.  The
site file holds a ``[slurm]`` table with the same keys as the job's.  Keys the job sets
win; keys only the site sets fill in; ``setup`` and ``extra_directives`` are joined,
site lines first (the site's ``module load`` lines come before the job's own).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcdiff.config import JobConfig, SlurmConfig
from hpcdiff.config._schema import _Context, build_section
from hpcdiff.errors import ConfigError

_JOINED = ("setup", "extra_directives")


def _read_toml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_site_table(path: str | Path) -> dict[str, Any]:
    """The ``[slurm]`` table of a site file, validated against :class:`SlurmConfig`.

    Raises
    ------
    ConfigError
        Naming the site file and the key: unknown keys, wrong types, a missing
        ``[slurm]`` table, or a ``site_file`` key (site files do not chain).
    """
    path = Path(path)
    mapping = _read_toml(path, what="site file")
    other = sorted(set(mapping) - {"slurm"})
    if other or not isinstance(mapping.get("slurm"), dict):
        raise ConfigError(
            f"{path}: a site file holds one [slurm] table with the job file's [slurm] keys; "
            f"found top-level key(s) {', '.join(sorted(mapping)) or 'none'}"
        )
    table = mapping["slurm"]
    if "site_file" in table:
        raise ConfigError(f"{path}: [slurm.site_file] is not allowed in a site file")
    # Validate now, so that a typo names the site file rather than the job.
    build_section(SlurmConfig, table, key="slurm", ctx=_Context(str(path), path.parent))
    return table


def merge_settings(
    job_settings: SlurmConfig,
    job_keys: set[str],
    site_table: Mapping[str, Any],
    *,
    site_source: str,
) -> SlurmConfig:
    """Merge a validated site ``[slurm]`` table under the job's settings.

    Parameters
    ----------
    job_settings
        The job's validated settings.
    job_keys
        The keys the job file itself sets (its raw ``[slurm]`` table); other fields of
        ``job_settings`` are defaults and yield to the site.
    site_table
        The site file's ``[slurm]`` table (:func:`load_site_table`).
    site_source
        The site file's name, for error messages.
    """
    site = build_section(
        SlurmConfig, site_table, key="slurm", ctx=_Context(site_source, Path(site_source).parent)
    )
    values: dict[str, Any] = {}
    for f in dataclasses.fields(SlurmConfig):
        job_value = getattr(job_settings, f.name)
        if f.name in _JOINED:
            values[f.name] = (*getattr(site, f.name), *job_value)
        elif f.name in job_keys or f.name not in site_table:
            values[f.name] = job_value
        else:
            values[f.name] = getattr(site, f.name)
    return SlurmConfig(**values)


def resolve_settings(job: JobConfig) -> SlurmConfig:
    """The SLURM settings of ``job``: its ``[slurm]`` section over its site file, if any.

    Which keys the job sets is read from its file (``job.source``); a job built in
    memory without a file counts every non-default value as set.
    """
    settings = job.slurm
    if settings.site_file is None:
        return settings
    if job.source is not None:
        raw = _read_toml(Path(job.source), what="job file").get("slurm", {})
        job_keys = set(raw)
    else:
        defaults = SlurmConfig()
        job_keys = {
            f.name
            for f in dataclasses.fields(SlurmConfig)
            if getattr(settings, f.name) != getattr(defaults, f.name)
        }
    table = load_site_table(settings.site_file)
    return merge_settings(settings, job_keys, table, site_source=str(settings.site_file))


__all__ = ["load_site_table", "merge_settings", "resolve_settings"]
