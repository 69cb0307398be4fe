"""Which frame of a run a CrystFEL stream chunk names, for every frame source.

A chunk names its frame by ``Image filename`` and ``Event``.  The conventions, per source:

CXI (``source = "cxi"``)
    ``Image filename: run_0001.cxi`` + ``Event: //N``: frame ``N`` of that file
    (:class:`~hpcdiff.io.cxi.FrameId` ``(file, N)``); no event: frame 0.
NXmx (``"nxmx"``)
    As CrystFEL reads Eiger/NXmx data: ``Image filename: x_master.h5`` + ``Event: //N``,
    ``N`` counting through the master's frames (all its ``data_NNNNNN`` blocks in order),
    which is the index of hpcdiff's ``FrameId(x_master.h5, N)``.
European XFEL (``"euxfel"``)
    hpcdiff names a frame ``FrameId(run_dir, train_id * 10000 + pulse)``
    (:func:`hpcdiff.io.sources.euxfel.frame_id`), and a stream names it the same way:
    ``Image filename: .../r0142`` (the run directory) + ``Event: //100000120042``
    (train 10000012, pulse 42).  CrystFEL itself reads European XFEL data through a
    virtual CXI file (``extra-data-make-virtual-cxi``), whose ``//N`` is a position in
    that file: for such a stream list the virtual ``.cxi`` file as the job's frames
    (``source = "cxi"``), so that the stream and the frames name the same file.
psana2 (``"psana2"``)
    ``Image filename: run.xtc2`` + ``Event: //N``, ``N`` the event's position in the run
    (hpcdiff's ``FrameId``).

Folders are ignored (a stream records the paths the indexer saw): the file or run
directory is matched by its last path component.  A chunk naming another file is not
this run's (a stream may cover several runs) and is skipped; a chunk naming a file of
the run but a frame the run does not have is an error (:class:`~hpcdiff.errors.FormatError` naming the stream line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId

if TYPE_CHECKING:
    from hpcdiff.io.stream import Chunk

__all__ = ["FrameMatcher", "check_stream_frames"]


def _name(path: str) -> str:
    return Path(path.rstrip("/")).name


class FrameMatcher:
    """Global frame numbers of stream chunks, by the run's :class:`FrameId` list.

    Parameters
    ----------
    frame_ids
        The run's frames, in global order (the source's ``frame_ids``).
    kind
        The source kind (``"cxi"``, ``"nxmx"``, ``"euxfel"``, ``"psana2"``).
    """

    def __init__(self, frame_ids: Sequence[FrameId], *, kind: str) -> None:
        self.kind = kind
        self._index = {(_name(f.file), int(f.index)): k for k, f in enumerate(frame_ids)}
        self._names = {_name(f.file) for f in frame_ids}

    def number(
        self, image_filename: str, event_index: int | None, *, stream: str = "", line: int = 0
    ) -> int | None:
        """Global number of the frame a chunk names; ``None`` for a file outside the run.

        Raises
        ------
        FormatError
            When the chunk names a file (or run directory) of the run but a frame the run
            does not have, or, for a European XFEL run, gives no event.
        """
        name = _name(image_filename)
        if name not in self._names:
            return None
        if event_index is None:
            if self.kind == "euxfel":
                raise FormatError(
                    stream or "<stream>",
                    f"chunk names run directory {name} without an event; European XFEL "
                    "frames are named 'Event: //<train_id * 10000 + pulse>'",
                    line=line or None,
                )
            event_index = 0
        found = self._index.get((name, int(event_index)))
        if found is None:
            what = (
                f"train {event_index // 10000}, pulse {event_index % 10000}"
                if self.kind == "euxfel"
                else f"frame {event_index}"
            )
            raise FormatError(
                stream or "<stream>",
                f"chunk names {what} of {name} (Event //{event_index}), which the run's "
                f"{self.kind} source does not have; is the stream from another version of "
                "these files?",
                line=line or None,
            )
        return found


def check_stream_frames(
    chunks: Sequence[Chunk], frame_ids: Sequence[FrameId], *, kind: str, stream: str
) -> tuple[int, list[FormatError]]:
    """How many chunks with a crystal name a frame of the run, and the errors of those that
    name a frame of the run's files the run does not have (for ``hpcdiff check``)."""
    matcher = FrameMatcher(frame_ids, kind=kind)
    n_matched = 0
    errors: list[FormatError] = []
    for chunk in chunks:
        if not chunk.crystals:
            continue
        try:
            found = matcher.number(
                chunk.image_filename, chunk.frame_index, stream=stream, line=chunk.line
            )
        except FormatError as exc:
            errors.append(exc)
            continue
        n_matched += found is not None
    return n_matched, errors
