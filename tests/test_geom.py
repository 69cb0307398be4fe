"""CrystFEL geometry reader/writer (hpcdiff.io.geom)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.geom import (
    BadRegion,
    DetectorGeometry,
    Panel,
    PixelFlag,
    format_geom,
    parse_geom,
    read_geom,
    write_geom,
)

REAL_GEOMS = (
    "om_cxi06216_v4-predrefine.geom",
    "crystfel_cspad-cxiformat.geom",
    "psgeom_refgeom_crystfel.geom",
)

TWO_PANELS = """\
; a small two-panel detector
photon_energy = 9500
clen = 0.1
res = 10000          ; 100 um pixels
adu_per_eV = 0.001
data = /entry_1/data_1/data
dim0 = %
dim1 = ss
dim2 = fs

p0/min_fs = 0
p0/max_fs = 9
p0/min_ss = 0
p0/max_ss = 4
p0/fs = +1.0x
p0/ss = +1.0y
p0/corner_x = -12.0
p0/corner_y = 3.0

p1/min_fs = 0
p1/max_fs = 9
p1/min_ss = 5
p1/max_ss = 9
p1/fs = -x
p1/ss = -y
p1/corner_x = 12.0
p1/corner_y = -3.0
"""


def _error(text: str) -> FormatError:
    with pytest.raises(FormatError) as info:
        parse_geom(text, source="det.geom")
    assert info.value.path == "det.geom"
    return info.value


def _line_of(text: str, fragment: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return i
    raise AssertionError(fragment)


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", REAL_GEOMS)
def test_real_cspad_files_parse(real_fixtures: Path, name: str) -> None:
    geom = read_geom(real_fixtures / name)
    assert len(geom.panels) == 64
    assert geom.n_pixels == 2_296_960 == 64 * 194 * 185
    assert geom.slab_shape == (1480, 1552)
    assert all((p.n_fs, p.n_ss) == (194, 185) for p in geom.panels)
    assert geom.photon_energy == "/LCLS/photon_energy_eV"
    assert all(isinstance(p.clen, str) and p.clen.startswith("/LCLS/") for p in geom.panels)
    assert geom.panels[0].dim_structure == ("%", "ss", "fs")
    assert geom.panels[0].data == "/entry_1/data_1/data"
    assert geom.source == str(real_fixtures / name)
    assert geom.rigid_groups  # kept, though unused


def test_om_file_global_defaults_and_panel_overrides(real_fixtures: Path) -> None:
    geom = read_geom(real_fixtures / "om_cxi06216_v4-predrefine.geom")
    q0a0 = geom.panel("q0a0")
    # Global res = 9097.52 is overridden per panel; coffset is the global default.
    assert all(p.res == 9090.91 for p in geom.panels)
    assert q0a0.coffset_m == 0.578086
    assert q0a0.adu_per_ev == 0.00338
    assert q0a0.fs == (0.007107, 0.999975, 0.0)
    assert q0a0.ss == (-0.999975, 0.007107, 0.0)
    assert (q0a0.corner_x, q0a0.corner_y) == (443.679, -27.2744)
    last = geom.panels[-1]
    assert last.name == "q3a15"
    assert (last.min_fs, last.max_fs, last.min_ss, last.max_ss) == (1358, 1551, 1295, 1479)


def test_psgeom_file_per_panel_coffset_after_panels(real_fixtures: Path) -> None:
    geom = read_geom(real_fixtures / "psgeom_refgeom_crystfel.geom")
    assert all(p.res == 9097.52 for p in geom.panels)
    assert all(p.coffset_m == 0.567409 for p in geom.panels)
    assert not any(p.no_index for p in geom.panels)


def test_cxiformat_file_mask_bits(real_fixtures: Path) -> None:
    geom = read_geom(real_fixtures / "crystfel_cspad-cxiformat.geom")
    p = geom.panels[0]
    assert p.mask == "/entry_1/data_1/mask"
    assert (p.mask_good, p.mask_bad) == (0, 0xFFFF)
    assert p.coffset_m == 0.573224


@pytest.mark.parametrize("name", REAL_GEOMS)
def test_real_files_round_trip(real_fixtures: Path, tmp_path: Path, name: str) -> None:
    geom = read_geom(real_fixtures / name)
    out = write_geom(geom, tmp_path / "copy.geom")
    again = read_geom(out)
    assert again == geom
    assert again.source == str(out)


# --------------------------------------------------------------------------- semantics


def test_two_panel_file() -> None:
    geom = parse_geom(TWO_PANELS)
    assert geom.slab_shape == (10, 10)
    assert geom.photon_energy == 9500.0
    p0, p1 = geom.panels
    assert p1.fs == (-1.0, 0.0, 0.0) and p1.ss == (0.0, -1.0, 0.0)
    assert p0.clen == 0.1 and p0.res == 10000.0 and p0.adu_per_ev == 0.001
    assert p0.max_adu == math.inf and p0.coffset_m == 0.0


def test_global_keys_apply_only_to_panels_defined_after_them() -> None:
    text = TWO_PANELS.replace("p1/min_fs = 0", "res = 5000\ncoffset = 0.01\np1/min_fs = 0")
    p0, p1 = parse_geom(text).panels
    assert (p0.res, p0.coffset_m) == (10000.0, 0.0)
    assert (p1.res, p1.coffset_m) == (5000.0, 0.01)


def test_panel_key_given_after_a_changed_default_is_not_a_duplicate() -> None:
    text = TWO_PANELS + "res = 5000\np0/res = 2000\n"
    p0, p1 = parse_geom(text).panels
    assert p0.res == 2000.0 and p1.res == 10000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+0.004806x +0.999989y", (0.004806, 0.999989, 0.0)),
        ("x", (1.0, 0.0, 0.0)),
        ("-y", (0.0, -1.0, 0.0)),
        ("0.0003420x -0.9999310y", (0.000342, -0.999931, 0.0)),
        ("+0.5x +0.5y +0.7071z", (0.5, 0.5, 0.7071)),
        ("1e-3x + 1y", (0.001, 1.0, 0.0)),
        ("-1.0z +1x", (1.0, 0.0, -1.0)),
    ],
)
def test_vectors(value: str, expected: tuple[float, float, float]) -> None:
    text = TWO_PANELS.replace("p0/fs = +1.0x", f"p0/fs = {value}")
    if expected[1] != 0.0 and expected[0] == 0.0:  # keep fs and ss not parallel
        text = text.replace("p0/ss = +1.0y", "p0/ss = +1.0x")
    assert parse_geom(text).panels[0].fs == pytest.approx(expected)


@pytest.mark.parametrize(
    ("line", "clen"),
    [("clen = 0.1", 0.1), ("clen = 95.3 mm", 0.0953), ("clen = 0.2 m", 0.2),
     ("clen = /LCLS/detector_1/EncoderValue", "/LCLS/detector_1/EncoderValue"),
     ("clen = /LCLS/detector_1/EncoderValue mm", "/LCLS/detector_1/EncoderValue")],
)  # fmt: skip
def test_clen_units(line: str, clen: float | str) -> None:
    geom = parse_geom(TWO_PANELS.replace("clen = 0.1", line))
    assert geom.panels[0].clen == pytest.approx(clen) if isinstance(clen, float) else clen


@pytest.mark.parametrize(
    ("line", "energy"),
    [("photon_energy = 9500", 9500.0), ("photon_energy = 9.5 keV", 9500.0),
     ("photon_energy = 4570 eV", 4570.0), ("wavelength = 1.0 A", 12398.419843320026),
     ("photon_energy = /LCLS/photon_energy_eV", "/LCLS/photon_energy_eV")],
)  # fmt: skip
def test_photon_energy_units(line: str, energy: float | str) -> None:
    geom = parse_geom(TWO_PANELS.replace("photon_energy = 9500", line))
    assert geom.photon_energy == (pytest.approx(energy) if isinstance(energy, float) else energy)


def test_integer_fields_written_as_floats_are_accepted() -> None:
    geom = parse_geom(TWO_PANELS.replace("p0/max_fs = 9", "p0/max_fs = 9.0"))
    assert geom.panels[0].max_fs == 9


def test_bad_regions_both_forms() -> None:
    text = TWO_PANELS + (
        "\nbadbeamstop/min_x = -2\nbadbeamstop/max_x = 2\nbadbeamstop/min_y = -1\n"
        "badbeamstop/max_y = 1\n"
        "\nbad_row/min_fs = 2\nbad_row/max_fs = 4\nbad_row/min_ss = 6\nbad_row/max_ss = 6\n"
        "bad_row/panel = p1\n"
    )
    geom = parse_geom(text)
    xy, fsss = geom.bad_regions
    assert not xy.is_fsss and (xy.min_x, xy.max_x, xy.min_y, xy.max_y) == (-2, 2, -1, 1)
    assert fsss.is_fsss and fsss.panel == "p1" and (fsss.min_fs, fsss.max_ss) == (2, 6)
    assert parse_geom(format_geom(geom)) == geom


def test_mask_synonyms_and_flags() -> None:
    text = TWO_PANELS + (
        "p0/mask0_data = /mask\np0/mask0_goodbits = 0x1\np0/mask0_badbits = 6\n"
        "p0/no_index = true\np0/flag_morethan = 30000\np0/max_adu = 16000\n"
    )
    p0, p1 = parse_geom(text).panels
    assert (p0.mask, p0.mask_good, p0.mask_bad, p0.no_index) == ("/mask", 1, 6, True)
    assert p0.flags == (PixelFlag("morethan", 30000.0),) and p0.max_adu == 16000.0
    assert p0.extra == ()
    assert (p1.mask, p1.no_index, p1.extra) == (None, False, ())
    assert parse_geom(format_geom(parse_geom(text))) == parse_geom(text)


PSANA_LAYOUT = """\
res = 9097.52
clen = 0.1
data = /data/cspad
dim0 = %
dim2 = ss
dim3 = fs
{panels}
"""


def _psana_text(n: int) -> str:
    blocks = []
    for i in range(n):
        blocks.append(
            f"s{i}/dim1 = {i}\ns{i}/min_fs = 0\ns{i}/max_fs = 387\ns{i}/min_ss = 0\n"
            f"s{i}/max_ss = 184\ns{i}/fs = +1x\ns{i}/ss = +1y\ns{i}/corner_x = {400 * i}\n"
            f"s{i}/corner_y = 0\n"
        )
    return PSANA_LAYOUT.format(panels="\n".join(blocks))


def test_fixed_panel_index_folds_into_slab_rows() -> None:
    geom = parse_geom(_psana_text(32))
    assert geom.slab_shape == (5920, 388)
    s7 = geom.panel("s7")
    assert (s7.min_ss, s7.max_ss, s7.slab_ss_offset) == (7 * 185, 8 * 185 - 1, 7 * 185)
    assert s7.dim_structure == ("%", 7, "ss", "fs") and s7.fixed_index == 7
    assert parse_geom(format_geom(geom)) == geom


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    geom = parse_geom(TWO_PANELS)
    path = write_geom(geom, tmp_path / "a.geom")
    with pytest.raises(OutputExistsError):
        write_geom(geom, path)
    write_geom(geom, path, force=True)
    assert read_geom(path) == geom


def test_model_objects_validate_on_construction() -> None:
    good = parse_geom(TWO_PANELS).panels[0]
    with pytest.raises(ValueError, match="parallel"):
        Panel(**{**good.__dict__, "ss": (2.0, 0.0, 0.0)})
    with pytest.raises(ValueError, match="min_fs"):
        Panel(**{**good.__dict__, "min_fs": 20})
    with pytest.raises(ValueError, match="one form"):
        BadRegion("bad", min_x=0, max_x=1, min_y=0, max_y=1, min_fs=0, max_fs=0, min_ss=0, max_ss=0)
    with pytest.raises(ValueError, match="needs all"):
        BadRegion("bad", min_x=0, max_x=1)
    with pytest.raises(ValueError, match="overlap"):
        DetectorGeometry(panels=(good, Panel(**{**good.__dict__, "name": "other"})))
    with pytest.raises(ValueError, match="does not cover"):
        DetectorGeometry(panels=(good,), slab_shape=(2, 2))


# --------------------------------------------------------------------------- malformed files


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not found") as info:
        read_geom(tmp_path / "none.geom")
    assert info.value.path.endswith("none.geom")


def test_truncated_mid_panel_names_the_panel_and_its_line() -> None:
    text = TWO_PANELS[: TWO_PANELS.index("p1/fs")]
    err = _error(text)
    assert err.line == _line_of(TWO_PANELS, "p1/min_fs")
    assert "p1" in err.message and "fs" in err.message and "corner_x" in err.message


def test_truncated_mid_line() -> None:
    text = TWO_PANELS[: TWO_PANELS.index("p1/corner_x") + len("p1/corn")]
    err = _error(text)
    assert err.line == _line_of(TWO_PANELS, "p1/corner_x")
    assert "truncated" in err.message


def test_truncated_value() -> None:
    text = TWO_PANELS[: TWO_PANELS.index("p1/corner_y") + len("p1/corner_y = ")]
    err = _error(text)
    assert err.line == _line_of(TWO_PANELS, "p1/corner_y") and "no value" in err.message


def test_real_file_truncated(real_fixtures: Path) -> None:
    text = (real_fixtures / "om_cxi06216_v4-predrefine.geom").read_text()
    cut = text[: text.index("q3a15/corner_x")]
    err = _error(cut)
    assert "q3a15" in err.message and "corner_x" in err.message
    assert err.line == _line_of(text, "q3a15/min_fs")


def test_missing_corner_x() -> None:
    text = TWO_PANELS.replace("p0/corner_x = -12.0\n", "")
    err = _error(text)
    assert "p0" in err.message and "corner_x" in err.message
    assert err.line == _line_of(TWO_PANELS, "p0/min_fs")
    assert "det.geom, line" in str(err)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("p0/fs = +1.0x", "p0/fs = +1.0q", "cannot read vector"),
        ("p0/fs = +1.0x", "p0/fs = 1.0x 2.0y", "cannot read vector"),
        ("p0/fs = +1.0x", "p0/fs = +1x +2x", "x given twice"),
        ("p0/fs = +1.0x", "p0/fs = 0x", "zero vector"),
        ("p0/min_fs = 0", "p0/min_fs = abc", "must be an integer"),
        ("p0/min_fs = 0", "p0/min_fs = 1.5", "must be an integer"),
        ("p0/min_fs = 0", "p0/min_fs = -1", ">= 0"),
        ("p0/corner_x = -12.0", "p0/corner_x = left", "must be a number"),
        ("p0/corner_x = -12.0", "p0/corner_x = nan", "must be a number"),
        ("res = 10000", "res = -3", "positive"),
        ("clen = 0.1", "clen = far", "HDF5 path"),
        ("clen = 0.1", "clen = 0.1 furlong", "'m' or 'mm'"),
        ("photon_energy = 9500", "photon_energy = 9500 J", "eV or keV"),
        ("photon_energy = 9500", "photon_energy = -1", "positive"),
        ("dim0 = %", "dim0 = event", "dim0 must be"),
        ("p0/corner_x = -12.0", "p0/corner_xx = -12.0", "did you mean 'corner_x'"),
        ("res = 10000", "resolution = 10000", "unknown global key"),
        ("p0/corner_y = 3.0", "p0/corner_y = 3.0\np0/corner_y = 4.0", "given twice"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/mask8_data = /m", "masks 0..7"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/mask3_data = m", "starting with '/'"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/mask3_badbits = red", "bit mask"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/mask_edge_pixels = -1", ">= 0"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/flag_lessthan = low", "must be a number"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/saturation_map = sat", "starting with '/'"),
        ("clen = 0.1", "clen = 0.1\ndetector_shift_x = 1 mm", "without detector_shift_y"),
        ("clen = 0.1", "clen = 0.1\ndetector_shift_x = 1 cm", "[m|mm]"),
        ("p0/min_fs = 0", "p0/min_fs = 0\np0/detector_shift_x = /shift", "top-level only"),
        ("p0/no_index = 0", "p0/no_index = maybe", "no_index"),
        ("p0/min_fs = 0", "p0/min_fs = 0\ngroup_x/min_fs = 0", "must not start"),
        ("p0/min_fs = 0", "p0/min_fs = 0\nbad1/min_q = 0", "bad-region key"),
    ],
)
def test_malformed_line_is_named(old: str, new: str, needle: str) -> None:
    text = TWO_PANELS.replace("p1/max_ss = 9", "p1/max_ss = 9\np0/no_index = 0")
    assert old in text
    bad = text.replace(old, new, 1)
    err = _error(bad)
    assert needle in err.message, err.message
    wanted = new.splitlines()[-1]
    assert bad.splitlines()[err.line - 1].split(";")[0].strip() == wanted


@pytest.mark.parametrize(
    ("old", "new", "needle", "blamed"),
    [
        ("p1/min_ss = 5", "p1/min_ss = 4", "overlap", "p0/min_fs"),
        ("p0/min_fs = 0", "p0/min_fs = 12", "min_fs = 12, max_fs = 9", "p0/min_fs"),
        ("dim2 = fs", "dim2 = ss", "one ss and one fs", "dim2 = ss"),
    ],
)
def test_impossible_layouts(old: str, new: str, needle: str, blamed: str) -> None:
    bad = TWO_PANELS.replace(old, new, 1)
    err = _error(bad)
    assert needle in err.message, err.message
    assert err.line == _line_of(bad, blamed)


def test_bad_region_errors() -> None:
    outside = TWO_PANELS + (
        "bad1/min_fs = 0\nbad1/max_fs = 20\nbad1/min_ss = 0\nbad1/max_ss = 1\nbad1/panel = p0\n"
    )
    err = _error(outside)
    assert "outside panel p0" in err.message and err.line == _line_of(outside, "bad1/min_fs")
    mixed = TWO_PANELS + "bad2/min_fs = 0\nbad2/min_x = 0\n"
    assert "one form" in _error(mixed).message
    unknown = TWO_PANELS + (
        "bad3/min_x = 0\nbad3/max_x = 1\nbad3/min_y = 0\nbad3/max_y = 1\nbad3/panel = q9\n"
    )
    assert "'q9'" in _error(unknown).message


def test_no_panels_and_binary_file(tmp_path: Path) -> None:
    assert "no panels" in _error("; nothing\nres = 100\n").message
    path = tmp_path / "bin.geom"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(FormatError, match="not a text"):
        read_geom(path)


def test_mixed_fixed_index_layout_rejected() -> None:
    text = _psana_text(2).replace("s1/dim1 = 1\n", "s1/dim1 = ss\ns1/dim2 = fs\ns1/dim3 = 0\n")
    err = _error(text)
    assert "fixed index after ss" in err.message and err.line == _line_of(text, "s1/dim3")
    text = _psana_text(2).replace("dim0 = %\ndim2 = ss\ndim3 = fs\n", "")
    text = text.replace("s0/dim1 = 0\n", "s0/dim0 = %\ns0/dim1 = 0\ns0/dim2 = ss\ns0/dim3 = fs\n")
    text = text.replace("s1/dim1 = 1\n", "s1/dim0 = %\ns1/dim1 = ss\ns1/dim2 = fs\n")
    err = _error(text)
    assert "no fixed index" in err.message and err.line == _line_of(text, "s1/dim0")


# --------------------------------------------------------------------------- psana geometry


def test_psana_geometry_files_read(real_fixtures: Path) -> None:
    from hpcdiff.io.psana_geometry import cspad_2x1_pixel_coords_um, read_psana_geometry

    for name, top in (
        ("psgeom_refgeom_psana.data", ("IP", 0)),
        ("geometry-def-cspad.data", ("IP", 0)),
    ):
        psana = read_psana_geometry(real_fixtures / name)
        assert psana.top == top and len(psana.segments()) == 32
        xyz = psana.crystfel_slab_positions_m()
        assert xyz.shape == (1480, 1552, 3) and np.isfinite(xyz).all()
        assert 0.99 < np.median(xyz[..., 2]) < 1.01  # RAIL / IP z0 = 1e6 um
    local = cspad_2x1_pixel_coords_um()
    # 2x1: 109.92 um pixels, the two middle columns 274.8 um wide, centred on the origin
    np.testing.assert_allclose(np.diff(local[0, :, 0])[[0, 192, 193, 194, 386]],
                               [109.92, (109.92 + 274.8) / 2, 274.8, (109.92 + 274.8) / 2, 109.92])  # fmt: skip
    np.testing.assert_allclose(local[..., :2].mean(axis=(0, 1)), 0.0, atol=1e-9)


def test_psana_and_crystfel_files_describe_the_same_layout(real_fixtures: Path) -> None:
    """psgeom's reference psana and CrystFEL files: same ASIC layout and orientation.

    The CrystFEL file was geoptimised ASIC by ASIC (shifts and rotations, see its header)
    after conversion, so whole ASICs sit 15-31 pixels and up to 0.7 degrees from the psana
    metrology; after removing each ASIC's shift its pixels agree to within 3 pixels.
    """

    from hpcdiff.geometry import pixel_positions_m
    from hpcdiff.io.psana_geometry import read_psana_geometry

    psana = read_psana_geometry(real_fixtures / "psgeom_refgeom_psana.data")
    a = psana.crystfel_slab_positions_m()[..., :2]
    geom = read_geom(real_fixtures / "psgeom_refgeom_crystfel.geom")
    b = pixel_positions_m(geom, clen_m=0.0)[..., :2]
    pitch = 1 / 9097.52
    for p in geom.panels:
        sl = np.s_[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1]
        pa, pb = a[sl], b[sl]
        offset = np.mean(pa - pb, axis=(0, 1))
        assert np.hypot(*offset) / pitch < 40, p.name
        fs_a = pa[:, -1] - pa[:, 1]  # along fs, away from the wide column
        fs_b = pb[:, -1] - pb[:, 1]
        cos = (
            np.sum(fs_a * fs_b, axis=-1)
            / np.linalg.norm(fs_a, axis=-1)
            / np.linalg.norm(fs_b, axis=-1)
        )
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.0, p.name
        resid = np.linalg.norm(pa - pb - offset, axis=-1) / pitch
        assert resid.max() < 3.0 and np.median(resid) < 2.0, p.name


def test_psana_geometry_errors(tmp_path: Path) -> None:
    from hpcdiff.io.psana_geometry import psana_to_slab, read_psana_geometry

    path = tmp_path / "g.data"
    path.write_text("# header\nQUAD:V1 0 SENS2X1:V1 0 1 2 3 0 0 0 0 0\n")
    with pytest.raises(FormatError, match="13 fields") as info:
        read_psana_geometry(path)
    assert info.value.line == 2
    path.write_text("QUAD:V1 0 SENS2X1:V1 0 1 2 x 0 0 0 0 0 0\n")
    assert read_error_line(path) == 1
    row = "QUAD:V1 0 SENS2X1:V1 0 1 2 3 0 0 0 0 0 0\n"
    path.write_text(row + row)
    with pytest.raises(FormatError, match="placed twice"):
        read_psana_geometry(path)
    path.write_text("CSPAD:V1 0 QUAD:V1 0 1 2 3 0 0 0 0 0 0\n")
    with pytest.raises(FormatError, match="not a supported sensor"):
        read_psana_geometry(path).segments()
    with pytest.raises(ValueError, match="CSPAD segments"):
        psana_to_slab(np.zeros((8, 185, 388)))
    seg = np.arange(32 * 185 * 388).reshape(32, 185, 388)
    slab = psana_to_slab(seg)
    assert slab[185 * 3 + 7, 388 * 2 + 11] == seg[8 * 2 + 3, 7, 11]


def read_error_line(path: Path) -> int | None:
    from hpcdiff.io.psana_geometry import read_psana_geometry

    with pytest.raises(FormatError) as info:
        read_psana_geometry(path)
    return info.value.line


def test_panels_in_different_datasets_rejected() -> None:
    text = TWO_PANELS + "p1/data = /other\n"
    err = _error(text)
    assert "p1" in err.message and "/other" in err.message
    assert err.line == _line_of(text, "p1/min_fs")
