"""A .geom cut at a panel boundary: caught where the format makes it visible (groups that
name panels the file no longer defines), with the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdiff.errors import FormatError
from hpcdiff.io.geom import parse_geom, read_geom

PANEL = """\
{name}/min_fs = 0
{name}/max_fs = 7
{name}/min_ss = {lo}
{name}/max_ss = {hi}
{name}/fs = +1.0x +0.0y +0.0z
{name}/ss = +0.0x +1.0y +0.0z
{name}/corner_x = -4.0
{name}/corner_y = {y}
"""


def _file(groups: str, n_panels: int = 4) -> str:
    head = "res = 10000\nclen = 0.1\nphoton_energy = 9000\n" + groups
    panels = [
        PANEL.format(name=f"p{i}", lo=8 * i, hi=8 * i + 7, y=8.0 * i - 16) for i in range(n_panels)
    ]
    return head + "\n".join(panels)


def _line_of(text: str, fragment: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), start=1) if fragment in ln)


def _cut_before(text: str, fragment: str) -> str:
    return text[: text.index(fragment)]


def test_whole_file_with_groups_reads() -> None:
    text = _file(
        "rigid_group_a = p0,p1\nrigid_group_b = p2,p3\nrigid_group_collection_all = a,b\n"
        "group_top = p0,p1\ngroup_bottom = p2,p3\ngroup_all = top,bottom\n"
    )
    geom = parse_geom(text, source="det.geom")
    assert len(geom.panels) == 4 and len(geom.rigid_groups) == 6


def test_cut_at_a_panel_boundary_is_caught_by_the_groups() -> None:
    text = _file("rigid_group_a = p0,p1\nrigid_group_b = p2,p3\n")
    cut = _cut_before(text, "p3/min_fs")  # three whole panels: a smaller detector
    with pytest.raises(FormatError) as info:
        parse_geom(cut, source="det.geom")
    err = info.value
    assert err.path == "det.geom" and err.line == _line_of(text, "rigid_group_b")
    assert "'p3'" in err.message and "truncated" in err.message


def test_groups_naming_undefined_groups_are_errors() -> None:
    text = _file("rigid_group_a = p0,p1\nrigid_group_collection_c = a,zz\n")
    with pytest.raises(FormatError, match="rigid group 'zz'") as info:
        parse_geom(text, source="det.geom")
    assert info.value.line == _line_of(text, "rigid_group_collection_c")
    text = _file("group_top = p0,p1\ngroup_all = top,bottom\n")
    with pytest.raises(FormatError, match="panel or group 'bottom'"):
        parse_geom(text, source="det.geom")


def test_real_file_cut_at_a_panel_boundary(real_fixtures: Path, tmp_path: Path) -> None:
    text = (real_fixtures / "psgeom_refgeom_crystfel.geom").read_text()
    assert len(read_geom(real_fixtures / "psgeom_refgeom_crystfel.geom").panels) == 64
    cut = tmp_path / "cut.geom"
    cut.write_text(_cut_before(text, "q3a15/min_fs"))  # 63 whole panels
    with pytest.raises(FormatError) as info:
        read_geom(cut)
    err = info.value
    assert err.path == str(cut)
    assert err.line == _line_of(text, "rigid_group_q3 =") and "'q3a15'" in err.message
