"""Which VGG16 checkpoints are on this machine, and what each one is.

:func:`find_weights` lists the places hpcdiff looks (the torch hub cache, honouring
``TORCH_HOME``; ``$HPCDIFF_WEIGHTS``; ``/tmp/hpcdiff-weights/``; the ``[features] weights``
of given job files).  :func:`verify_checkpoint` reads one checkpoint and reports its SHA-256,
keys and shapes against torchvision's ``vgg16()``, the feature layers it can give, whether it
looks pretrained and what its JSON sidecar says, listing every problem instead of stopping at
the first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcdiff.errors import FormatError
from hpcdiff.features.download import hash_prefix_from_name
from hpcdiff.features.layers import CLASSIFIER_LAYERS, CONV_LAYERS, LAYER_SIZES

#: Where ``shared/tools/vgg16-imagenet-conv`` writes ImageNet conv-only weights.
CONV_ONLY_DIR = Path("/tmp/hpcdiff-weights")
CONV_ONLY_DEFAULT = CONV_ONLY_DIR / "vgg16_features_imagenet_caffe.pth"


@dataclass(frozen=True)
class Candidate:
    """One place weights may be.

    Attributes
    ----------
    where
        Why it is listed: ``"torch hub cache"``, ``"$HPCDIFF_WEIGHTS"``, a job file and key...
    spec
        What to write as ``[features] weights`` to use it.
    path
        The file, or ``None`` for ``random:SEED``.
    """

    where: str
    spec: str
    path: Path | None

    @property
    def exists(self) -> bool:
        return self.path is None or self.path.is_file()


@dataclass
class CheckpointReport:
    """What :func:`verify_checkpoint` found in one checkpoint file.

    ``problems`` lists everything that stops hpcdiff from using the file (empty: usable);
    ``notes`` what a user should know anyway.
    """

    path: Path
    size_bytes: int
    sha256: str
    n_tensors: int = 0
    n_params: int = 0
    kind: str = "unreadable"
    layers: tuple[str, ...] = ()
    pretrained: bool | None = None
    pretrained_reason: str = ""
    sidecar: Path | None = None
    preprocessing: str = "torchvision (RGB, ImageNet mean/std)"
    published_prefix: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    bad_shapes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "n_tensors": self.n_tensors,
            "n_params": self.n_params,
            "kind": self.kind,
            "layers": list(self.layers),
            "pretrained": self.pretrained,
            "pretrained_reason": self.pretrained_reason,
            "sidecar": None if self.sidecar is None else str(self.sidecar),
            "preprocessing": self.preprocessing,
            "published_sha256_prefix": self.published_prefix,
            "missing_keys": self.missing_keys,
            "unknown_keys": self.unknown_keys,
            "bad_shapes": self.bad_shapes,
            "problems": self.problems,
            "notes": self.notes,
            "ok": self.ok,
        }


def find_weights(job_weights: Iterable[tuple[str, str]] = ()) -> list[Candidate]:
    """The places hpcdiff looks for VGG16 weights, in the order ``hpcdiff demo`` tries them.

    Parameters
    ----------
    job_weights
        ``(job file, [features] weights value)`` pairs to add, e.g. from ``--job``.

    Returns
    -------
    list of Candidate
        Hub cache, ``$HPCDIFF_WEIGHTS`` (if set), every ``*.pth`` in ``/tmp/hpcdiff-weights``
        (the conv-only default listed even when absent), then the jobs' weights; each path
        once.
    """
    from hpcdiff.features.weights import hub_checkpoint_path

    out: list[Candidate] = [Candidate("torch hub cache", "hub", hub_checkpoint_path())]
    env = os.environ.get("HPCDIFF_WEIGHTS")
    if env:
        out.append(Candidate("$HPCDIFF_WEIGHTS", env, Path(env).expanduser()))
    found = sorted(CONV_ONLY_DIR.glob("*.pth")) if CONV_ONLY_DIR.is_dir() else []
    for path in found or [CONV_ONLY_DEFAULT]:
        out.append(Candidate(f"{CONV_ONLY_DIR}/", str(path), path))
    for job, spec in job_weights:
        where = f"{job} [features] weights"
        if spec == "hub":
            out.append(Candidate(where, spec, hub_checkpoint_path()))
        elif spec.startswith("random:"):
            out.append(Candidate(where, spec, None))
        else:
            out.append(Candidate(where, spec, Path(spec).expanduser()))
    seen: set[str] = set()
    unique: list[Candidate] = []
    for c in out:
        key = c.spec if c.path is None else str(c.path.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _load_state(path: Path) -> Mapping[str, Any]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zipfile" not in str(exc):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def verify_checkpoint(path: str | Path) -> CheckpointReport:
    """Read a checkpoint and report what it is and every reason it cannot be used.

    Parameters
    ----------
    path
        A ``torch.save`` d state dict.

    Returns
    -------
    CheckpointReport
        ``kind`` is ``"full"`` (torchvision VGG16 with fc6/fc7: every layer),
        ``"conv-only"`` (``features.*`` only: pool5, gap), ``"incomplete"`` or
        ``"not a VGG16 state dict"``.

    Raises
    ------
    FormatError
        If ``path`` does not exist or cannot be read at all.
    """
    from hpcdiff.features.hashcache import cached_sha256
    from hpcdiff.features.weights import (
        _expected_shapes,
        _preprocessing_from_sidecar,
        _read_sidecar,
    )

    path = Path(path).expanduser()
    if not path.is_file():
        raise FormatError(path, "checkpoint file not found")
    try:
        sha = cached_sha256(path)
    except OSError as exc:
        raise FormatError(path, f"cannot read checkpoint ({exc.strerror})") from None
    report = CheckpointReport(path=path.resolve(), size_bytes=path.stat().st_size, sha256=sha)
    report.published_prefix = hash_prefix_from_name(path.name)
    if report.published_prefix is not None and not sha.startswith(report.published_prefix):
        report.problems.append(
            f"the name publishes SHA-256 prefix {report.published_prefix} but the file's "
            f"SHA-256 is {sha}: a truncated or corrupted copy; download it again "
            "(`hpcdiff weights download --force`)"
        )
    try:
        state = _load_state(path)
    except Exception as exc:  # torch raises many types for a bad archive  # noqa: BLE001
        report.problems.append(f"not a torch state dict readable without pickle ({exc})")
        return report
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        report.kind = "not a VGG16 state dict"
        report.problems.append("expected a dict of tensors keyed like torchvision's vgg16()")
        return report
    expected = _expected_shapes()
    report.n_tensors = len(state)
    report.n_params = int(sum(int(v.numel()) for v in state.values() if hasattr(v, "numel")))
    report.unknown_keys = sorted(set(state) - set(expected))
    report.missing_keys = sorted(set(expected) - set(state))
    for key in sorted(set(state) & set(expected)):
        shape = tuple(state[key].shape)
        if shape != expected[key]:
            report.bad_shapes.append(f"{key} {shape}, vgg16() expects {expected[key]}")
    conv = {k for k in expected if k.startswith("features.")}
    fc = {k for k in expected if k.startswith(("classifier.0", "classifier.3"))}
    have = set(state)
    if report.unknown_keys:
        report.kind = "not a VGG16 state dict"
        listed = ", ".join(report.unknown_keys[:6]) + (
            " ..." if len(report.unknown_keys) > 6 else ""
        )
        report.problems.append(f"keys not in torchvision's vgg16(): {listed}")
    if report.bad_shapes:
        report.problems.append("wrong shapes: " + "; ".join(report.bad_shapes[:6]))
    if not conv <= have:
        missing = sorted(conv - have)
        report.problems.append(f"missing convolution weights {missing[:6]}")
        report.kind = report.kind if report.unknown_keys else "incomplete"
    elif not report.unknown_keys and not report.bad_shapes:
        if fc <= have:
            report.kind = "full"
            report.layers = tuple(LAYER_SIZES)
            if "classifier.6.weight" not in have:
                report.notes.append("no fc8 (classifier.6): not needed for features")
        else:
            report.kind = "conv-only"
            report.layers = tuple(sorted(CONV_LAYERS))
            if fc & have:
                report.notes.append(
                    f"partial classifier weights {sorted(fc & have)}: ignored, "
                    f"{'/'.join(sorted(CLASSIFIER_LAYERS))} need all of {sorted(fc)}"
                )
    # sidecar: declared hash and preprocessing
    sidecar = path.with_suffix(".json")
    meta = None
    if sidecar.is_file():
        report.sidecar = sidecar.resolve()
        try:
            meta = _read_sidecar(path, sha)
            if meta is not None:
                pre = _preprocessing_from_sidecar(sidecar, meta)
                report.preprocessing = (
                    f"{pre['style']} ({pre['channel_order']}, x{pre['scale']:g}, "
                    f"mean {pre['mean']})"
                )
        except FormatError as exc:
            report.problems.append(f"sidecar: {exc}")
    _judge_pretrained(report, state, meta)
    return report


def _judge_pretrained(
    report: CheckpointReport, state: Mapping[str, Any], meta: Mapping[str, Any] | None
) -> None:
    """Whether the weights look trained: zero biases everywhere mark an initialisation."""
    biases = [v for k, v in state.items() if k.endswith(".bias") and hasattr(v, "abs")]
    all_zero = bool(biases) and all(float(b.abs().max()) == 0.0 for b in biases)
    declared = meta.get("pretrained") if meta is not None else None
    if declared is False:
        report.pretrained, report.pretrained_reason = False, "its sidecar says pretrained: false"
    elif all_zero:
        report.pretrained = False
        report.pretrained_reason = (
            "every bias is exactly zero: an untrained initialisation, not ImageNet weights"
        )
    elif report.published_prefix == "397923af" and report.sha256.startswith("397923af"):
        report.pretrained = True
        report.pretrained_reason = "torchvision's ImageNet VGG16 (published hash matches)"
    elif meta is not None and isinstance(meta.get("provenance"), Mapping):
        origin = str(meta["provenance"].get("original_weights", "see sidecar"))
        report.pretrained = True
        report.pretrained_reason = f"sidecar provenance: {origin[:120]}"
    elif biases:
        report.pretrained = True
        report.pretrained_reason = "trained (non-zero) biases; source not recorded"
