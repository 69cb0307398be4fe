"""hpcdiff's written .geom files are read alike by hpcdiff and by OM's reader (cfelpyutils):
every vector is written with all three components, as CrystFEL and EXtra-geom write them."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.geometry import cspad_like_geometry, pixel_positions_m, small_geometry
from hpcdiff.io.geom import DetectorGeometry, read_geom, write_geom

VECTOR_LINE = re.compile(r"^(?:\S+/)?(fs|ss) = (.*)$")
COMPONENT = re.compile(r"^[+-]\d+(?:\.\d*)?(?:e[+-]?\d+)?[xyz]$")


def _tilted(geom: DetectorGeometry, deg: float) -> DetectorGeometry:
    """Every panel rotated by ``deg`` about the beam: fs and ss with x and y both non-zero."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))

    def rot(v: tuple[float, float, float]) -> tuple[float, float, float]:
        return (c * v[0] - s * v[1], s * v[0] + c * v[1], v[2])

    panels = tuple(dataclasses.replace(p, fs=rot(p.fs), ss=rot(p.ss)) for p in geom.panels)
    return dataclasses.replace(geom, panels=panels)


GEOMETRIES = {
    "small": small_geometry,
    "cspad-like": cspad_like_geometry,
    "tilted": lambda: _tilted(small_geometry(), 30.0),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_vectors_are_written_with_every_component(name: str, tmp_path: Path) -> None:
    geom = GEOMETRIES[name]()
    path = write_geom(geom, tmp_path / f"{name}.geom")
    vectors = 0
    for line in path.read_text().splitlines():
        m = VECTOR_LINE.match(line)
        if m is None:
            continue
        terms = m.group(2).split()
        assert [t[-1] for t in terms] == ["x", "y", "z"], line
        assert all(COMPONENT.match(t) for t in terms), line
        vectors += 1
    assert vectors == 2 * len(geom.panels)
    assert read_geom(path) == geom  # exact round trip


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_cfelpyutils_places_every_pixel_where_hpcdiff_does(name: str, tmp_path: Path) -> None:
    """OM's reader: pixel corners in pixels, float32; hpcdiff: centres in metres."""
    cfel = pytest.importorskip("cfelpyutils.geometry", reason="cfelpyutils (OM's reader)")
    geom = GEOMETRIES[name]()
    path = write_geom(geom, tmp_path / f"{name}.geom")
    maps = cfel.compute_pix_maps(cfel.load_crystfel_geometry(str(path)).detector)
    centres_m = pixel_positions_m(geom, clen_m=0.1)
    assert maps.x.shape == centres_m.shape[:2]
    for p in geom.panels:
        block = (slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1))
        half = 0.5 * (np.asarray(p.fs) + np.asarray(p.ss))  # corner -> centre, pixels
        want = centres_m[block][..., :2] * p.res
        got = np.stack([maps.x[block] + half[0], maps.y[block] + half[1]], axis=-1)
        np.testing.assert_allclose(got, want, atol=2e-3, err_msg=p.name)  # float32 maps
