"""NXmx frame source: files written with h5py to the NXmx definition (nexgen is not used:
h5py writes every field the reader needs); geometry from NXtransformations checked against
pixel positions computed here from the same transformations, frames and ids read back."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError
from hpcdiff.geometry import pixel_positions_m
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.geom import HC_EV_M
from hpcdiff.io.sources import detect_kind, open_source
from hpcdiff.io.sources.nxmx import NXmxSource, is_nxmx, read_nxmx

PIXEL_MM = 0.5
DISTANCE_MM = 120.0
N_SS, N_FS = 24, 32  # per module; two modules stacked along slow scan in the image
WAVELENGTH_A = 1.3


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _translation(group, name, value, vector, depends_on, *, units="mm", offset=None):
    d = group.create_dataset(name, data=value)
    d.attrs["transformation_type"] = "translation"
    d.attrs["vector"] = np.asarray(vector, dtype=float)
    d.attrs["units"] = units
    d.attrs["depends_on"] = depends_on
    if offset is not None:
        d.attrs["offset"] = np.asarray(offset, dtype=float)
        d.attrs["offset_units"] = "mm"
    return d


def write_nxmx(
    path: Path,
    frames: np.ndarray,
    *,
    two_theta_deg: float = 0.0,
    offsets_mm: tuple[tuple[float, float, float], ...] = ((8.0, 10.0, 0.0), (8.0, -2.0, 1.0)),
    per_frame_wavelength: np.ndarray | None = None,
) -> Path:
    """An NXmx file: two modules, detector on a two-theta arm, frames ``(n, 2 N_SS, N_FS)``."""
    with h5py.File(path, "w") as h5:
        entry = h5.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXmx"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        data.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]))
        ins = entry.create_group("instrument")
        ins.attrs["NX_class"] = "NXinstrument"
        beam = ins.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        wl = beam.create_dataset(
            "incident_wavelength",
            data=WAVELENGTH_A if per_frame_wavelength is None else per_frame_wavelength,
        )
        wl.attrs["units"] = "angstrom"
        det = ins.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        det["depends_on"] = "/entry/instrument/detector/transformations/det_z"
        det.create_dataset("distance", data=DISTANCE_MM).attrs["units"] = "mm"
        det.create_dataset("beam_center_x", data=16.0).attrs["units"] = "pixel"
        det.create_dataset("beam_center_y", data=20.0).attrs["units"] = "pixel"
        det["saturation_value"] = 60000
        tr = det.create_group("transformations")
        tr.attrs["NX_class"] = "NXtransformations"
        arm = tr.create_dataset("two_theta", data=two_theta_deg)
        arm.attrs.update(
            {
                "transformation_type": "rotation",
                "vector": [0.0, 1.0, 0.0],
                "units": "deg",
                "depends_on": ".",
            }  # fmt: skip
        )
        _translation(tr, "det_z", DISTANCE_MM, (0, 0, 1), "two_theta")  # relative reference
        for m, offset in enumerate(offsets_mm):
            mod = det.create_group(f"module{m}")
            mod.attrs["NX_class"] = "NXdetector_module"
            mod["data_origin"] = np.array([m * N_SS, 0])
            mod["data_size"] = np.array([N_SS, N_FS])
            _translation(
                mod, "module_offset", 0.0, (1, 0, 0),
                "/entry/instrument/detector/transformations/det_z", offset=offset,
            )  # fmt: skip
            _translation(mod, "fast_pixel_direction", PIXEL_MM, (-1, 0, 0), "module_offset")
            _translation(mod, "slow_pixel_direction", PIXEL_MM, (0, -1, 0), "module_offset")
    return path


def expected_positions_m(two_theta_deg: float, offsets_mm) -> np.ndarray:
    """Pixel centres ``(2 N_SS, N_FS, 3)`` m from the transformations, written out by hand."""
    out = np.empty((2 * N_SS, N_FS, 3))
    f = np.arange(N_FS) + 0.5
    s = np.arange(N_SS) + 0.5
    fast, slow = np.array([-1.0, 0, 0]), np.array([0, -1.0, 0])
    for m, offset in enumerate(offsets_mm):
        local = (
            np.asarray(offset)[None, None]
            + PIXEL_MM * f[None, :, None] * fast
            + PIXEL_MM * s[:, None, None] * slow
        )
        lab = (local + np.array([0, 0, DISTANCE_MM])) @ _rot_y(two_theta_deg).T
        out[m * N_SS : (m + 1) * N_SS] = lab * 1e-3
    return out


@pytest.fixture
def frames() -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.integers(0, 1000, (5, 2 * N_SS, N_FS)).astype(np.uint16)


@pytest.mark.parametrize("two_theta", [0.0, 12.0])
def test_pixel_positions_follow_the_transformation_chains(tmp_path, frames, two_theta):
    offsets = ((8.0, 10.0, 0.0), (8.0, -2.0, 1.5))
    path = write_nxmx(tmp_path / "a.nxs", frames, two_theta_deg=two_theta, offsets_mm=offsets)
    info = read_nxmx(path)
    geom = info.geometry
    assert geom.slab_shape == (2 * N_SS, N_FS) and len(geom.panels) == 2
    got = pixel_positions_m(geom)
    np.testing.assert_allclose(got, expected_positions_m(two_theta, offsets), atol=1e-9)
    assert info.pixel_size_m == pytest.approx((PIXEL_MM * 1e-3, PIXEL_MM * 1e-3))
    assert info.distance_m == pytest.approx(DISTANCE_MM * 1e-3)
    assert geom.photon_energy == pytest.approx(HC_EV_M / (WAVELENGTH_A * 1e-10))
    assert all(p.max_adu == 60000 for p in geom.panels)
    if two_theta == 0.0:
        # the beam (z axis) meets module 0 at fast = 8 mm / 0.5 mm = 16 px, slow = 20 px
        assert info.beam_centre_px == pytest.approx((16.0, 20.0))
        assert info.beam_centre_px == pytest.approx(info.beam_centre_given_px)


def test_frames_ids_and_values_read_back(tmp_path, frames):
    path = write_nxmx(tmp_path / "run.h5", frames, per_frame_wavelength=np.linspace(1.0, 1.4, 5))
    assert is_nxmx(path) and detect_kind(path) == "nxmx"
    with open_source([path]) as src:
        assert isinstance(src, NXmxSource)
        assert src.n_frames == 5 and src.slab_shape == (2 * N_SS, N_FS)
        assert src.frame_ids == [FrameId(str(path), i) for i in range(5)]
        block = src.read(1, 4)
        assert block.dtype == np.float32
        np.testing.assert_array_equal(block, frames[1:4].astype(np.float32))
        picked = src.read_ids([FrameId(str(path), 4), FrameId(str(path), 0)])
        np.testing.assert_array_equal(picked, frames[[4, 0]].astype(np.float32))
        values = src.frame_values(0, 5)
        np.testing.assert_allclose(
            values["photon_energy_ev"], HC_EV_M / (np.linspace(1.0, 1.4, 5) * 1e-10)
        )
        np.testing.assert_allclose(values["clen_m"], DISTANCE_MM * 1e-3)
        with pytest.raises(KeyError, match="not in this run"):
            src.global_numbers([FrameId(str(path), 5)])
        summary = src.describe()
    assert summary["n_frames"] == 5 and summary["dtype"] == "uint16"
    assert summary["modules"] == 2 and summary["beam_centre_px"] == pytest.approx([16.0, 20.0])


def test_plain_hdf5_is_not_nxmx_and_bad_chains_are_named(tmp_path, frames):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["entry_1/data_1/data"] = frames
    assert not is_nxmx(plain) and detect_kind(plain) == "cxi"
    with pytest.raises(FormatError, match="not an NXmx file"):
        read_nxmx(plain)
    bad = write_nxmx(tmp_path / "bad.nxs", frames)
    with h5py.File(bad, "r+") as h5:
        h5["entry/instrument/detector/module1/slow_pixel_direction"].attrs["depends_on"] = "nope"
    with pytest.raises(FormatError, match="names no transformation") as err:
        read_nxmx(bad)
    assert "slow_pixel_direction" in str(err.value) and str(bad) in str(err.value)
    loop = write_nxmx(tmp_path / "loop.nxs", frames)
    with h5py.File(loop, "r+") as h5:
        h5["entry/instrument/detector/transformations/two_theta"].attrs["depends_on"] = "det_z"
    with pytest.raises(FormatError, match="loops back"):
        read_nxmx(loop)


def test_folder_that_is_not_a_run_directory_is_named(tmp_path):
    with pytest.raises(FormatError, match="not a European XFEL run directory") as err:
        detect_kind(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_eiger_style_master_with_external_data_files(tmp_path, frames):
    """``data_000001``, ``data_000002`` external links (as Eiger master files hold them) read
    as one list of frames; a missing data file is an error naming the link."""
    path = write_nxmx(tmp_path / "scan_master.h5", frames[:1])
    for k, part in enumerate((frames[:2], frames[2:]), start=1):
        with h5py.File(tmp_path / f"scan_data_{k:06d}.h5", "w") as h5:
            h5["entry/data/data"] = part
    with h5py.File(path, "r+") as h5:
        data = h5["entry/data"]
        del data["data"]
        del data.attrs["signal"]
        for k in (1, 2):
            data[f"data_{k:06d}"] = h5py.ExternalLink(f"scan_data_{k:06d}.h5", "/entry/data/data")
    with NXmxSource([path]) as src:
        assert src.n_frames == 5
        assert src.frame_ids[-1] == FrameId(str(path), 4)
        np.testing.assert_array_equal(src.read(1, 4), frames[1:4].astype(np.float32))
    (tmp_path / "scan_data_000002.h5").unlink()
    with pytest.raises(FormatError, match="external link") as err:
        NXmxSource([path])
    assert "data_000002" in str(err.value)


def test_pixel_mask_joins_the_bad_pixels(tmp_path, frames):
    """The detector's ``pixel_mask`` (non-zero = bad) is bad in the classify job's mask, also
    when too few frames are judged for bad pixels of its own."""
    from hpcdiff.config import parse_job
    from hpcdiff.geometry import DetectorModel
    from hpcdiff.pipelines.classify import _bad_pixels

    path = write_nxmx(tmp_path / "m.nxs", frames)
    with NXmxSource([path]) as src:
        assert src.pixel_mask() is None
    mask = np.zeros((2 * N_SS, N_FS), np.uint32)
    mask[:, 5] = 1  # a gap column
    mask[30, 7] = 8  # a noisy pixel
    with h5py.File(path, "r+") as h5:
        h5["entry/instrument/detector/pixel_mask"] = mask
    job = parse_job({"corrections": {"bad_pixel_frames": 0}})
    with NXmxSource([path]) as src:
        model = DetectorModel.build(src.geometry)
        bad = _bad_pixels(job, src, model, None, None)
    assert bad is not None and bad.shape == mask.shape
    np.testing.assert_array_equal(bad, mask != 0)
