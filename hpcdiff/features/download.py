"""Downloading torchvision's ImageNet VGG16 checkpoint into the torch hub cache.

:func:`download_checkpoint` streams the file from its official address to a temporary file
beside the destination, hashes it while it arrives, compares the hash with the prefix the
file name publishes (torchvision's convention: ``vgg16-397923af.pth`` has a SHA-256 starting
``397923af``), and only then renames it into place, so an interrupted or corrupted download
never leaves a file under the checkpoint's name.  Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from hpcdiff.errors import HpcdiffError, OutputExistsError

#: torchvision's checkpoint names: ``NAME-<first 8+ hex digits of its SHA-256>.pth``.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")

Progress = Callable[[int, int | None], None]
"""``progress(bytes_so_far, total_bytes_or_None)``, called after every block."""


class DownloadError(HpcdiffError):
    """The checkpoint could not be fetched or is not the published file."""


def hash_prefix_from_name(name: str) -> str | None:
    """The SHA-256 prefix published in a torchvision checkpoint name, or ``None``.

    >>> hash_prefix_from_name("vgg16-397923af.pth")
    '397923af'
    """
    match = HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def download_checkpoint(
    url: str,
    dest: str | Path,
    *,
    sha256_prefix: str | None = None,
    force: bool = False,
    timeout_s: float = 60.0,
    block_bytes: int = 1 << 20,
    progress: Progress | None = None,
) -> str:
    """Fetch ``url`` to ``dest`` through a temporary file; check its hash; rename atomically.

    Parameters
    ----------
    url
        ``https://`` (or, for tests, ``http://``) address of the checkpoint.
    dest
        Final path; its folder is created.
    sha256_prefix
        Hex digits the file's SHA-256 must start with; default: the prefix published in
        ``dest``'s name (:func:`hash_prefix_from_name`).  A name without one and no prefix
        given is refused: nothing is installed unchecked.
    force
        Replace an existing ``dest``.
    timeout_s
        Socket timeout per connection and read, seconds.
    block_bytes
        Read size.
    progress
        Called after each block with the bytes so far and the total (``None`` if unknown).

    Returns
    -------
    str
        The file's hex SHA-256.

    Raises
    ------
    OutputExistsError
        ``dest`` exists and ``force`` is false.
    DownloadError
        No network, an HTTP error, a truncated transfer or a hash that is not the published
        one; the message says what to do instead (copy the file by hand).
    """
    dest = Path(dest)
    expected = (sha256_prefix or hash_prefix_from_name(dest.name) or "").lower()
    if not expected:
        raise DownloadError(
            f"{dest.name} publishes no SHA-256 prefix in its name and none was given; "
            "refusing to install an unchecked checkpoint"
        )
    if not re.fullmatch(r"[0-9a-f]{1,64}", expected):
        raise DownloadError(f"sha256 prefix {expected!r} is not hexadecimal")
    if dest.exists() and not force:
        raise OutputExistsError(
            f"{dest} exists already; `hpcdiff weights verify {dest}` checks it, "
            "--force downloads it again"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DownloadError(
            f"cannot write into {dest.parent} ({exc.strerror}); choose another place with "
            "--dest, or set TORCH_HOME to a writable folder"
        ) from None
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    manual = f"Download it on a machine with internet access and copy it to {dest}"
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "hpcdiff"})
        total: int | None = None
        done = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    while block := response.read(block_bytes):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            except urllib.error.HTTPError as exc:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}. {manual}") from None
            except urllib.error.URLError as exc:
                raise DownloadError(
                    f"cannot reach {url} ({exc.reason}); this machine seems to have no "
                    f"internet access. {manual}"
                ) from None
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                raise DownloadError(f"{url}: connection failed ({exc}). {manual}") from None
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise DownloadError(
                f"{url}: transfer ended after {done} of {total} bytes; run the command again"
            )
        sha = digest.hexdigest()
        if not sha.startswith(expected):
            raise DownloadError(
                f"{url}: downloaded {done} bytes with SHA-256 {sha}, which does not start with "
                f"the published {expected}; the file was not installed. The download was "
                "corrupted or the address serves another file"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        return sha
    finally:
        if tmp.exists():
            tmp.unlink()
