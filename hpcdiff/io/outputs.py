"""Writing outputs safely: never overwrite without ``force``, write then rename, stamp provenance."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcdiff import __version__
from hpcdiff.errors import OutputExistsError


def ensure_writable(path: str | Path, *, force: bool = False) -> Path:
    """Refuse to touch an existing output unless ``force`` is set.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false; the message says how to proceed.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(
            f"{path} exists already; pass --force to overwrite it, or choose another output"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or signal part-way leaves any earlier file at ``path`` untouched and no
    half-written file under the final name.
    """
    path = ensure_writable(path, force=force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; outputs get the permissions the user's umask gives
    # any new file, so group members on a cluster can read them.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any, *, force: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def provenance(config_hash: str | None = None, **extra: Any) -> dict[str, Any]:
    """The stamp every hpcdiff output carries: version, config hash, time, host, extras."""
    stamp: dict[str, Any] = {
        "hpcdiff_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
    }
    if config_hash is not None:
        stamp["config_hash"] = config_hash
    stamp.update(extra)
    return stamp


def sha256_file(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
