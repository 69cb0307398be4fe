"""psana2 source: XTC2 files written here with psana's own DgramEdit (psana's ``pnccd``
test detector, whose ``calib`` and ``photon_energy`` come from the file), read back through
``DataSource``; where psana is not installed, the tests that need it are skipped and the
missing-psana error is checked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.io.cxi import FrameId
from hpcdiff.io.sources import detect_kind, open_source
from hpcdiff.io.sources.psana2 import NOT_INSTALLED

try:
    import psana  # noqa: F401

    HAVE_PSANA = True
except ImportError:
    HAVE_PSANA = False
needs_psana = pytest.mark.skipif(not HAVE_PSANA, reason=NOT_INSTALLED)

N_SEG, N_SS, N_FS = 2, 16, 24
ENERGIES = (9000.0, 9100.0, 9200.0, 9300.0, 9400.0)


def frame(k: int) -> np.ndarray:
    seg = np.arange(N_SEG, dtype=np.float32)[:, None, None]
    return np.broadcast_to(100 * k + seg, (N_SEG, N_SS, N_FS)).astype(np.float32)


def write_xtc2(path: Path) -> Path:
    """Configure, BeginRun, one L1Accept per entry of ENERGIES, EndRun."""
    from psana.dgramedit import AlgDef, DetectorDef, DgramEdit
    from psana.psexp import TransitionId

    size = 1 << 20
    config = DgramEdit(transition_id=TransitionId.Configure, bufsize=size)
    det = config.Detector(
        DetectorDef("amopnccd", "pnccd", "detnum1234"),
        AlgDef("raw", 1, 2, 3),
        {"calib": (np.float32, 3), "photon_energy": (np.float64, 0)},
    )

    def save(dgram: DgramEdit, fh) -> None:
        buf = bytearray(size)
        dgram.save(memoryview(buf))
        fh.write(buf[: dgram.size])

    with open(path, "wb") as fh:
        save(config, fh)
        kw = {"config_dgramedit": config, "bufsize": size}
        save(DgramEdit(transition_id=TransitionId.BeginRun, ts=1, **kw), fh)
        for k, energy in enumerate(ENERGIES):
            dgram = DgramEdit(transition_id=TransitionId.L1Accept, ts=k + 2, **kw)
            det.raw.calib = frame(k)
            det.raw.photon_energy = energy
            dgram.adddata(det.raw)
            save(dgram, fh)
        save(DgramEdit(transition_id=TransitionId.EndRun, ts=99, **kw), fh)
    return path


@needs_psana
def test_xtc2_frames_ids_and_energies(tmp_path):
    path = write_xtc2(tmp_path / "run0001.xtc2")
    assert detect_kind(path) == "psana2"
    with open_source([path]) as src:
        assert src.slab_shape == (N_SEG * N_SS, N_FS) and src.n_frames == len(ENERGIES)
        assert src.frame_ids == [FrameId(str(path), k) for k in range(len(ENERGIES))]
        block = src.read(1, 4)
        for n, k in enumerate(range(1, 4)):
            np.testing.assert_array_equal(block[n], frame(k).reshape(N_SEG * N_SS, N_FS))
        # backwards: the file is read again from its start
        np.testing.assert_array_equal(src.read(0, 1)[0], frame(0).reshape(-1, N_FS))
        picked = src.read_ids([FrameId(str(path), 4), FrameId(str(path), 2)])
        np.testing.assert_array_equal(picked[0], frame(4).reshape(-1, N_FS))
        np.testing.assert_array_equal(picked[1], frame(2).reshape(-1, N_FS))
        np.testing.assert_allclose(src.frame_values(0, 5)["photon_energy_ev"], ENERGIES)
        summary = src.describe()
    assert summary["detector"] == "amopnccd" and summary["read_with"] == "det.raw.calib"


@needs_psana
def test_unknown_detector_is_named(tmp_path):
    from hpcdiff.errors import FormatError

    path = write_xtc2(tmp_path / "run0002.xtc2")
    with pytest.raises(FormatError, match="no detector 'jungfrau'") as err:
        open_source([path], detector="jungfrau")
    assert "amopnccd" in str(err.value)


def test_missing_psana_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "run.xtc2"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "psana", None)  # as if psana were not installed
    with pytest.raises(ImportError, match=r"psana2 not installed: pip install hpcdiff\[psana\]"):
        open_source([path])
