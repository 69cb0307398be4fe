"""European XFEL run directories through extra-data: runs written with extra-data's own
mock-data helpers (``extra_data.tests.mockdata``, shipped in its wheel), frame values that
encode (module, train, pulse) so the slab layout and the train/pulse ids can be checked."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.sources import detect_kind, open_source

pytest.importorskip("extra_data", reason="extra-data not installed: pip install hpcdiff[euxfel]")
from extra_data.tests.mockdata import write_file  # noqa: E402
from extra_data.tests.mockdata.detectors import AGIPDModule  # noqa: E402
from extra_data.tests.mockdata.jungfrau import JUNGFRAUModule  # noqa: E402

from hpcdiff.io.sources.euxfel import (  # noqa: E402
    PULSE_BASE,
    EuXFELSource,
    frame_id,
    train_pulse,
)

FIRST_TRAIN = 10000


def _agipd_source(m: int) -> str:
    return f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"


def value(module: int, train: int, pulse: int) -> float:
    return module * 1000 + (train - FIRST_TRAIN) * 100 + pulse


def make_agipd_run(
    run: Path, *, ntrains: int = 3, per_train: int = 4, modules=range(16), gaps=None
) -> Path:
    """A corrected AGIPD 1M run; pulse ids 2k + 1; ``gaps``: module -> per-train counts."""
    run.mkdir(parents=True, exist_ok=True)
    for m in modules:
        counts = (gaps or {}).get(m, per_train)
        write_file(
            str(run / f"CORR-R0001-AGIPD{m:02}-S00000.h5"),
            [
                AGIPDModule(
                    f"SPB_DET_AGIPD1M-1/CORR/{m}CH0",
                    channel_name="output",
                    raw=False,
                    frames_per_train=counts,
                )
            ],
            ntrains=ntrains,
            chunksize=ntrains,
            format_version="1.2",
        )
        with h5py.File(run / f"CORR-R0001-AGIPD{m:02}-S00000.h5", "r+") as h5:
            image = h5[f"INSTRUMENT/{_agipd_source(m)}/image"]
            pulses = image["pulseId"][:] * 2 + 1
            image["pulseId"][:] = pulses
            trains = image["trainId"][:]
            for i, (t, p) in enumerate(zip(trains, pulses, strict=True)):
                image["data"][i] = value(m, int(t), int(p))
    return run


def test_agipd_modules_fill_the_slab_and_ids_are_train_and_pulse(tmp_path):
    run = make_agipd_run(tmp_path / "r0001")
    assert detect_kind(run) == "euxfel"
    with open_source([run]) as src:
        assert isinstance(src, EuXFELSource)
        assert src.slab_shape == (16 * 512, 128) and src.n_frames == 12
        want = [frame_id(str(run), FIRST_TRAIN + t, 2 * k + 1) for t in range(3) for k in range(4)]
        assert src.frame_ids == want
        assert train_pulse(want[5]) == (FIRST_TRAIN + 1, 3)
        assert str(want[5]) == f"{run}//{(FIRST_TRAIN + 1) * PULSE_BASE + 3}"
        block = src.read(2, 9)  # across trains
        assert block.dtype == np.float32 and block.shape == (7, 8192, 128)
        for n, fid in enumerate(want[2:9]):
            train, pulse = train_pulse(fid)
            modules = block[n].reshape(16, 512, 128)
            for m in range(16):
                assert np.all(modules[m] == value(m, train, pulse)), (m, fid)
        picked = src.read_ids([want[11], want[0]])
        np.testing.assert_array_equal(picked, src.read(11, 12).tolist() + src.read(0, 1).tolist())
        values = src.frame_values(0, 3)  # no geometry: nothing per frame
        assert values == {}
        summary = src.describe()
    assert summary["trains"] == 3 and summary["frames_per_train"] == [4]
    assert summary["detector"] == "AGIPD1M SPB_DET_AGIPD1M-1" and summary["missing_modules"] == []


def test_missing_train_and_missing_module(tmp_path):
    # module 5 has no frames in the second train; module 9 is not in the run at all
    run = make_agipd_run(
        tmp_path / "r0002",
        modules=[m for m in range(16) if m != 9],
        gaps={5: np.array([4, 0, 4], dtype=np.uint64)},
    )
    with EuXFELSource([run]) as src:
        assert src.n_frames == 12 and src.missing_modules == [9]
        frames = src.read(0, 12).reshape(12, 16, 512, 128)
        ids = src.frame_ids
    second = [k for k, f in enumerate(ids) if train_pulse(f)[0] == FIRST_TRAIN + 1]
    assert len(second) == 4
    assert np.isnan(frames[second, 5]).all()  # the frame is rejected as holding NaN
    others = [k for k in range(12) if k not in second]
    assert np.isfinite(frames[others]).all()
    assert (frames[:, 9] == 0).all()  # absent module: dead pixels
    train, pulse = train_pulse(ids[others[0]])
    assert (frames[others[0], 4] == value(4, train, pulse)).all()


def test_jungfrau_modules_and_memory_cells(tmp_path):
    run = tmp_path / "r0003"
    run.mkdir()
    for m in (1, 2):
        path = run / f"CORR-R0003-JNGFR{m:02}-S00000.h5"
        write_file(
            str(path),
            [JUNGFRAUModule(f"SPB_IRDA_JF4M/CORR/JNGFR{m:02}")],
            ntrains=2,
            chunksize=1,
            format_version="1.0",
        )
        with h5py.File(path, "r+") as h5:
            adc = h5[f"INSTRUMENT/SPB_IRDA_JF4M/CORR/JNGFR{m:02}:daqOutput/data/adc"]
            adc[1, 3] = 100 * m + 3  # train 2, memory cell position 3
    with open_source([run]) as src:
        assert src.slab_shape == (1024, 1024) and src.n_frames == 2 * 16
        fid = frame_id(str(run), FIRST_TRAIN + 1, 3)
        frame = src.read_ids([fid])[0]
        assert (frame[:512] == 103).all() and (frame[512:] == 203).all()
        assert (src.read_ids([frame_id(str(run), FIRST_TRAIN + 1, 2)]) == 0).all()


def test_errors_name_the_run_directory(tmp_path):
    run = tmp_path / "r0004"
    run.mkdir()
    write_file(
        str(run / "RAW-R0004-DA01-S00000.h5"),
        [JUNGFRAUModule("SPB_IRDA_JF4M/DET/JNGFR01")],
        ntrains=1,
        chunksize=1,
        format_version="1.0",
    )
    with pytest.raises(FormatError, match="detector") as err:
        EuXFELSource([run], detector_type="AGIPD1M")
    assert str(run) in str(err.value)
    with pytest.raises(FormatError, match="no such folder"):
        EuXFELSource([tmp_path / "nope"])
    with pytest.raises(KeyError, match="not in this run"):
        EuXFELSource([run]).global_numbers([FrameId(str(run), 5)])


def test_extra_geom_geometry_places_the_modules_the_source_reads(tmp_path):
    """EXtra-geom's CrystFEL file (dim1 = module) read by hpcdiff describes the slab the
    source assembles: pixel positions per module equal EXtra-geom's own."""
    extra_geom = pytest.importorskip("extra_geom", reason="EXtra-geom not installed")
    from hpcdiff.geometry import pixel_positions_m
    from hpcdiff.io.geom import read_geom

    quads = [(-525, 625), (-550, -10), (520, -160), (542.5, 475)]
    geom_xg = extra_geom.AGIPD_1MGeometry.from_quad_positions(quads)
    path = tmp_path / "agipd.geom"
    geom_xg.write_crystfel_geom(str(path), dims=("frame", "modno", "ss", "fs"), clen=0.1)
    geom = read_geom(path)
    run = make_agipd_run(tmp_path / "r0005", ntrains=1, per_train=2)
    with EuXFELSource([run], geometry=geom) as src:
        assert src.slab_shape == tuple(geom.slab_shape) == (8192, 128)
    ours = pixel_positions_m(geom).reshape(16, 512, 128, 3)
    theirs = geom_xg.get_pixel_positions()  # (16, 512, 128, 3) m, pixel centres
    np.testing.assert_allclose(ours[..., :2], theirs[..., :2], atol=1e-9)


def test_crystfel_list_lines_name_train_and_pulse(tmp_path):
    """Label lists written as ``r0001 //train*10000+pulse`` match the run's frames."""
    from hpcdiff.io.labels_text import read_label_lists

    run = make_agipd_run(tmp_path / "r0001", ntrains=2, per_train=2)
    with EuXFELSource([run]) as src:
        ids = src.frame_ids
    hit = tmp_path / "diffuse.lst"
    rest = tmp_path / "non-diffuse.lst"
    hit.write_text(f"r0001 //{(FIRST_TRAIN + 1) * PULSE_BASE + 3}\n")  # base name, train, pulse
    rest.write_text(f"{run} //{FIRST_TRAIN * PULSE_BASE + 1}\n")
    labels = read_label_lists([(hit, None), (rest, None)])
    rows = labels.match_run(ids)
    want = {ids.index(frame_id(str(run), FIRST_TRAIN + 1, 3)), 0}
    assert set(rows.tolist()) == want and len(rows) == 2
