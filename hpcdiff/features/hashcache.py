"""SHA-256 of large files (checkpoints), remembered by (path, size, mtime).

Hashing torchvision's 528 MB VGG16 checkpoint takes seconds; every job start and every
``hpcdiff check`` needs its hash.  :func:`cached_sha256` keeps the hashes in one small JSON
file under the user's cache folder (``$HPCDIFF_CACHE_DIR``, else
``$XDG_CACHE_HOME/hpcdiff``, else ``~/.cache/hpcdiff``), keyed by the file's absolute path
and valid only while its size and modification time (ns) are the ones recorded.  A cache
that cannot be read or written is ignored: the hash is then computed every time.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hpcdiff.io.outputs import sha256_file

CACHE_FILE = "sha256-cache.json"

#: Files smaller than this are hashed every time (cheaper than the cache).
MIN_CACHED_BYTES = 1 << 20

#: At most this many entries are kept (the newest by insertion).
MAX_ENTRIES = 256


def cache_dir() -> Path:
    """Where hpcdiff keeps small per-user caches."""
    if os.environ.get("HPCDIFF_CACHE_DIR"):
        return Path(os.environ["HPCDIFF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcdiff"


def _load(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(path: Path, data: dict[str, dict[str, object]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        return  # a read-only home or a full disk: the hash is still right, just not cached


def cached_sha256(path: str | Path, *, cache: Path | None = None) -> str:
    """Hex SHA-256 of ``path``'s bytes, from the cache where size and mtime still match.

    Parameters
    ----------
    path
        A regular file.
    cache
        The JSON cache file (default ``cache_dir() / "sha256-cache.json"``).

    Raises
    ------
    OSError
        If ``path`` cannot be read.
    """
    path = Path(path).resolve()
    st = path.stat()
    if st.st_size < MIN_CACHED_BYTES:
        return sha256_file(path)
    cache = cache if cache is not None else cache_dir() / CACHE_FILE
    data = _load(cache)
    key = str(path)
    entry = data.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return str(entry["sha256"])
    sha = sha256_file(path)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return sha  # changed while being read: do not remember a hash of a moving target
    data = {k: v for k, v in _load(cache).items() if k != key}
    data[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    if len(data) > MAX_ENTRIES:
        data = dict(list(data.items())[-MAX_ENTRIES:])
    _store(cache, data)
    return sha
