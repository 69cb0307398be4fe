"""CXI/HDF5 frames: round trips, runs spanning files, layouts, per-frame values, errors."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.cxi import CXIWriter, FrameId, FrameSource, summarise_cxi, write_cxi


@dataclass(frozen=True)
class _Panel:
    """The fields of hpcdiff.io.geom.Panel that frame reading uses."""

    data: str | None = "/entry_1/data_1/data"
    dim_structure: tuple[str | int, ...] = ("%", "ss", "fs")
    clen: float | str | None = None
    coffset_m: float = 0.0


@dataclass(frozen=True)
class _Geometry:
    panels: tuple[_Panel, ...]
    slab_shape: tuple[int, int]
    photon_energy: float | str | None = None
    source: str | None = "test.geom"


def _frames(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "bitshuffle"])
def test_round_trip_with_compression(tmp_path: Path, compression: str) -> None:
    frames = _frames(4, (12, 10))
    path = write_cxi(tmp_path / "a.cxi", frames, compression=compression)
    with FrameSource([path]) as src:
        assert src.n_frames == 4 and src.slab_shape == (12, 10)
        out = src.read(0, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frames)
    summary = summarise_cxi(path)
    (data,) = [d for d in summary["datasets"] if d["path"] == "/entry_1/data_1/data"]
    assert data["chunks"] == [1, 12, 10]
    expected = {
        "none": [],
        "gzip": ["shuffle", "gzip"],
        "lz4": ["lz4"],
        "bitshuffle": ["bitshuffle"],
    }
    assert data["compression"] == expected[compression]
    assert summary["n_frames"] == 4 and summary["frame_shape"] == [12, 10]


def test_compression_shrinks_smooth_frames(tmp_path: Path) -> None:
    frames = np.tile(np.arange(64, dtype=np.float32), (8, 64, 1))
    plain = write_cxi(tmp_path / "p.cxi", frames, compression="none")
    packed = write_cxi(tmp_path / "z.cxi", frames, compression="gzip")
    assert packed.stat().st_size < plain.stat().st_size / 4


def test_run_reads_span_files_in_order(tmp_path: Path) -> None:
    blocks = [_frames(n, (6, 5), seed=n) for n in (3, 1, 4)]
    files = [write_cxi(tmp_path / f"r{k}.cxi", b) for k, b in enumerate(blocks)]
    everything = np.concatenate(blocks)
    src = FrameSource(files)
    assert src.n_frames == 8 and src.frames_per_file() == [3, 1, 4]
    assert src.frame_ids[3] == FrameId(str(files[1]), 0)
    assert src.frame_ids == sorted(
        src.frame_ids, key=lambda f: (files.index(Path(f.file)), f.index)
    )
    for start, stop in [(0, 8), (2, 5), (3, 4), (4, 8), (5, 5), (2, 8)]:
        np.testing.assert_array_equal(src.read(start, stop), everything[start:stop])
    np.testing.assert_array_equal(
        src.read_ids([FrameId(str(files[2]), 1), FrameId(str(files[0]), 0)]), everything[[5, 0]]
    )
    with pytest.raises(ValueError, match="listed more than once"):
        FrameSource([files[0], files[1], files[0]])
    with pytest.raises(IndexError, match="outside the run's 8 frames"):
        src.read(6, 9)
    # pickles without open handles (dask workers reopen) and reads the same
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.read(1, 6), everything[1:6])
    src.close()


def test_few_open_handles_still_read_everything(tmp_path: Path) -> None:
    blocks = [_frames(2, (4, 3), seed=k) for k in range(5)]
    files = [write_cxi(tmp_path / f"r{k}.cxi", b, compression="none") for k, b in enumerate(blocks)]
    src = FrameSource(files, max_open=2)
    np.testing.assert_array_equal(src.read(0, 10), np.concatenate(blocks))
    assert len(src._handles) <= 2


def test_psana_layout_reshaped_to_slab(tmp_path: Path) -> None:
    # psana stores (N, 32, 185, 388); the geometry's slab stacks the 2x1s: 5920 x 388.
    # Here 4 sensors of 5 x 7 pixels stack to a 20 x 7 slab, same rule.
    frames = _frames(3, (4, 5, 7))
    path = write_cxi(tmp_path / "psana.cxi", frames, compression="none")
    geom = _Geometry(panels=(_Panel(),), slab_shape=(20, 7))
    src = FrameSource([path], geometry=geom)
    out = src.read(0, 3)
    assert out.shape == (3, 20, 7)
    np.testing.assert_array_equal(out[:, 5:10, :], frames[:, 1])
    np.testing.assert_array_equal(out, frames.reshape(3, 20, 7))


def test_one_frame_per_file_and_permuted_dims(tmp_path: Path) -> None:
    single = _frames(1, (6, 4))[0]
    for name in ("one.h5", "two.h5"):
        with h5py.File(tmp_path / name, "w") as h5:
            h5["data/data"] = single
    geom = _Geometry(
        panels=(_Panel(data="/data/data", dim_structure=("ss", "fs")),), slab_shape=(6, 4)
    )
    src = FrameSource([tmp_path / "one.h5", tmp_path / "two.h5"], geometry=geom)
    assert src.n_frames == 2
    np.testing.assert_array_equal(src.read(0, 2), np.stack([single, single]))

    frames = _frames(3, (6, 4))
    with h5py.File(tmp_path / "perm.h5", "w") as h5:
        h5["d"] = np.transpose(frames, (1, 0, 2))  # (ss, %, fs)
        h5["fixed"] = frames[:, None]  # (%, 1, ss, fs), panel dimension fixed at 0
    geom = _Geometry(
        panels=(_Panel(data="/d", dim_structure=("ss", "%", "fs")),), slab_shape=(6, 4)
    )
    np.testing.assert_array_equal(
        FrameSource([tmp_path / "perm.h5"], geometry=geom).read(1, 3), frames[1:]
    )
    geom = _Geometry(
        panels=(_Panel(data="/fixed", dim_structure=("%", 0, "ss", "fs")),), slab_shape=(6, 4)
    )
    np.testing.assert_array_equal(
        FrameSource([tmp_path / "perm.h5"], geometry=geom).read(0, 3), frames
    )


def test_per_frame_values_from_geometry_paths(tmp_path: Path) -> None:
    energy = np.array([9500.0, 9510.0, 9490.0])
    encoder = np.array([-430.0, -429.0, -428.5])  # mm, as CrystFEL reads an HDF5 clen
    files = [
        write_cxi(
            tmp_path / "a.cxi",
            _frames(3, (4, 4)),
            per_frame={"/LCLS/photon_energy_eV": energy, "/LCLS/detector_1/EncoderValue": encoder},
        ),
        write_cxi(
            tmp_path / "b.cxi",
            _frames(2, (4, 4)),
            per_frame={
                "/LCLS/photon_energy_eV": energy[:2],
                "/LCLS/detector_1/EncoderValue": encoder[:2],
            },
        ),
    ]
    geom = _Geometry(
        panels=(_Panel(clen="/LCLS/detector_1/EncoderValue", coffset_m=0.582),),
        slab_shape=(4, 4),
        photon_energy="/LCLS/photon_energy_eV",
    )
    values = FrameSource(files, geometry=geom).frame_values(2, 5)
    np.testing.assert_allclose(values["photon_energy_ev"], [9490.0, 9500.0, 9510.0])
    np.testing.assert_allclose(values["clen_m"], [-0.4285, -0.430, -0.429])
    # CrystFEL's average_camera_length for -429.998810 mm and coffset 0.582 m is 0.152001 m
    np.testing.assert_allclose(
        values["detector_distance_m"], np.array([-0.4285, -0.43, -0.429]) + 0.582
    )

    fixed = _Geometry(
        panels=(_Panel(clen=0.1, coffset_m=0.0),), slab_shape=(4, 4), photon_energy=9000.0
    )
    values = FrameSource(files, geometry=fixed).frame_values(0, 5)
    np.testing.assert_array_equal(values["photon_energy_ev"], np.full(5, 9000.0))
    np.testing.assert_array_equal(values["clen_m"], np.full(5, 0.1))
    assert FrameSource(files).frame_values(0, 5) == {}


def test_scalar_per_file_value_is_broadcast(tmp_path: Path) -> None:
    path = write_cxi(tmp_path / "a.cxi", _frames(3, (4, 4)))
    with h5py.File(path, "a") as h5:
        h5["/LCLS/photon_energy_eV"] = 9321.0
        h5["/LCLS/bad"] = np.zeros(5)
    geom = _Geometry(panels=(_Panel(),), slab_shape=(4, 4), photon_energy="/LCLS/photon_energy_eV")
    np.testing.assert_array_equal(
        FrameSource([path], geometry=geom).frame_values(0, 3)["photon_energy_ev"], 9321.0
    )
    bad = _Geometry(panels=(_Panel(),), slab_shape=(4, 4), photon_energy="/LCLS/bad")
    with pytest.raises(FormatError, match=r"dataset /LCLS/bad: per-frame values have shape \(5,\)"):
        FrameSource([path], geometry=bad).frame_values(0, 3)


def test_writer_appends_blocks_and_stamps_attrs(tmp_path: Path) -> None:
    frames = _frames(7, (5, 3))
    path = tmp_path / "w.cxi"
    with CXIWriter(path, compression="lz4", attrs={"provenance": {"seed": 1}, "n": 7}) as w:
        w.append(frames[:3], per_frame={"/LCLS/photon_energy_eV": np.arange(3.0)})
        w.append(frames[3:], per_frame={"LCLS/photon_energy_eV": np.arange(3.0, 7.0)})
        assert not path.exists()  # written under a temporary name until complete
        with pytest.raises(ValueError, match="differ from the first block"):
            w.append(frames[:1], per_frame={"/other": [1.0]})
        with pytest.raises(ValueError, match=r"appended to \(5, 3\) frames"):
            w.append(frames[:1, :2], per_frame={"/LCLS/photon_energy_eV": [1.0]})
    np.testing.assert_array_equal(FrameSource([path]).read(0, 7), frames)
    with h5py.File(path) as h5:
        np.testing.assert_array_equal(h5["/LCLS/photon_energy_eV"][()], np.arange(7.0))
        assert h5.attrs["n"] == 7 and '"seed": 1' in h5.attrs["provenance"]


def test_crash_leaves_no_file_and_no_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "c.cxi"
    with pytest.raises(RuntimeError, match="boom"), CXIWriter(path) as w:
        w.append(_frames(2, (3, 3)))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_cxi(path, _frames(2, (3, 3)))
    with pytest.raises(OutputExistsError, match="exists already"):
        write_cxi(path, _frames(5, (3, 3)))
    assert FrameSource([path]).n_frames == 2
    write_cxi(path, _frames(5, (3, 3)), force=True)
    assert FrameSource([path]).n_frames == 5


def test_missing_dataset_lists_what_exists(tmp_path: Path) -> None:
    path = write_cxi(tmp_path / "a.cxi", _frames(2, (4, 4)), data_path="/somewhere/frames")
    with pytest.raises(
        FormatError,
        match=r"a\.cxi, dataset /entry_1/data_1/data:.*missing.*/somewhere/frames \(2, 4, 4\)",
    ):
        FrameSource([path], data_path="/entry_1/data_1/data")
    with pytest.raises(FormatError, match="no frame dataset at"):
        FrameSource([path])
    assert FrameSource([path], data_path="somewhere/frames").n_frames == 2
    geom = _Geometry(panels=(_Panel(data=None),), slab_shape=(4, 4))
    assert FrameSource([path], geometry=geom, data_path="/somewhere/frames").n_frames == 2
    geom = _Geometry(panels=(_Panel(),), slab_shape=(4, 4))
    with pytest.raises(
        ValueError, match="differs from the geometry's 'data = /entry_1/data_1/data'"
    ):
        FrameSource([path], geometry=geom, data_path="/somewhere/frames")


def test_wrong_shape_names_both_shapes(tmp_path: Path) -> None:
    path = write_cxi(tmp_path / "a.cxi", _frames(2, (10, 8)))
    geom = _Geometry(panels=(_Panel(),), slab_shape=(1480, 1552))
    with pytest.raises(
        FormatError,
        match=r"frame shape \(10, 8\) does not match the geometry's slab \(1480, 1552\)",
    ):
        FrameSource([path], geometry=geom)
    other = write_cxi(tmp_path / "b.cxi", _frames(2, (10, 9)))
    with pytest.raises(FormatError, match=r"b\.cxi, dataset .*\(10, 9\) does not match"):
        FrameSource([path, other])


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.cxi"
    junk.write_text("not hdf5")
    with pytest.raises(FormatError, match=r"junk\.cxi: cannot open as HDF5"):
        FrameSource([junk])
    with pytest.raises(FormatError, match="file not found"):
        FrameSource([tmp_path / "absent.cxi"])
    with pytest.raises(FormatError, match="cannot open as HDF5"):
        summarise_cxi(junk)


def test_real_geometry_template(tmp_path: Path, real_fixtures: Path) -> None:
    geom_mod = pytest.importorskip("hpcdiff.io.geom")
    geom = geom_mod.read_geom(real_fixtures / "crystfel_cspad-cxiformat.geom")
    assert tuple(geom.slab_shape) == (1480, 1552)
    frames = _frames(2, (1480, 1552))
    energy = np.array([9400.0, 9600.0])
    path = write_cxi(
        tmp_path / "cheetah.cxi",
        frames,
        compression="lz4",
        per_frame={
            "/LCLS/photon_energy_eV": energy,
            "/LCLS/detector_1/EncoderValue": [-500.0, -490.0],
        },
    )
    src = FrameSource([path], geometry=geom)
    np.testing.assert_array_equal(src.read(1, 2)[0], frames[1])
    values = src.frame_values(0, 2)
    np.testing.assert_array_equal(values["photon_energy_ev"], energy)
    np.testing.assert_allclose(values["clen_m"], [-0.5, -0.49])
    np.testing.assert_allclose(values["detector_distance_m"], np.array([-0.5, -0.49]) + 0.573224)


def _psana_geom_text(n_panels: int) -> str:
    """psana-style CrystFEL geometry: panel k at fixed index dim1 = k of (N, k, 5, 7) data."""
    lines = ["res = 10000", "clen = 0.1", "photon_energy = 9500", "data = /entry_1/data_1/data"]
    lines += ["dim0 = %", "dim2 = ss", "dim3 = fs", ""]
    for k in range(n_panels):
        lines += [f"p{k}/dim1 = {k}", f"p{k}/min_fs = 0", f"p{k}/max_fs = 6", f"p{k}/min_ss = 0"]
        lines += [
            f"p{k}/max_ss = 4",
            f"p{k}/fs = +1x",
            f"p{k}/ss = +1y",
            f"p{k}/corner_x = {10 * k}",
        ]
        lines += [f"p{k}/corner_y = 0", ""]
    return "\n".join(lines)


def test_psana_panel_index_geometry(tmp_path: Path) -> None:
    geom_mod = pytest.importorskip("hpcdiff.io.geom")
    geom = geom_mod.parse_geom(_psana_geom_text(4), source="psana.geom")
    assert tuple(geom.slab_shape) == (20, 7)
    frames = _frames(3, (4, 5, 7))
    path = write_cxi(tmp_path / "psana.cxi", frames, compression="none")
    src = FrameSource([path], geometry=geom)
    np.testing.assert_array_equal(src.read(0, 3), frames.reshape(3, 20, 7))
    np.testing.assert_array_equal(src.frame_values(0, 3)["photon_energy_ev"], 9500.0)
    # a geometry using panels 0..2 of a 4-panel block reads just those three blocks
    small = geom_mod.parse_geom(_psana_geom_text(3), source="psana3.geom")
    np.testing.assert_array_equal(
        FrameSource([path], geometry=small).read(1, 2)[0], frames[1, :3].reshape(15, 7)
    )
    # more panels than the file holds
    wide = geom_mod.parse_geom(_psana_geom_text(6), source="psana6.geom")
    with pytest.raises(FormatError, match=r"panel index 5 of dimension 1.*has 4 along it"):
        FrameSource([path], geometry=wide)


def test_read_ids_and_unknown_frames(tmp_path: Path) -> None:
    blocks = [_frames(2, (3, 3), seed=k) for k in range(2)]
    files = [write_cxi(tmp_path / f"r{k}.cxi", b) for k, b in enumerate(blocks)]
    src = FrameSource(files)
    ids = [FrameId(str(files[1]), 1), FrameId(str(files[0]), 0)]
    np.testing.assert_array_equal(src.global_numbers(ids), [3, 0])
    with pytest.raises(
        KeyError, match=r"2 frame\(s\) not in this run: .*r0\.cxi//2, other\.cxi//0"
    ):
        src.read_ids([FrameId(str(files[0]), 2), FrameId("other.cxi", 0)])


def test_stacked_frames_with_geometry_without_frame_dim(tmp_path: Path) -> None:
    # CrystFEL's default dims are (ss, fs); a Cheetah stack (N, n_ss, n_fs) still reads as frames
    frames = _frames(3, (6, 4))
    path = write_cxi(tmp_path / "stack.cxi", frames)
    geom = _Geometry(panels=(_Panel(dim_structure=("ss", "fs")),), slab_shape=(6, 4))
    src = FrameSource([path], geometry=geom)
    assert src.n_frames == 3
    np.testing.assert_array_equal(src.read(0, 3), frames)


def test_corrupt_chunk_names_file_dataset_and_frames(tmp_path: Path) -> None:
    frames = _frames(3, (32, 32))
    path = write_cxi(tmp_path / "c.cxi", frames, compression="gzip")
    with h5py.File(path) as h5:
        info = h5["/entry_1/data_1/data"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff" * 64)
    src = FrameSource([path])
    np.testing.assert_array_equal(src.read(0, 1), frames[:1])
    with pytest.raises(
        FormatError, match=r"c\.cxi, dataset /entry_1/data_1/data: cannot read frames 1\.\.2"
    ):
        src.read(1, 3)
