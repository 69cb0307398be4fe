"""Frame sources: which reader opens a run's inputs, chosen by the job file or by the inputs.

``[experiment] source`` picks the reader:

``"cxi"``
    CXI/HDF5 files (:class:`hpcdiff.io.cxi.FrameSource`);
``"euxfel"``
    European XFEL run directories, AGIPD or JUNGFRAU (:mod:`hpcdiff.io.sources.euxfel`,
    needs ``pip install hpcdiff[euxfel]``);
``"nxmx"``
    NeXus/NXmx files, geometry from their NXtransformations
    (:mod:`hpcdiff.io.sources.nxmx`);
``"psana2"``
    LCLS-II XTC2 files through psana2's ``DataSource`` (:mod:`hpcdiff.io.sources.psana2`,
    needs psana);
``"auto"`` (default)
    From the first input: a folder holding ``RAW-R*``/``CORR-R*`` files is a European XFEL
    run, an ``.xtc2`` file is psana2, an HDF5 file with an ``NXentry`` of
    ``definition = NXmx`` is NXmx, any other file CXI.

Every source offers the :class:`~hpcdiff.io.sources.base.FrameReaderSource` interface
and names frames by :class:`~hpcdiff.io.cxi.FrameId`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcdiff.errors import FormatError

if TYPE_CHECKING:
    from hpcdiff.config import JobConfig
    from hpcdiff.io.geom import DetectorGeometry
    from hpcdiff.io.sources.base import FrameReaderSource

SOURCE_KINDS = ("auto", "cxi", "euxfel", "nxmx", "psana2")


def detect_kind(path: str | Path) -> str:
    """``"euxfel"``, ``"psana2"``, ``"nxmx"`` or ``"cxi"`` for one input (see module doc).

    Raises
    ------
    FormatError
        For a folder that is not a European XFEL run, or a path that does not exist.
    """
    from hpcdiff.io.sources.euxfel import is_run_directory
    from hpcdiff.io.sources.nxmx import is_nxmx

    p = Path(path)
    if p.is_dir():
        if is_run_directory(p):
            return "euxfel"
        raise FormatError(
            p,
            "a folder, but not a European XFEL run directory (expected RAW-R*-S*.h5 or "
            "CORR-R*-S*.h5 files in it); list frame files, not folders, for other sources",
        )
    if not p.exists():
        raise FormatError(p, "input not found: it does not exist")
    if p.suffix.lower() == ".xtc2":
        return "psana2"
    if is_nxmx(p):
        return "nxmx"
    return "cxi"


def open_source(
    inputs: Sequence[str | Path],
    *,
    kind: str = "auto",
    geometry: DetectorGeometry | None = None,
    data_path: str | None = None,
    detector: str | None = None,
) -> FrameReaderSource:
    """Open a run's inputs with the reader ``kind`` names (``"auto"``: :func:`detect_kind`).

    Parameters
    ----------
    inputs
        Files (CXI, NXmx, XTC2) or European XFEL run directories, in run order.
    kind
        One of :data:`SOURCE_KINDS`.
    geometry
        CrystFEL geometry (NXmx: overrides the files' own; European XFEL: the assembled
        slab's, e.g. an EXtra-geom file).
    data_path
        Frame dataset of CXI files.
    detector
        European XFEL detector name or psana2 detector name, where a run holds several.
    """
    if kind not in SOURCE_KINDS:
        raise ValueError(f"source {kind!r}: choose one of {', '.join(SOURCE_KINDS)}")
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise ValueError("a frame source needs at least one input")
    if kind == "auto":
        kinds = {detect_kind(p) for p in inputs}
        if len(kinds) > 1:
            raise FormatError(
                inputs[0],
                f"the run mixes inputs of different sources ({', '.join(sorted(kinds))}); "
                "one run is one kind of input",
            )
        (kind,) = kinds
    if kind == "cxi":
        from hpcdiff.io.cxi import FrameSource

        return FrameSource(inputs, geometry=geometry, data_path=data_path)
    if kind == "euxfel":
        from hpcdiff.io.sources.euxfel import EuXFELSource

        return EuXFELSource(inputs, geometry=geometry, detector=detector or None)
    if kind == "nxmx":
        from hpcdiff.io.sources.nxmx import NXmxSource

        return NXmxSource(inputs, geometry=geometry)
    from hpcdiff.io.sources.psana2 import PsanaSource

    return PsanaSource(inputs, geometry=geometry, detector=detector or None)


def open_job_source(
    job: JobConfig, inputs: Sequence[str | Path], *, geometry: DetectorGeometry | None
) -> FrameReaderSource:
    """:func:`open_source` with the job's ``[experiment]`` source, data path and detector."""
    exp = job.experiment
    return open_source(
        inputs,
        kind=getattr(exp, "source", "auto"),
        geometry=geometry,
        data_path=exp.data_path,
        detector=getattr(exp, "detector", None),
    )


def describe_source(path: str | Path, *, kind: str = "auto") -> dict[str, Any]:
    """:meth:`describe` of the source that reads ``path`` (for ``hpcdiff inspect``)."""
    with open_source([path], kind=kind) as src:
        describe = getattr(src, "describe", None)
        if describe is None:  # CXI: FrameSource has summarise_cxi instead
            return {"source": kind, "n_frames": src.n_frames, "slab_shape": list(src.slab_shape)}
        return dict(describe())


__all__ = ["SOURCE_KINDS", "describe_source", "detect_kind", "open_job_source", "open_source"]
