"""CrystFEL 0.10+ geometry features applied: flag_*, mask_edge_pixels, saturation_map,
mask0..7 (good/bad bits), detector_shift (global, per frame, per panel) and det_shift."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.config import BackgroundConfig, CorrectionsConfig
from hpcdiff.errors import FormatError
from hpcdiff.geometry import (
    DetectorModel,
    bad_region_mask,
    detector_shift_m,
    edge_mask,
    frame_directions,
    geometry_valid,
    panel_index_map,
    pixel_positions_m,
    scattering_directions,
    shift_positions,
    small_geometry,
)
from hpcdiff.io.geom import PixelFlag, format_geom, parse_geom, read_geom
from hpcdiff.pixel_masks import PixelMasks, flag_bad, read_static_masks
from hpcdiff.preprocess import Preprocessor

REAL = ("om_cxi06216_v4-predrefine.geom", "crystfel_cspad-cxiformat.geom",
        "psgeom_refgeom_crystfel.geom")  # fmt: skip

#: Two 4 x 6 panels (ss x fs) stacked along ss; {top} goes before the panels.
TWO = """\
photon_energy = 9500
clen = 0.1
res = 2000
adu_per_eV = 0.001
data = /entry_1/data_1/data
dim0 = %
dim1 = ss
dim2 = fs
{top}
p0/min_fs = 0
p0/max_fs = 5
p0/min_ss = 0
p0/max_ss = 3
p0/fs = +1.0x +0.0y +0.0z
p0/ss = +0.0x +1.0y +0.0z
p0/corner_x = -8.0
p0/corner_y = 2.0
{p0}
{middle}
p1/min_fs = 0
p1/max_fs = 5
p1/min_ss = 4
p1/max_ss = 7
p1/fs = -1.0x +0.0y +0.0z
p1/ss = +0.0x -1.0y +0.0z
p1/corner_x = 8.0
p1/corner_y = -2.0
{p1}
"""


def geom_text(top: str = "", p0: str = "", middle: str = "", p1: str = "") -> str:
    return TWO.format(top=top, p0=p0, middle=middle, p1=p1)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == needle)


# --------------------------------------------------------------------------- flags


def test_flags_are_strict_and_equal_rounds() -> None:
    raw = np.array([-1.0, 0.0, 0.4, 0.6, 1.0, 99.9, 100.0, 100.1, 4.5, 5.5], np.float32)
    less = flag_bad(raw, (PixelFlag("lessthan", 0.0),))
    assert less.tolist() == [v < 0 for v in raw.tolist()]
    more = flag_bad(raw, (PixelFlag("morethan", 100.0),))
    assert more.tolist() == [v > 100 for v in raw.tolist()]
    # rint rounds half to even, as C's rint in CrystFEL's default rounding mode
    equal = flag_bad(raw, (PixelFlag("equal", 0.0),))
    assert np.flatnonzero(equal).tolist() == [1, 2]  # 0.0 and 0.4 round to 0
    assert np.flatnonzero(flag_bad(raw, (PixelFlag("equal", 4.0),))).tolist() == [8]  # 4.5
    both = flag_bad(raw, (PixelFlag("lessthan", 0.0), PixelFlag("morethan", 100.0)))
    np.testing.assert_array_equal(both, less | more)


def test_global_flags_follow_crystfel_defaults_and_accumulate() -> None:
    """A top-level flag is a default for panels first mentioned after it; flags of the same
    kind accumulate; a panel adds its own."""
    text = geom_text(
        top="flag_lessthan = 0",
        p0="p0/flag_equal = 7",
        middle="flag_morethan = 100\nflag_morethan = 50",
    )
    geom = parse_geom(text)
    p0, p1 = geom.panels
    assert p0.flags == (PixelFlag("lessthan", 0.0), PixelFlag("equal", 7.0))
    assert p1.flags == (
        PixelFlag("lessthan", 0.0),
        PixelFlag("morethan", 100.0),
        PixelFlag("morethan", 50.0),
    )
    assert parse_geom(format_geom(geom)) == geom
    raw = np.full((1, *geom.slab_shape), 10.0, np.float32)
    cells = {(0, 0): -1.0, (1, 1): 7.2, (2, 2): 60.0, (5, 0): -0.5, (6, 1): 7.0, (7, 5): 60.0}
    for (ss, fs), v in cells.items():
        raw[0, ss, fs] = v
    bad = PixelMasks.from_geometry(geom).frame_bad(raw)
    assert bad is not None
    # p0 (rows 0-3): < 0 or rint == 7; p1 (rows 4-7): < 0 or > 100 or > 50
    assert set(zip(*np.nonzero(bad[0]), strict=True)) == {(0, 0), (1, 1), (5, 0), (7, 5)}


def test_flags_in_preprocessor_make_exactly_those_pixels_invalid() -> None:
    base = small_geometry(panel_shape=(16, 20))
    flagged = dataclasses.replace(
        base,
        panels=tuple(
            dataclasses.replace(p, flags=(PixelFlag("morethan", 5000.0),))
            if i == 1
            else dataclasses.replace(p, flags=(PixelFlag("lessthan", -100.0),))
            for i, p in enumerate(base.panels)
        ),
    )
    rng = np.random.default_rng(3)
    frames = rng.normal(50.0, 5.0, (2, *base.slab_shape)).astype(np.float32)
    frames[0, 20, 3] = 9000.0  # panel 1: > 5000, flagged
    frames[1, 17, 4] = 4000.0  # panel 1: not above 5000, kept
    frames[1, 2, 2] = -150.0  # panel 0: < -100, flagged
    frames[0, 40, 5] = 9000.0  # panel 2 has only lessthan -100: kept
    cfg = CorrectionsConfig(common_mode=False)
    out = {}
    for name, geom in (("plain", base), ("flagged", flagged)):
        model = DetectorModel.build(geom, photon_energy_ev=9500.0)
        pre = Preprocessor(model, BackgroundConfig(), cfg)
        out[name] = pre.correct(frames, photon_energy_ev=9500.0)
    nan = np.isnan(out["flagged"])
    assert set(zip(*np.nonzero(nan), strict=True)) == {(0, 20, 3), (1, 2, 2)}
    np.testing.assert_array_equal(out["flagged"][~nan], out["plain"][~nan])


def test_flags_reach_the_images_of_the_numpy_fast_path() -> None:
    """The CNN images of a frame with a flagged pixel are those of the same frame with that
    pixel masked as bad: the per-frame fast corrections never skip the geometry's flags."""
    base = small_geometry(panel_shape=(16, 20))
    flagged = dataclasses.replace(
        base,
        panels=tuple(
            dataclasses.replace(p, flags=(PixelFlag("morethan", 5000.0),)) for p in base.panels
        ),
    )
    rng = np.random.default_rng(4)
    frames = rng.poisson(40.0, (1, *base.slab_shape)).astype(np.int16)
    frames[0, 20, 3] = 9000  # flagged
    bad = np.zeros(base.slab_shape, bool)
    bad[20, 3] = True
    cfg = CorrectionsConfig(common_mode=True)
    with_flags = Preprocessor(DetectorModel.build(flagged, photon_energy_ev=9500.0), None, cfg)
    masked = Preprocessor(
        DetectorModel.build(base, photon_energy_ev=9500.0), None, cfg, bad_pixel_mask=bad
    )
    assert masked.frame_corrections is not None and with_flags.frame_corrections is None
    np.testing.assert_allclose(
        with_flags(frames, photon_energy_ev=9500.0),
        masked(frames, photon_energy_ev=9500.0),
        atol=1e-5,
    )


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize("n", [1, 2, 3])
def test_mask_edge_pixels_masks_the_outer_rows_and_columns(n: int) -> None:
    text = geom_text(top=f"mask_edge_pixels = {n}", p1="p1/mask_edge_pixels = 0")
    geom = parse_geom(text)
    assert [p.mask_edge_pixels for p in geom.panels] == [n, 0]
    edges = edge_mask(geom)
    inner = np.zeros((4, 6), bool)
    inner[n : 4 - n, n : 6 - n] = True
    np.testing.assert_array_equal(edges[0:4], ~inner)
    assert not edges[4:].any()
    np.testing.assert_array_equal(geometry_valid(geom), ~edges)
    assert parse_geom(format_geom(geom)) == geom


def test_geometry_valid_without_new_keys_is_unchanged_on_real_files(real_fixtures: Path) -> None:
    for name in REAL:
        geom = read_geom(real_fixtures / name)
        old = panel_index_map(geom) >= 0
        for i, p in enumerate(geom.panels):
            if p.no_index:
                old &= panel_index_map(geom) != i
        np.testing.assert_array_equal(geometry_valid(geom), old & ~bad_region_mask(geom))
        assert geom.detector_shift is None and not any(p.flags for p in geom.panels)
        assert parse_geom(format_geom(geom)) == geom


# --------------------------------------------------------------------------- mask files


def _h5(path: Path, datasets: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as fh:
        for name, value in datasets.items():
            fh.create_dataset(name, data=value)
    return path


def test_masks_goodbits_badbits_and_several_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    m0 = rng.integers(0, 8, (8, 6)).astype(np.uint16)
    m3 = rng.integers(0, 4, (8, 6)).astype(np.int32)
    frame_file = _h5(tmp_path / "frames.h5", {"/entry_1/data_1/mask": m0})
    mask_file = _h5(tmp_path / "bad.h5", {"/bad/map": m3})
    text = geom_text(
        top=(
            "mask = /entry_1/data_1/mask\nmask_good = 0x1\nmask_bad = 0x4\n"
            f"mask3_data = /bad/map\nmask3_file = {mask_file}\nmask3_goodbits = 0\n"
            "mask3_badbits = 0x2"
        ),
    )
    geom = parse_geom(text)
    p0 = geom.panels[0]
    assert (p0.mask, p0.mask_good, p0.mask_bad) == ("/entry_1/data_1/mask", 1, 4)
    assert [m.number for m in p0.masks] == [0, 3]
    bad = read_static_masks(geom, frame_file=frame_file)
    # CrystFEL: bad unless all goodbits set; bad if any badbit set; masks combine
    expected = ((m0 & 1) != 1) | ((m0 & 4) != 0) | ((m3 & 2) != 0)
    np.testing.assert_array_equal(bad, expected)
    assert 0 < bad.sum() < bad.size
    assert parse_geom(format_geom(geom)) == geom
    model = DetectorModel.build(geom, frame_file=str(frame_file))
    pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig(common_mode=False))
    np.testing.assert_array_equal(pre.valid, ~expected)


def test_static_mask_with_fixed_panel_index(tmp_path: Path) -> None:
    """psana layout (dim1 = panel index): the mask is (panels, ss, fs) without the frame axis."""
    lines = ["res = 10000", "clen = 0.1", "photon_energy = 9500", "data = /data/cspad",
             "dim0 = %", "dim2 = ss", "dim3 = fs", "mask = /mask", "mask_bad = 0x1"]  # fmt: skip
    for k in range(3):
        lines += [f"q{k}/dim1 = {k}", f"q{k}/min_fs = 0", f"q{k}/max_fs = 4", f"q{k}/min_ss = 0",
                  f"q{k}/max_ss = 2", f"q{k}/fs = +1x", f"q{k}/ss = +1y",
                  f"q{k}/corner_x = {10 * k}", f"q{k}/corner_y = 0"]  # fmt: skip
    geom = parse_geom("\n".join(lines))
    mask = np.zeros((3, 3, 5), np.uint8)
    mask[1, 2, 4] = 1
    mask[2, 0, 0] = 3
    f = _h5(tmp_path / "m.h5", {"/mask": mask})
    bad = read_static_masks(geom, frame_file=f)
    assert bad.shape == (9, 5)
    assert set(zip(*np.nonzero(bad), strict=True)) == {(5, 4), (6, 0)}


def test_mask_errors_name_geometry_line_file_and_dataset(tmp_path: Path) -> None:
    f = _h5(
        tmp_path / "m.h5",
        {"/small": np.zeros((3, 6)), "/frames": np.zeros((2, 8, 6)), "/flat": np.zeros(48)},
    )
    base = geom_text(p1="p1/mask1_data = {data}\np1/mask1_file = {file}")
    cases = [
        ("/small", str(f), "too small"),
        ("/absent", str(f), "has no dataset /absent"),
        ("/frames", str(f), "has the frame axis"),
        ("/flat", str(f), "has 1 dimensions"),
        ("/small", str(tmp_path / "gone.h5"), "not found"),
    ]
    for data, file, needle in cases:
        text = base.format(data=data, file=file)
        path = tmp_path / "g.geom"
        path.write_text(text)
        with pytest.raises(FormatError) as info:
            read_static_masks(read_geom(path))
        err = info.value
        assert needle in err.message, err.message
        assert err.path == str(path) and err.dataset == data
        assert err.line == _line_of(text, f"p1/mask1_data = {data}")
        assert Path(file).name in err.message


def test_mask_in_frame_file_needs_a_frame_file() -> None:
    geom = parse_geom(geom_text(top="mask = /entry_1/data_1/mask"))
    with pytest.raises(FormatError, match="in the frame file"):
        read_static_masks(geom)


# --------------------------------------------------------------------------- saturation


def test_saturation_map_flags_pixels_strictly_above(tmp_path: Path) -> None:
    sat = np.full((8, 6), 1000.0, np.float32)
    sat[1, 1] = 100.0
    f = _h5(tmp_path / "sat.h5", {"/sat": sat})
    geom = parse_geom(geom_text(p0=f"p0/saturation_map = /sat\np0/saturation_map_file = {f}"))
    assert geom.panels[0].saturation_map is not None and geom.panels[1].saturation_map is None
    assert parse_geom(format_geom(geom)) == geom
    masks = PixelMasks.from_geometry(geom)
    raw = np.full((2, 8, 6), 50.0, np.float32)
    raw[0, 1, 1] = 100.0  # equal: kept
    raw[1, 1, 1] = 100.5  # above its own value: bad
    raw[0, 2, 2] = 1000.5  # above 1000: bad
    raw[1, 6, 3] = 1e6  # panel 1 has no map: kept
    bad = masks.frame_bad(raw)
    assert bad is not None
    assert set(zip(*np.nonzero(bad), strict=True)) == {(1, 1, 1), (0, 2, 2)}
    applied = masks.apply(raw)
    np.testing.assert_array_equal(np.isnan(applied), bad)


# --------------------------------------------------------------------------- shifts


def test_detector_shift_moves_every_pixel_by_exactly_the_shift() -> None:
    plain = parse_geom(geom_text())
    base = pixel_positions_m(plain)
    for top, (dx, dy) in (
        ("detector_shift_x = 0.001\ndetector_shift_y = -0.0005", (0.001, -0.0005)),
        ("detector_shift_x = 1 mm\ndetector_shift_y = 2.5 mm", (0.001, 0.0025)),
        ("detector_shift_x = 0.002 m\ndetector_shift_y = 0 m", (0.002, 0.0)),
    ):
        geom = parse_geom(geom_text(top=top))
        assert geom.detector_shift == pytest.approx((dx, dy))
        assert parse_geom(format_geom(geom)) == geom
        moved = pixel_positions_m(geom)
        np.testing.assert_allclose(moved[..., 0] - base[..., 0], dx, atol=1e-15)
        np.testing.assert_allclose(moved[..., 1] - base[..., 1], dy, atol=1e-15)
        np.testing.assert_array_equal(moved[..., 2], base[..., 2])


def test_panel_shift_moves_that_panel_and_adds_to_the_global_one() -> None:
    plain = pixel_positions_m(parse_geom(geom_text()))
    text = geom_text(
        top="detector_shift_x = 1 mm\ndetector_shift_y = 0", p1="p1/detector_shift_y = -0.5 mm"
    )
    geom = parse_geom(text)
    assert geom.panels[1].detector_shift_m == (0.0, -0.0005)
    assert parse_geom(format_geom(geom)) == geom
    d = pixel_positions_m(geom) - plain
    np.testing.assert_allclose(d[0:4, :, 0], 0.001, atol=1e-15)
    np.testing.assert_allclose(d[0:4, :, 1], 0.0, atol=1e-15)
    np.testing.assert_allclose(d[4:8, :, 1], -0.0005, atol=1e-15)


def test_per_frame_detector_shift_from_the_frame_file(tmp_path: Path) -> None:
    from hpcdiff.io.cxi import FrameSource, write_cxi

    text = geom_text(top="detector_shift_x = /shift/x mm\ndetector_shift_y = /shift/y")
    geom = parse_geom(text)
    assert geom.detector_shift == ("/shift/x mm", "/shift/y") and geom.has_frame_shift
    assert parse_geom(format_geom(geom)) == geom
    frames = np.zeros((3, 8, 6), np.float32)
    path = write_cxi(
        tmp_path / "f.cxi",
        frames,
        per_frame={"/shift/x": [0.0, 1.0, np.nan], "/shift/y": [0.0, 0.0, 0.002]},
    )
    with FrameSource([path], geometry=geom) as src:
        values = src.frame_values(0, 3)
    np.testing.assert_allclose(values["detector_shift_x_m"][:2], [0.0, 0.001])
    np.testing.assert_array_equal(detector_shift_m(geom, values, frame=1), [0.001, 0.0])
    np.testing.assert_array_equal(detector_shift_m(geom, values, frame=2), [0.0, 0.002])  # NaN: 0
    with pytest.raises(ValueError, match="detector_shift comes from the HDF5 path"):
        DetectorModel.build(geom)
    model = DetectorModel.build(geom, shift_m=detector_shift_m(geom, values, frame=1))
    plain = pixel_positions_m(parse_geom(geom_text()))
    np.testing.assert_allclose(model.positions_m[..., 0] - plain[..., 0], 0.001, atol=1e-15)


def test_frame_directions_equal_shifted_positions() -> None:
    geom = small_geometry(panel_shape=(8, 10))
    pos = pixel_positions_m(geom)
    shift = (0.0007, -0.0011)
    np.testing.assert_allclose(
        frame_directions(geom, clen_m=0.1, shift_m=shift),
        scattering_directions(shift_positions(pos, shift_m=shift)),
        rtol=0,
        atol=1e-15,
    )


def test_fourier_det_shift_equals_a_shifted_detector() -> None:
    """Mapping frames with a crystal's det_shift = mapping them on a detector moved by it."""

    from hpcdiff.merge import Grid
    from hpcdiff.pipelines.fourier import FourierSettings, process_frames
    from hpcdiff.pipelines.fourier_frames import ChainSettings, FrameChain

    base = small_geometry(panel_shape=(24, 32), photon_energy=9500.0)
    shift = (0.001, -0.0015)  # 2 and 3 pixels of 0.5 mm
    moved = dataclasses.replace(base, detector_shift=shift)
    rng = np.random.default_rng(1)
    frames = rng.uniform(1.0, 2.0, (2, *base.slab_shape)).astype(np.float32)
    orientations = np.stack([np.diag([1 / 7.9, 1 / 7.9, 1 / 3.8])] * 2)
    background = BackgroundConfig(preprocessing="seed", method="none")
    settings = FourierSettings(
        Grid(16, 12.0), Grid(8, 12.0), chain=ChainSettings(background=background)
    )

    def chain(geom: object) -> FrameChain:
        model = DetectorModel.build(geom, clen_m=0.1, photon_energy_ev=9500.0)
        return FrameChain(model, settings.chain)

    kw = dict(photon_energy_ev=np.full(2, 9500.0), clen_m=np.full(2, 0.1), settings=settings)
    with_shift, _ = process_frames(
        frames, orientations, chain=chain(base), det_shift_m=np.array([shift] * 2), **kw
    )
    on_moved, _ = process_frames(frames, orientations, chain=chain(moved), **kw)
    without, _ = process_frames(frames, orientations, chain=chain(base), **kw)
    np.testing.assert_array_equal(with_shift.counts, on_moved.counts)
    assert not np.array_equal(with_shift.counts, without.counts)


# --------------------------------------------------------------------------- per-frame masks


def _cheetah_file(path: Path, frames: np.ndarray, mask: np.ndarray | None) -> Path:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("/entry_1/data_1/data", data=frames)
        if mask is not None:
            fh.create_dataset("/entry_1/data_1/mask", data=mask)
    return path


def test_per_frame_masks_are_read_for_each_frame_from_its_file(tmp_path: Path) -> None:
    """Cheetah's per-event mask (CrystFEL's cspad-cxiformat example: ``mask =
    /entry_1/data_1/mask`` with ``dim0 = %``): each frame's own mask, from its own file."""
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.pipelines.classify import FrameReader

    geom = parse_geom(
        geom_text(top="mask = /entry_1/data_1/mask\nmask_good = 0x0\nmask_bad = 0xffff")
    )
    rng = np.random.default_rng(5)
    frames = rng.normal(10, 1, (2, 3, 8, 6)).astype(np.float32)
    masks = (rng.random((2, 3, 8, 6)) < 0.1).astype(np.uint16) * rng.integers(1, 9, (2, 3, 8, 6))
    files = [_cheetah_file(tmp_path / f"r{i}.cxi", frames[i], masks[i]) for i in range(2)]
    files.append(_cheetah_file(tmp_path / "nomask.cxi", frames[0], None))
    pm = PixelMasks.from_geometry(geom, frame_file=files[0])
    assert (
        not pm.static_bad.any()
        and [m.data for _, m in pm.frame_masks] == ["/entry_1/data_1/mask"] * 2
    )
    with FrameSource(files, geometry=geom) as src:
        ids = src.frame_ids
        bad = pm.read_frame_bad(ids[:6])
        assert bad is not None
        np.testing.assert_array_equal(bad, masks.reshape(6, 8, 6) != 0)
        batch = FrameReader(src, masks=pm)(0, 9)
    np.testing.assert_array_equal(batch.numbers, np.arange(6))
    np.testing.assert_array_equal(np.isnan(batch.frames), masks.reshape(6, 8, 6) != 0)
    assert [n for n, _ in batch.rejects] == [6, 7, 8]
    assert all("has no dataset /entry_1/data_1/mask" in why for _, why in batch.rejects)
    applied = pm.apply(frames[1], frame_ids=ids[3:6])
    np.testing.assert_array_equal(np.isnan(applied), masks[1] != 0)


def test_per_frame_masks_on_integer_frames(tmp_path: Path) -> None:
    """Frames stored as int16 ADU (read in their own dtype) still get their per-frame mask."""
    from hpcdiff.io.cxi import FrameSource
    from hpcdiff.pipelines.classify import FrameReader

    geom = parse_geom(
        geom_text(top="mask = /entry_1/data_1/mask\nmask_good = 0x0\nmask_bad = 0xffff")
    )
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 100, (3, 8, 6)).astype(np.int16)
    masks = (rng.random((3, 8, 6)) < 0.2).astype(np.uint16)
    f = _cheetah_file(tmp_path / "i.cxi", frames, masks)
    pm = PixelMasks.from_geometry(geom, frame_file=f)
    with FrameSource([f], geometry=geom) as src:
        batch = FrameReader(src, masks=pm)(0, 3)
    assert batch.frames.dtype == np.float32 and not batch.rejects
    np.testing.assert_array_equal(np.isnan(batch.frames), masks != 0)
    np.testing.assert_array_equal(batch.frames[masks == 0], frames[masks == 0])


def test_real_cxiformat_geometry_reads_cheetah_per_event_masks(
    tmp_path: Path, real_fixtures: Path
) -> None:
    geom = read_geom(real_fixtures / "crystfel_cspad-cxiformat.geom")
    shape = geom.slab_shape
    mask = np.zeros((1, *shape), np.uint16)
    mask[0, 100, 200] = 0x4  # any bit with mask_bad = 0xffff
    mask[0, 1479, 1551] = 0x1
    f = _cheetah_file(tmp_path / "c.cxi", np.zeros((1, *shape), np.int16), mask)
    pm = PixelMasks.from_geometry(geom, frame_file=f)
    assert len(pm.frame_masks) == len(geom.panels) and not pm.static_bad.any()
    from hpcdiff.io.cxi import FrameId

    bad = pm.read_frame_bad([FrameId(str(f), 0)])
    assert bad is not None
    assert set(zip(*np.nonzero(bad[0]), strict=True)) == {(100, 200), (1479, 1551)}


def test_plan_and_chunk_apply_stream_det_shift_and_geometry_masks(tmp_path: Path) -> None:
    """plan_frames takes each crystal's det_shift (mm -> m); process_chunk maps with it and
    NaNs the geometry's flagged pixels (here: every pixel > 1.5 ADU on panel p0)."""
    from hpcdiff.config import load_job
    from hpcdiff.io.cxi import write_cxi
    from hpcdiff.io.geom import write_geom
    from hpcdiff.io.stream import Chunk, Crystal, Stream, write_stream
    from hpcdiff.merge import Grid
    from hpcdiff.pipelines.fourier import (
        FourierSettings,
        plan_frames,
        process_chunk,
        process_frames,
    )
    from hpcdiff.pipelines.fourier_frames import ChainSettings, FrameChain

    base = small_geometry(panel_shape=(24, 32), clen_m=0.1, photon_energy=9500.0)
    p0 = dataclasses.replace(base.panels[0], flags=(PixelFlag("morethan", 1.5),))
    geom = dataclasses.replace(base, panels=(p0, *base.panels[1:]))
    write_geom(geom, tmp_path / "d.geom")
    rng = np.random.default_rng(2)
    frames = rng.uniform(1.0, 2.0, (2, *geom.slab_shape)).astype(np.float32)
    write_cxi(tmp_path / "f.cxi", frames, compression=None)
    a = np.diag([1 / 7.9, 1 / 7.9, 1 / 3.8])
    shifts = [(1.0, -1.5), None]  # mm; the second crystal has none
    chunks = tuple(
        Chunk(
            "f.cxi",
            event=f"//{i}",
            photon_energy_ev=9500.0,
            crystals=(Crystal(None, tuple(a[0]), tuple(a[1]), tuple(a[2]), det_shift_mm=s),),
        )
        for i, s in enumerate(shifts)
    )
    write_stream(Stream(chunks=chunks), tmp_path / "o.stream")
    job_path = tmp_path / "job.toml"
    job_path.write_text(
        '[experiment]\nframes = ["f.cxi"]\ngeometry = "d.geom"\nstream = "o.stream"\n'
        '[fourier]\ngrid_size = 16\nmax_hkl = 12.0\n[output]\ndir = "out"\n'
    )
    plan = plan_frames(load_job(job_path))
    np.testing.assert_allclose(plan.det_shift_m, [[0.001, -0.0015], [0.0, 0.0]])
    background = BackgroundConfig(preprocessing="seed", method="none")
    settings = FourierSettings(
        Grid(16, 12.0), Grid(8, 12.0), chain=ChainSettings(background=background)
    )
    acc, _ = process_chunk(plan, [0, 1], settings)
    masked = np.where(np.arange(geom.slab_shape[0])[:, None] < 24, frames > 1.5, False)
    plain = FrameChain(
        DetectorModel.build(base, clen_m=0.1, photon_energy_ev=9500.0),
        settings.chain,
        bad_pixel_mask=plan.bad_pixel_mask,
    )
    expected, _ = process_frames(
        np.where(masked, np.nan, frames),
        plan.orientations,
        photon_energy_ev=np.full(2, 9500.0),
        clen_m=np.full(2, 0.1),
        chain=plain,
        settings=settings,
        det_shift_m=np.array([[0.001, -0.0015], [0.0, 0.0]]),
    )
    np.testing.assert_array_equal(acc.counts, expected.counts)
    np.testing.assert_allclose(acc.sums, expected.sums, rtol=1e-12)


def test_inspect_lists_the_applied_keys(tmp_path: Path) -> None:
    from hpcdiff.cli.inspect import summarise_geometry_file

    path = tmp_path / "g.geom"
    path.write_text(
        geom_text(
            top="flag_morethan = 16000\nmask_edge_pixels = 1\ndetector_shift_x = /sx mm\n"
            "detector_shift_y = 0",
            p1="p1/mask2_data = /m\np1/mask2_file = bad.h5\np1/saturation_map = /sat",
        )
    )
    s = summarise_geometry_file(path)
    assert s["flags"] == ["morethan 16000"] and s["mask_edge_pixels"] == [1]
    assert s["masks"] == ["/m in bad.h5"] and s["saturation_maps"] == 1
    assert s["detector_shift"] == ["/sx mm", 0.0]


@pytest.mark.skipif(
    not __import__("hpcdiff.backend", fromlist=["gpu_available"]).gpu_available(),
    reason="needs a GPU with cupy",
)
def test_flags_on_cupy_equal_numpy() -> None:
    import cupy

    geom = parse_geom(geom_text(top="flag_lessthan = 0", p1="p1/flag_equal = 7"))
    pm = PixelMasks.from_geometry(geom)
    raw = np.random.default_rng(0).normal(3, 4, (3, *geom.slab_shape)).astype(np.float32)
    on_gpu = pm.frame_bad(cupy.asarray(raw))
    np.testing.assert_array_equal(cupy.asnumpy(on_gpu), pm.frame_bad(raw))


def test_simulated_like_geometry_drops_masks_its_files_lack(real_fixtures: Path) -> None:
    """A simulated experiment "like" a real geometry writes no mask datasets, so it must not
    ask for them (flags and edge masks, which need no file, are kept)."""
    from hpcdiff.config import SimulateConfig
    from hpcdiff.simulate.experiment import simulated_geometry

    real = read_geom(real_fixtures / "crystfel_cspad-cxiformat.geom")
    p0 = dataclasses.replace(real.panels[0], flags=(PixelFlag("lessthan", -10.0),))
    base = dataclasses.replace(real, panels=(p0, *real.panels[1:]))
    assert all(p.masks for p in base.panels)
    for layout in ("slab", "file"):
        cfg = dataclasses.replace(SimulateConfig(), geometry_layout=layout)
        geom = simulated_geometry(cfg, base=base)
        assert not any(p.masks or p.saturation_map for p in geom.panels)
        assert geom.panels[0].flags == p0.flags
