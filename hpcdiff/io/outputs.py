"""Writing outputs safely: never overwrite without ``force``, write then rename, stamp provenance."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcdiff import __version__
from hpcdiff.errors import OutputError, OutputExistsError

_NOT_WRITABLE = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
# h5py's errors often carry no errno, only the system's message in their text
_MESSAGES = {
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
}


def output_error(exc: OSError | RuntimeError, path: str | Path) -> OutputError | None:
    """The :class:`~hpcdiff.errors.OutputError` (what happened, what to do) for an
    ``OSError`` raised while writing ``path``; ``None`` if it is not an unwritable or full
    file system (then the error is not one a user can foresee and fix from the message)."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _NOT_WRITABLE and code not in _FULL:
        text = str(exc)
        code = next((c for m, c in _MESSAGES.items() if m in text), None)
    if code is None:
        return None
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if code in _FULL:
        return OutputError(
            path,
            f"{_FULL[code]}; free space in {folder} (df -h {folder}) or set [output] dir to "
            "another file system, then run the same command again (finished checkpoints "
            "are reused)",
        )
    return OutputError(
        path,
        f"{_NOT_WRITABLE[code]}; make {folder} writable for this user, or set [output] dir "
        "to a writable folder",
    )


def quiet_h5py_write_cleanup() -> None:
    """Drop h5py's "Exception ignored" tracebacks of objects freed after a failed write.

    When a write fails (full or read-only disk), h5py's objects of that file fail again
    as they are freed, and Python prints each as a traceback; the error itself is
    reported as one line (:func:`output_errors`).  Installed by the CLI, once per
    process; any other unraisable error reaches the previous hook unchanged.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_hpcdiff_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        text = str(unraisable.exc_value)
        if "h5py" in repr(unraisable.object) or "ObjectID" in str(unraisable.err_msg or ""):
            if any(m in text for m in (*_MESSAGES, "file write failed", "file close failed")):
                return
        previous(unraisable)

    hook._hpcdiff_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn an unwritable or full file system while writing ``path`` into an
    :class:`~hpcdiff.errors.OutputError` (one line: the path and what to do)."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError when a close fails
        err = output_error(exc, path)
        if err is None:
            raise
        raise err from exc


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
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or signal part-way leaves any earlier file at ``path`` untouched and no
    half-written file under the final name.
    """
    path = ensure_writable(path, force=force)
    with output_errors(path):
        with _atomic(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
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
