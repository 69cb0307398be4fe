"""Features files (HDF5): one feature vector per frame, with what made it.

Layout::

    /frame_file    (n,)    utf-8 str   frame's source file (FrameId.file)
    /frame_index   (n,)    int64       frame's index in that file (FrameId.index)
    /features      (n, d)  float32     chunked, resizable along n
    attrs: layer, n_features, weights (JSON: name, path, sha256, pretrained, layers,
           preprocessing), weights_name, weights_sha256, weights_pretrained,
           background (JSON: BackgroundConfig fields: method and normalisation settings),
           background_method, config_hash, hpcdiff_version, provenance (JSON), format_version

Writers append batches (:class:`FeatureWriter`); rank shards are merged into one file ordered
by frame id with :func:`merge_feature_shards`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcdiff import __version__
from hpcdiff.errors import FormatError
from hpcdiff.io.appendable import AppendableH5
from hpcdiff.io.hdf5 import open_hdf5, read_checked
from hpcdiff.io.outputs import ensure_writable, provenance

FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class FeatureMeta:
    """What made a features file's vectors; two files are comparable when these agree.

    Attributes
    ----------
    layer
        VGG16 layer (``"fc6+fc7"``, ``"fc7"``, ``"pool5"``, ``"gap"``).
    n_features
        Vector length ``d``.
    weights
        :attr:`hpcdiff.features.FeatureExtractor.weights_info` (name, path, sha256, pretrained, ...).
    background
        Background method and normalisation settings (the ``[background]`` job section as a dict;
        must hold ``"method"``).
    config_hash
        Hash of the job configuration that made the file, or ``None``.
    extra
        Anything else to record (device, dtype, ...); not compared.
    """

    layer: str
    n_features: int
    weights: dict[str, Any]
    background: dict[str, Any]
    config_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_sha256(self) -> str:
        return str(self.weights.get("sha256", ""))

    @property
    def background_method(self) -> str:
        return str(self.background.get("method", "unknown"))

    def differences(self, other: FeatureMeta) -> list[str]:
        """Human-readable list of what differs in layer, size, weights and background."""
        diffs = []
        if self.layer != other.layer:
            diffs.append(f"layer {self.layer!r} != {other.layer!r}")
        if self.n_features != other.n_features:
            diffs.append(f"n_features {self.n_features} != {other.n_features}")
        if self.weights_sha256 != other.weights_sha256:
            diffs.append(
                f"weights {self.weights.get('name')} (sha256 {self.weights_sha256[:12]}) != "
                f"{other.weights.get('name')} (sha256 {other.weights_sha256[:12]})"
            )
        # a key one side lacks (a file written before the key existed) has the value that
        # files of that time were made with: the seed recipe, and the other keys' defaults
        defaults = {**_background_defaults(), **LEGACY_BACKGROUND}
        for key in sorted(set(self.background) | set(other.background)):
            a = self.background.get(key, defaults.get(key))
            b = other.background.get(key, defaults.get(key))
            if a != b:
                diffs.append(f"background.{key} {a!r} != {b!r}")
        return diffs


#: ``[background]`` values of files written before the key existed, where they differ
#: from today's default (the seed recipe was the only one, and the default, until then).
LEGACY_BACKGROUND: dict[str, Any] = {"preprocessing": "seed"}


def _background_defaults() -> dict[str, Any]:
    """``[background]`` defaults (:class:`hpcdiff.config.BackgroundConfig`), JSON-like."""
    import dataclasses

    from hpcdiff.config import BackgroundConfig

    return dataclasses.asdict(BackgroundConfig())


@dataclass(frozen=True)
class FeatureSet:
    """A features file in memory.

    Attributes
    ----------
    files
        ``(n,)`` str, frame source files.
    indices
        ``(n,)`` int64, frame indices within their file.
    features
        ``(n, d)`` float32.
    meta
        :class:`FeatureMeta`.
    attrs
        All raw HDF5 attributes (provenance included).
    """

    files: np.ndarray
    indices: np.ndarray
    features: np.ndarray
    meta: FeatureMeta
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def frame_ids(self) -> list[Any]:
        """Frame identities as :class:`hpcdiff.io.cxi.FrameId` objects."""
        from hpcdiff.io.cxi import FrameId

        return [FrameId(str(f), int(i)) for f, i in zip(self.files, self.indices, strict=True)]

    @property
    def keys(self) -> list[tuple[str, int]]:
        """Frame identities as ``(file, index)`` tuples."""
        return [(str(f), int(i)) for f, i in zip(self.files, self.indices, strict=True)]


def split_frame_ids(frame_ids: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Frame ids (``FrameId`` objects or ``(file, index)`` pairs) -> ``(files, indices)`` arrays."""
    files: list[str] = []
    indices: list[int] = []
    for fid in frame_ids:
        if hasattr(fid, "file") and hasattr(fid, "index"):
            files.append(str(fid.file))
            indices.append(int(fid.index))
        else:
            f, i = fid
            files.append(str(f))
            indices.append(int(i))
    return np.asarray(files, dtype=object), np.asarray(indices, dtype=np.int64)


def _meta_attrs(meta: FeatureMeta) -> dict[str, Any]:
    if "method" not in meta.background:
        raise ValueError("FeatureMeta.background must name the background 'method'")
    return {
        "format_version": FORMAT_VERSION,
        "layer": meta.layer,
        "n_features": int(meta.n_features),
        "weights": json.dumps(meta.weights, sort_keys=True),
        "weights_name": str(meta.weights.get("name", "")),
        "weights_sha256": meta.weights_sha256,
        "weights_pretrained": bool(meta.weights.get("pretrained", False)),
        "background": json.dumps(meta.background, sort_keys=True),
        "background_method": meta.background_method,
        "config_hash": meta.config_hash or "",
        "hpcdiff_version": __version__,
        "extra": json.dumps(meta.extra, sort_keys=True, default=str),
        "provenance": json.dumps(provenance(meta.config_hash), sort_keys=True),
    }


def _create(file: AppendableH5, meta: FeatureMeta, *, chunk_rows: int) -> None:
    d = int(meta.n_features)
    file.column("frame_file", dtype=_STR, chunk_rows=1024)
    file.column("frame_index", dtype=np.int64, chunk_rows=1024)
    file.column(
        "features",
        dtype=np.float32,
        row_shape=(d,),
        chunk_rows=max(1, min(chunk_rows, max(1, (1 << 20) // (4 * d)))),
    )


def _check_batch(
    meta: FeatureMeta, frame_ids: Iterable[Any], features: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != meta.n_features:
        raise ValueError(f"features must have shape (n, {meta.n_features}); got {features.shape}")
    files, indices = split_frame_ids(frame_ids)
    if files.shape[0] != features.shape[0]:
        raise ValueError(f"{files.shape[0]} frame ids for {features.shape[0]} feature vectors")
    return files, indices, features.astype(np.float32, copy=False)


class FeatureWriter:
    """Write a features file batch by batch; the file appears under its name only when closed.

    Parameters
    ----------
    path
        Output file.
    meta
        :class:`FeatureMeta` of every vector written.
    force
        Overwrite an existing file.
    chunk_rows
        HDF5 chunk length along frames (capped so that a chunk is <= 1 MiB).

    Examples
    --------
    >>> with FeatureWriter("features.h5", meta=meta) as w:     # doctest: +SKIP
    ...     w.append(frame_ids, fx.extract(images))
    """

    def __init__(
        self, path: str | Path, *, meta: FeatureMeta, force: bool = False, chunk_rows: int = 64
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self._file = AppendableH5(self.path, force=force, attrs=_meta_attrs(meta))
        _create(self._file, meta, chunk_rows=chunk_rows)
        self.n_written = 0

    def append(self, frame_ids: Sequence[Any], features: np.ndarray) -> None:
        """Add ``(n, d)`` features for ``n`` frame ids (``FrameId`` or ``(file, index)``)."""
        files, indices, features = _check_batch(self.meta, frame_ids, features)
        self._file.append(
            {"frame_file": files.astype(object), "frame_index": indices, "features": features}
        )
        self.n_written += features.shape[0]

    def close(self, *, ok: bool = True) -> None:
        """Finish the file (rename into place), or discard it when ``ok`` is false."""
        self._file.close(ok=ok)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)


def write_features(
    path: str | Path,
    frame_ids: Sequence[Any],
    features: np.ndarray,
    *,
    meta: FeatureMeta,
    force: bool = False,
) -> Path:
    """Write a whole features file at once (see :class:`FeatureWriter`)."""
    with FeatureWriter(path, meta=meta, force=force) as w:
        w.append(frame_ids, features)
    return Path(path)


def _attr_json(path: Path, attrs: Any, key: str) -> Any:
    try:
        return json.loads(attrs[key])
    except KeyError:
        raise FormatError(
            path, f"missing attribute {key!r}; not an hpcdiff features file"
        ) from None
    except (TypeError, json.JSONDecodeError):
        raise FormatError(path, f"attribute {key!r} is not valid JSON") from None


def _read_meta(path: Path, h5: h5py.File) -> FeatureMeta:
    for name in ("frame_file", "frame_index", "features"):
        if name not in h5:
            raise FormatError(
                path,
                "dataset missing; an hpcdiff features file has frame_file, frame_index, features",
                dataset=f"/{name}",
            )
    attrs = h5.attrs
    if "layer" not in attrs:
        raise FormatError(path, "missing attribute 'layer'; not an hpcdiff features file")
    feats = h5["features"]
    if feats.ndim != 2:
        raise FormatError(path, f"expected (n, d), got shape {feats.shape}", dataset="/features")
    n = feats.shape[0]
    for name in ("frame_file", "frame_index"):
        if h5[name].shape != (n,):
            raise FormatError(
                path, f"shape {h5[name].shape} does not match {n} feature rows", dataset=f"/{name}"
            )
    extra = _attr_json(path, attrs, "extra") if "extra" in attrs else {}
    return FeatureMeta(
        layer=str(attrs["layer"]),
        n_features=int(feats.shape[1]),
        weights=_attr_json(path, attrs, "weights"),
        background=_attr_json(path, attrs, "background"),
        config_hash=str(attrs.get("config_hash", "")) or None,
        extra=extra,
    )


def read_feature_meta(path: str | Path) -> FeatureMeta:
    """Only the metadata of a features file (no arrays read)."""
    path = Path(path)
    with open_hdf5(path, what="features file") as h5:
        return _read_meta(path, h5)


def read_features(path: str | Path) -> FeatureSet:
    """Read a whole features file."""
    path = Path(path)
    with open_hdf5(path, what="features file") as h5:
        meta = _read_meta(path, h5)
        files = np.asarray(h5["frame_file"].asstr()[...], dtype=object)
        indices = read_checked(h5["frame_index"], ..., path=path).astype(np.int64)
        features = read_checked(h5["features"], ..., path=path).astype(np.float32, copy=False)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
    return FeatureSet(files, indices, features, meta, attrs)


def iter_feature_batches(
    path: str | Path, *, batch_rows: int = 4096
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(files, indices, features)`` slices of at most ``batch_rows`` rows, in file order."""
    path = Path(path)
    with open_hdf5(path, what="features file") as h5:
        _read_meta(path, h5)
        n = h5["features"].shape[0]
        for start in range(0, n, batch_rows):
            stop = min(start + batch_rows, n)
            yield (
                np.asarray(h5["frame_file"].asstr()[start:stop], dtype=object),
                read_checked(h5["frame_index"], np.s_[start:stop], path=path).astype(np.int64),
                read_checked(h5["features"], np.s_[start:stop], path=path).astype(
                    np.float32, copy=False
                ),
            )


def merge_feature_shards(
    shards: Sequence[str | Path],
    out: str | Path,
    *,
    file_order: Sequence[str] | None = None,
    force: bool = False,
    remove_shards: bool = False,
    block_rows: int = 4096,
) -> Path:
    """Merge rank shards into one features file ordered by frame id.

    Only frame ids are held in memory; features are copied ``block_rows`` rows at a time.

    Parameters
    ----------
    shards
        Features files written by the ranks; all must share layer, weights and background.
    out
        Merged file (written atomically).
    file_order
        Frame files in run order; rows are sorted by (position of the file in it, index).
        Default: sorted by (file name, index).
    force
        Overwrite ``out``.
    remove_shards
        Delete the shards once the merged file is in place.
    block_rows
        Rows copied per block.

    Raises
    ------
    FormatError
        A shard disagrees with the first (naming what differs), a frame appears twice, or a
        frame's file is not in ``file_order``.
    """
    if not shards:
        raise ValueError("merge_feature_shards needs at least one shard")
    ensure_writable(out, force=force)
    metas = [read_feature_meta(s) for s in shards]
    ref = metas[0]
    for shard, meta in zip(shards[1:], metas[1:], strict=True):
        diffs = ref.differences(meta)
        if diffs:
            raise FormatError(shard, f"cannot merge with {shards[0]}: " + "; ".join(diffs))
    # frame ids only (small) decide the order; features are copied block by block
    id_parts = []
    for s in shards:
        with open_hdf5(Path(s)) as h5:
            id_parts.append(
                (np.asarray(h5["frame_file"].asstr()[...], dtype=object), h5["frame_index"][...])
            )
    files = np.concatenate([f for f, _ in id_parts])
    indices = np.concatenate([i for _, i in id_parts]).astype(np.int64)
    shard_of = np.concatenate([np.full(len(f), k) for k, (f, _) in enumerate(id_parts)])
    row_in_shard = np.concatenate([np.arange(len(f)) for f, _ in id_parts])
    if file_order is not None:
        rank = {str(f): i for i, f in enumerate(file_order)}
        missing = sorted({str(f) for f in files} - set(rank))
        if missing:
            raise FormatError(shards[0], f"frame files not in file_order: {missing[:5]}")
        primary = np.asarray([rank[str(f)] for f in files], dtype=np.int64)
    else:
        _, primary = np.unique(files.astype(str), return_inverse=True)
    order = np.lexsort((indices, primary))
    files, indices = files[order], indices[order]
    shard_of, row_in_shard = shard_of[order], row_in_shard[order]
    dup = (files[1:] == files[:-1]) & (indices[1:] == indices[:-1])
    if dup.any():
        k = int(np.flatnonzero(dup)[0]) + 1
        raise FormatError(
            shards[0], f"frame ({files[k]}, {indices[k]}) appears in more than one shard"
        )
    meta = FeatureMeta(
        layer=ref.layer,
        n_features=ref.n_features,
        weights=ref.weights,
        background=ref.background,
        config_hash=ref.config_hash,
        extra={**ref.extra, "merged_from": [str(s) for s in shards]},
    )
    handles = [open_hdf5(Path(s)) for s in shards]
    try:
        with FeatureWriter(out, meta=meta, force=force) as writer:
            for lo in range(0, files.size, block_rows):
                hi = min(lo + block_rows, files.size)
                block = np.empty((hi - lo, ref.n_features), dtype=np.float32)
                for k, h5 in enumerate(handles):
                    pos = np.flatnonzero(shard_of[lo:hi] == k)
                    if pos.size:
                        rows = row_in_shard[lo:hi][pos]
                        sort = np.argsort(rows)  # h5py reads increasing indices
                        block[pos[sort]] = h5["features"][rows[sort]]
                writer.append(list(zip(files[lo:hi], indices[lo:hi], strict=True)), block)
    finally:
        for h5 in handles:
            h5.close()
    if remove_shards:
        for s in shards:
            Path(s).unlink()
    return Path(out)
