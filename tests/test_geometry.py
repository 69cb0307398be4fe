"""Per-pixel geometry (hpcdiff.geometry): positions, q, corrections, masks, assembly."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.geometry import (
    DetectorModel,
    bad_region_mask,
    cspad_like_geometry,
    photon_energy_to_wavelength_m,
    pixel_map,
    pixel_positions_m,
    polarisation_factor,
    scattering_vectors,
    small_geometry,
)
from hpcdiff.io.geom import DetectorGeometry, Panel, format_geom, parse_geom, read_geom

OM_GEOM = "om_cxi06216_v4-predrefine.geom"


def _panel(name: str = "p", **kw) -> Panel:
    base = dict(
        name=name, min_fs=0, max_fs=9, min_ss=0, max_ss=9, fs=(1.0, 0.0, 0.0),
        ss=(0.0, 1.0, 0.0), corner_x=0.0, corner_y=0.0, res=10_000.0, clen=0.1,
    )  # fmt: skip
    return Panel(**{**base, **kw})


@pytest.fixture(scope="module")
def om_model(real_fixtures: Path) -> DetectorModel:
    return DetectorModel.build(
        read_geom(real_fixtures / OM_GEOM), clen_m=-0.45, photon_energy_ev=9500.0
    )


@pytest.fixture(scope="module")
def small_model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=9500.0)


# --------------------------------------------------------------------------- positions and q


def test_pixel_centres_follow_crystfel_convention() -> None:
    p = _panel(
        min_fs=4, max_fs=13, min_ss=2, max_ss=6, fs=(0.0, -1.0, 0.0), ss=(1.0, 0.0, 0.0),
        corner_x=-5.0, corner_y=7.0, coffset_m=0.002,
    )  # fmt: skip
    geom = DetectorGeometry(panels=(p,))
    pos = pixel_positions_m(geom)
    assert pos.shape == (7, 14, 3) and pos.dtype == np.float64
    assert np.isnan(pos[:2]).all() and np.isnan(pos[:, :4]).all()
    # slab (ss=3, fs=6) is panel pixel (fs 2, ss 1): centre corner + 2.5 fs + 1.5 ss
    expected = np.array([-5.0 + 1.5, 7.0 - 2.5, 0.0]) / 1e4 + [0, 0, 0.1 + 0.002]
    np.testing.assert_allclose(pos[3, 6], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(pixel_positions_m(geom, clen_m=0.5)[3, 6, 2], 0.502)


def test_q_of_one_real_pixel_matches_crystfel_formula(real_fixtures: Path) -> None:
    geom = read_geom(real_fixtures / OM_GEOM)
    p = geom.panel("q2a7")
    fs, ss = 100, 50  # panel-relative pixel
    clen, energy = -0.45, 9500.0  # encoder value (m) as CrystFEL reads it; + coffset
    # CrystFEL detgeom_transform_coords, by hand, in pixels then metres:
    xs = p.corner_x + (fs + 0.5) * p.fs[0] + (ss + 0.5) * p.ss[0]
    ys = p.corner_y + (fs + 0.5) * p.fs[1] + (ss + 0.5) * p.ss[1]
    zs = (clen + p.coffset_m) * p.res + (fs + 0.5) * p.fs[2] + (ss + 0.5) * p.ss[2]
    ctt = zs / math.sqrt(xs**2 + ys**2 + zs**2)
    twotheta, az = math.acos(ctt), math.atan2(ys, xs)
    k = 1.0 / (12398.419843320026e-10 / energy)  # m^-1
    q_hand = np.array(
        [k * math.sin(twotheta) * math.cos(az), k * math.sin(twotheta) * math.sin(az),
         k * (ctt - 1.0)]
    ) / 1e9  # fmt: skip
    model = DetectorModel.build(geom, clen_m=clen, photon_energy_ev=energy)
    got = model.q_vectors[p.min_ss + ss, p.min_fs + fs]
    np.testing.assert_allclose(got, q_hand, rtol=1e-12)
    assert model.q_abs[p.min_ss + ss, p.min_fs + fs] == pytest.approx(
        2 * math.sin(twotheta / 2) * k / 1e9, rel=1e-12
    )
    assert model.two_theta[p.min_ss + ss, p.min_fs + fs] == pytest.approx(twotheta, rel=1e-12)


def test_q_abs_grows_with_radius(om_model: DetectorModel) -> None:
    pos, q = om_model.positions_m, om_model.q_abs
    on = om_model.panel_index >= 0
    radius = np.hypot(pos[..., 0], pos[..., 1])[on]
    # all OM panels share one z, so |q| is a strictly increasing function of radius
    order = np.argsort(radius, kind="stable")
    assert np.all(np.diff(q[on][order]) >= -1e-12)
    assert np.isnan(q[~on]).all() and not np.isnan(q[on]).any()


def test_scattering_vectors_invariants() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(size=(50, 3)) + [0, 0, 5]
    lam = photon_energy_to_wavelength_m(12398.419843320026)  # 1 A
    q = scattering_vectors(r, wavelength_m=lam)
    k_in = np.array([0, 0, 1.0]) / (lam * 1e9)
    k_out = q + k_in
    np.testing.assert_allclose(np.linalg.norm(k_out, axis=-1), 1 / (lam * 1e9))
    # |q| = 2 sin(theta)/lambda, q on the Ewald sphere: q . (q + 2 k_in) = 0
    np.testing.assert_allclose(np.einsum("ij,ij->i", q, q + 2 * k_in), 0, atol=1e-12)
    with pytest.raises(ValueError):
        scattering_vectors(r, wavelength_m=0.0)


def test_q_vectors_at_other_energy(small_model: DetectorModel) -> None:
    other = DetectorModel.build(small_model.geom, photon_energy_ev=12000.0)
    np.testing.assert_allclose(small_model.q_vectors_at(12000.0), other.q_vectors, rtol=1e-12)


# --------------------------------------------------------------------------- corrections


def test_polarisation_factor() -> None:
    r = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    cos2 = 0.5  # cos^2(2 theta) at 45 degrees
    np.testing.assert_allclose(polarisation_factor(r, degree=1.0), [cos2, 1.0, 1.0])
    np.testing.assert_allclose(polarisation_factor(r, degree=0.0), [1.0, cos2, 1.0])
    np.testing.assert_allclose(polarisation_factor(r, degree=0.5), [0.75, 0.75, 1.0])
    with pytest.raises(ValueError):
        polarisation_factor(r, degree=1.5)


def test_solid_angle_sums_to_analytic_rectangle() -> None:
    n, d, res = 200, 0.05, 2000.0  # 10 cm square, 0.5 mm pixels, 5 cm away
    p = _panel(max_fs=n - 1, max_ss=n - 1, corner_x=-n / 2, corner_y=-n / 2, res=res, clen=d)
    model = DetectorModel.build(DetectorGeometry(panels=(p,)), photon_energy_ev=9500.0)
    a = b = n / 2 / res
    analytic = 4 * math.asin(a * b / math.sqrt((a * a + d * d) * (b * b + d * d)))
    assert model.solid_angle_sr.sum() == pytest.approx(analytic, rel=2e-5)
    centre = model.solid_angle_sr[n // 2, n // 2]
    assert centre == pytest.approx((1 / res) ** 2 / d**2, rel=1e-3)


def test_solid_angle_of_tilted_panel_uses_its_normal() -> None:
    tilt = math.radians(30)
    flat = _panel(max_fs=0, max_ss=0, corner_x=-0.5, corner_y=-0.5)
    tilted = _panel(
        max_fs=0, max_ss=0, fs=(math.cos(tilt), 0.0, math.sin(tilt)), corner_y=-0.5,
        corner_x=-0.5 * math.cos(tilt),
    )  # fmt: skip
    models = [
        DetectorModel.build(DetectorGeometry(panels=(p,)), photon_energy_ev=9e3)
        for p in (flat, tilted)
    ]
    d = [float(np.linalg.norm(m.positions_m[0, 0])) for m in models]
    assert d[1] != d[0]  # the tilted pixel centre sits 0.25 px further along z
    ratio = models[1].solid_angle_sr[0, 0] / models[0].solid_angle_sr[0, 0]
    assert ratio == pytest.approx(math.cos(tilt) * d[0] ** 2 / d[1] ** 2, rel=1e-12)


# --------------------------------------------------------------------------- masks and rings


def test_panel_index_valid_and_bad_regions() -> None:
    text = format_geom(small_geometry(clen_m=0.1, photon_energy=9500.0)) + (
        "p2/no_index = 1\n"
        "bad_box/min_fs = 10\nbad_box/max_fs = 12\nbad_box/min_ss = 5\nbad_box/max_ss = 6\n"
        "bad_box/panel = p0\n"
        "bad_all/min_fs = 63\nbad_all/max_fs = 63\nbad_all/min_ss = 0\nbad_all/max_ss = 191\n"
        "bad_beam/min_x = -1000\nbad_beam/max_x = 1000\nbad_beam/min_y = 9.5\n"
        "bad_beam/max_y = 10.5\n"
    )
    geom = parse_geom(text)
    model = DetectorModel.build(geom)
    assert model.panel_index.dtype == np.int16
    np.testing.assert_array_equal(model.panel_index[::48, 0], [0, 1, 2, 3])
    bad = bad_region_mask(geom)
    expected = np.zeros(geom.slab_shape, bool)
    expected[5:7, 10:13] = True  # fs/ss box, inclusive
    expected[:, 63] = True  # last column of every panel
    # lab box: pixel corners with 9.5 < y < 10.5 -> p0 (corner_y 12, ss along +y): none on
    # p0 (y >= 12); p1 (ss along -x, fs along +y, corner y = -6): fs = 16 (corner y = 10)
    expected[48:96, 16] = True
    p3 = geom.panel("p3")  # fs along -y, corner y = 6: fs = -4 none; ss along +x: none
    assert p3.fs[1] == -1.0
    np.testing.assert_array_equal(bad, expected)
    valid = model.valid
    assert not valid[96:144].any()  # no_index panel
    np.testing.assert_array_equal(valid, ~bad & (model.panel_index != 2))


def test_radial_bins(om_model: DetectorModel) -> None:
    ring, edges = om_model.radial_bins(100)
    assert ring.dtype == np.int32 and edges.shape == (101,)
    valid = om_model.valid
    assert (ring[valid] >= 0).all() and (ring[valid] < 100).all() and (ring[~valid] == -1).all()
    q = om_model.q_abs[valid]
    r = ring[valid]
    assert np.all(q >= edges[r] - 1e-12) and np.all(q <= edges[r + 1] + 1e-12)
    assert np.bincount(r, minlength=100).min() > 0
    assert om_model.radial_bins(100)[0] is ring  # cached per detector
    ring2, edges2 = om_model.radial_bins(10, q_max=float(np.median(q)))
    assert edges2[-1] == pytest.approx(np.median(q))
    assert ((ring2 == -1) & valid).sum() == (q > np.median(q)).sum()
    with pytest.raises(ValueError):
        om_model.radial_bins(0)


# --------------------------------------------------------------------------- assembly


def _check_one_to_one(pm, n_pixels: int) -> np.ndarray:
    on = pm.rows >= 0
    assert ((pm.cols >= 0) == on).all() and on.sum() == n_pixels
    assert pm.rows[on].max() < pm.shape[0] and pm.cols[on].max() < pm.shape[1]
    cells = pm.rows[on].astype(np.int64) * pm.shape[1] + pm.cols[on]
    assert np.bincount(cells).max() == 1  # (np.unique is slow on millions of ints)
    return on


def test_real_cspad_assembles_one_to_one(om_model: DetectorModel) -> None:
    pm = om_model.pixel_map()
    assert pm.shape == (1734, 1737)
    on = _check_one_to_one(pm, om_model.geom.n_pixels)
    # displaced (colliding) pixels stay next to where they belong
    res = 9090.91
    pos = om_model.positions_m
    col_true = pos[..., 0][on] * res - (pm.beam_rc[1] * -1)
    row_true = pm.beam_rc[0] - pos[..., 1][on] * res
    dist = np.hypot(pm.cols[on] + 0.5 - col_true, pm.rows[on] + 0.5 - row_true)
    assert dist.max() < 1.6 and np.mean(dist > 0.7072) < 1e-3
    again = pixel_map(om_model.geom)
    np.testing.assert_array_equal(again.rows, pm.rows)
    np.testing.assert_array_equal(again.cols, pm.cols)


def test_assemble_places_values(small_model: DetectorModel) -> None:
    pm = small_model.pixel_map()
    n = small_model.geom.n_pixels
    values = np.arange(n, dtype=np.float32).reshape(small_model.slab_shape)
    image = pm.assemble(values)
    assert image.dtype == np.float32 and image.shape == pm.shape
    assert np.isnan(image).sum() == pm.shape[0] * pm.shape[1] - n
    np.testing.assert_array_equal(np.sort(image[~np.isnan(image)]), values.ravel())
    assert image[pm.rows[7, 11], pm.cols[7, 11]] == values[7, 11]
    batch = pm.assemble(np.stack([values, 2 * values]), fill=-1.0)
    assert batch.shape == (2, *pm.shape) and (batch == -1).sum() == 2 * (image.size - n)
    np.testing.assert_array_equal(batch[1][batch[1] >= 0], 2 * image[~np.isnan(image)])
    ints = pm.assemble(values.astype(np.int32), fill=0)
    assert ints.dtype == np.int32
    assert pm.assemble(values.astype(np.int32)).dtype == np.float64  # NaN fill
    mask = pm.assemble(values > 5, fill=False)
    assert mask.dtype == bool and mask.sum() == (values > 5).sum()
    with pytest.raises(ValueError, match="slab shape"):
        pm.assemble(values[:10])


def test_assemble_skips_slab_pixels_without_panel() -> None:
    p0 = _panel("a", min_fs=2, max_fs=5, min_ss=0, max_ss=2)
    p1 = _panel("b", min_fs=0, max_fs=3, min_ss=4, max_ss=5, corner_x=10.0)
    geom = DetectorGeometry(panels=(p0, p1))  # slab (6, 6) with holes
    pm = pixel_map(geom)
    on = _check_one_to_one(pm, geom.n_pixels)
    values = np.arange(36, dtype=np.float64).reshape(6, 6)
    image = pm.assemble(values, fill=-1.0)
    np.testing.assert_array_equal(np.sort(image[image >= 0]), np.sort(values[on]))
    assert pm.shape == (3, 14)  # x from 0 to 14 px (b ends at 10 + 4), y 0..3


def test_assembly_orientation() -> None:
    """+x runs along columns and +y up (towards row 0)."""
    pm = pixel_map(small_geometry())
    pos = pixel_positions_m(small_geometry())
    x, y = pos[..., 0], pos[..., 1]
    i, j = np.unravel_index(np.argmax(x), x.shape)
    assert pm.cols[i, j] == pm.cols.max()
    i, j = np.unravel_index(np.argmax(y), y.shape)
    assert pm.rows[i, j] == 0


# --------------------------------------------------------------------------- built-in detectors


def test_cspad_like_geometry() -> None:
    geom = cspad_like_geometry()
    assert len(geom.panels) == 64 and geom.slab_shape == (1480, 1552)
    assert all((p.n_fs, p.n_ss, p.res) == (194, 185, 9090.91) for p in geom.panels)
    assert geom.photon_energy == "/LCLS/photon_energy_eV" and geom.panels[0].clen == 0.1
    # ASIC pairs form 2x1 sensors with a 3-pixel gap along fs
    a0, a1 = geom.panel("q1a4"), geom.panel("q1a5")
    step = np.array([a1.corner_x - a0.corner_x, a1.corner_y - a0.corner_y])
    np.testing.assert_allclose(step, 197 * np.array(a0.fs[:2]), atol=1e-3)
    pm = pixel_map(geom)
    assert pm.shape == (1731, 1734)
    _check_one_to_one(pm, geom.n_pixels)
    # no two pixels physically overlap: axis-aligned pixels each own their floor cell
    pos = pixel_positions_m(geom) * 9090.91
    cells = np.floor(pos[..., 0] + 2000).astype(int) * 4000 + np.floor(pos[..., 1] + 2000)
    assert np.bincount(cells.astype(np.int64).ravel()).max() == 1
    with_path = cspad_like_geometry(clen_path="/LCLS/detector_1/EncoderValue", coffset_m=0.5)
    assert with_path.panels[0].clen == "/LCLS/detector_1/EncoderValue"
    assert parse_geom(format_geom(with_path)) == with_path


def test_small_geometry(small_model: DetectorModel) -> None:
    geom = small_model.geom
    assert len(geom.panels) == 4 and geom.slab_shape == (192, 64)
    pm = small_model.pixel_map()
    _check_one_to_one(pm, geom.n_pixels)
    q = small_model.q_abs
    assert 0.3 < np.nanmin(q) < np.nanmax(q) < 4.0  # nm^-1: useful range for diffuse
    assert parse_geom(format_geom(geom)) == geom


# --------------------------------------------------------------------------- model


def test_model_build_and_cache(real_fixtures: Path) -> None:
    geom = read_geom(real_fixtures / OM_GEOM)
    with pytest.raises(ValueError, match="clen_m"):
        DetectorModel.build(geom, photon_energy_ev=9500.0)
    with pytest.raises(ValueError, match="photon_energy_ev"):
        DetectorModel.build(geom, clen_m=0.1)
    model = DetectorModel.build(small_geometry(photon_energy=9000.0))
    assert (model.clen_m, model.photon_energy_ev) == (0.1, 9000.0)
    assert model.positions_m is model.positions_m
    assert not model.q_abs.flags.writeable
    with pytest.raises(ValueError):
        model.q_abs[0, 0] = 1.0
    copy = pickle.loads(pickle.dumps(model))
    assert copy == model and copy._cache == {}
    np.testing.assert_array_equal(copy.q_abs, model.q_abs)
