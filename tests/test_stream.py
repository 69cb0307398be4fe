"""CrystFEL streams: the real LCLS/PAL streams, write/read round trips, and errors with lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcdiff.errors import FormatError, OutputExistsError
from hpcdiff.io.stream import (
    Chunk,
    Crystal,
    Stream,
    UnitCell,
    median_cell,
    read_stream,
    write_stream,
)


def test_real_lcls_stream(real_fixtures: Path) -> None:
    stream = read_stream(real_fixtures / "crystfel_tests_test.stream")
    assert len(stream.chunks) == 70
    assert stream.n_crystals == 32 and stream.n_hits == 70
    assert stream.header.startswith("CrystFEL stream format 2.3")
    assert (
        stream.geometry_text is not None and "q3a15/corner_y = -240.792654" in stream.geometry_text
    )
    assert stream.cell_text is not None and "a = 61.40 A" in stream.cell_text
    first = stream.chunks[0]
    assert first.image_filename == "r0092-ab/data1/LCLS_2013_Mar22_r0092_035103_1824f.h5"
    assert first.image_serial == 1 and first.hit and first.indexed_by == "xgandalf-nolatt-cell"
    assert first.photon_energy_ev == pytest.approx(9511.868397)
    assert first.camera_length_m == pytest.approx(0.152001) and first.n_peaks == 20
    assert ("hdf5/LCLS/detector0-EncoderValue", "-429.998810") in first.values
    assert first.line == 669
    (xtal,) = first.crystals
    assert xtal.line == 706
    assert xtal.astar == (0.0706577, -0.1444151, 0.0270631)
    assert xtal.cstar == (0.0296121, 0.0034501, -0.0512061)
    assert xtal.cell == UnitCell(
        "orthorhombic", "C", "?", 6.13532, 12.19726, 16.88163, 90.54524, 91.23016, 90.53769
    )
    assert xtal.n_reflections == 257 and xtal.det_shift_mm == (0.022, -0.009)
    assert xtal.profile_radius_nm_inv == 0.00258 and xtal.resolution_limit_nm_inv == 1.80
    # the stated cell and the reciprocal basis describe the same lattice
    derived = UnitCell.from_reciprocal(xtal.reciprocal_matrix)
    np.testing.assert_allclose(derived.parameters, xtal.cell.parameters, rtol=2e-4)
    # every crystal: reciprocal basis rows, reflections counted like num_reflections says
    for _chunk, x in stream.crystals:
        assert x.reciprocal_matrix.shape == (3, 3)
        assert abs(np.linalg.det(x.reciprocal_matrix)) > 0
    cell = median_cell([x for _, x in stream.crystals])
    assert cell is not None
    np.testing.assert_allclose(cell[:3], (6.14, 12.26, 16.8), rtol=0.02)  # target 61.4 122.6 168 A


def test_real_pal_stream(real_fixtures: Path) -> None:
    stream = read_stream(real_fixtures / "rs_tests_crystfel.stream", reflections=True)
    assert len(stream.chunks) == 3 and stream.n_crystals == 3
    xtal = stream.chunks[0].crystals[0]
    assert xtal.astar == (0.0279588, -0.1224762, -0.0092915)
    assert xtal.cell is not None and xtal.cell.lattice_type == "tetragonal"
    refl = xtal.reflections
    assert refl is not None and len(refl) == xtal.n_reflections == 263
    assert refl.hkl.dtype == np.int32 and refl.hkl.shape == (263, 3)
    # every reflection lies on the Ewald sphere, |q + k_in| = |k| with k_in along +z and
    # |k| = 1/lambda in nm^-1 (no 2 pi), to within twice the crystal's profile radius
    for chunk, x in stream.crystals:
        assert x.reflections is not None and chunk.photon_energy_ev is not None
        k = chunk.photon_energy_ev / 1239.841984  # 1/lambda, nm^-1
        q = x.reflections.hkl @ x.reciprocal_matrix
        excitation = np.abs(np.linalg.norm(q + [0.0, 0.0, k], axis=1) - k)
        assert excitation.max() < 2 * x.profile_radius_nm_inv


@pytest.mark.parametrize("name", ["crystfel_tests_test.stream", "rs_tests_crystfel.stream"])
def test_real_streams_round_trip(tmp_path: Path, real_fixtures: Path, name: str) -> None:
    for reflections in (False, True):
        stream = read_stream(real_fixtures / name, reflections=reflections)
        out = write_stream(stream, tmp_path / f"{reflections}.stream")
        again = read_stream(out, reflections=reflections)
        assert again == stream
        assert again.source == str(out)


def _stream() -> Stream:
    rng = np.random.default_rng(3)
    chunks = []
    for i in range(4):
        crystals = tuple(
            Crystal(
                None, *(tuple(v) for v in rng.normal(0, 0.1, (3, 3))), profile_radius_nm_inv=0.002
            )
            for _ in range(i % 3)
        )
        chunks.append(
            Chunk(
                image_filename=f"frames_{i // 2:03d}.cxi",
                event=f"//{i % 2}",
                image_serial=i + 1,
                photon_energy_ev=9500.0 + i / 3,
                hit=bool(i % 2),
                indexed_by="simulated" if crystals else "none",
                crystals=crystals,
                camera_length_m=0.1,
                values=(("hdf5/LCLS/photon_energy_eV", f"{9500.0 + i / 3}"),),
            )
        )
    return Stream(chunks=tuple(chunks), geometry_text="clen = 0.1\nres = 10000\n")


def test_written_stream_reads_back_equal(tmp_path: Path) -> None:
    stream = _stream()
    path = write_stream(stream, tmp_path / "sim.stream")
    again = read_stream(path)
    assert again == stream
    assert [c.frame_index for c in again.chunks] == [0, 1, 0, 1]
    for (_, a), (_, b) in zip(again.crystals, stream.crystals, strict=True):
        np.testing.assert_array_equal(a.reciprocal_matrix, b.reciprocal_matrix)
    # a crystal built without a cell gets the cell of its reciprocal basis
    (_, xtal), *_ = stream.crystals
    real = np.linalg.inv(xtal.reciprocal_matrix).T
    assert xtal.cell is not None
    np.testing.assert_allclose(xtal.cell.a_nm, np.linalg.norm(real[0]))
    with pytest.raises(OutputExistsError):
        write_stream(stream, path)
    write_stream(Stream(chunks=()), path, force=True)
    assert read_stream(path).chunks == ()


def _crystal_text(lines: list[str]) -> str:
    head = ["CrystFEL stream format 2.3", "Generated by test", "----- Begin chunk -----"]
    head += ["Image filename: a.h5", "Event: //0", "hit = 1"]
    return "\n".join(head + lines) + "\n"


GOOD_CRYSTAL = [
    "--- Begin crystal",
    "Cell parameters 6.1 12.2 16.9 nm, 90.0 90.0 90.0 deg",
    "astar = +0.16 +0.0 +0.0 nm^-1",
    "bstar = +0.0 +0.08 +0.0 nm^-1",
    "cstar = +0.0 +0.0 +0.06 nm^-1",
    "--- End crystal",
    "----- End chunk -----",
]


def test_crystal_without_cstar_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.stream"
    path.write_text(_crystal_text([line for line in GOOD_CRYSTAL if not line.startswith("cstar")]))
    with pytest.raises(
        FormatError, match=r"bad\.stream, line 7: crystal has no cstar line"
    ) as info:
        read_stream(path)
    assert info.value.line == 7


def test_bad_number_and_truncation_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.stream"
    path.write_text(_crystal_text(GOOD_CRYSTAL))
    assert read_stream(path).n_crystals == 1
    broken = [line.replace("+0.08", "+0.0x8") for line in GOOD_CRYSTAL]
    path.write_text(_crystal_text(broken))
    with pytest.raises(
        FormatError, match=r"line 10: bstar: expected 3 number\(s\), found '\+0.0 \+0.0x8"
    ):
        read_stream(path)
    path.write_text(_crystal_text(GOOD_CRYSTAL[:-1]))
    with pytest.raises(FormatError, match=r"line 3: chunk is truncated: the file ends before"):
        read_stream(path)
    path.write_text(_crystal_text(GOOD_CRYSTAL[:-1] + ["----- Begin chunk -----"]))
    with pytest.raises(FormatError, match=r"line 13: chunk begun at line 3 is truncated"):
        read_stream(path)
    path.write_text(_crystal_text(GOOD_CRYSTAL[:3]))
    with pytest.raises(FormatError, match=r"line 7: crystal .* is truncated"):
        read_stream(path)
    path.write_text("Image filename: a.h5\n")
    with pytest.raises(FormatError, match="not a CrystFEL stream"):
        read_stream(path)
    with pytest.raises(FormatError, match="stream file not found"):
        read_stream(tmp_path / "absent.stream")


def test_concatenated_streams(tmp_path: Path, real_fixtures: Path) -> None:
    text = (real_fixtures / "crystfel_tests_test.stream").read_text()
    path = tmp_path / "cat.stream"
    path.write_text(text + text)  # cat a.stream b.stream > c.stream
    stream = read_stream(path)
    assert len(stream.chunks) == 140 and stream.n_crystals == 64
    assert stream.chunks[70].line == text.count("\n") + 669
    other = (real_fixtures / "rs_tests_crystfel.stream").read_text()
    path.write_text(text + other)
    n = text.count("\n") + other.split("\n").index("----- Begin geometry file -----") + 1
    with pytest.raises(FormatError, match=rf"line {n}: a second geometry file, different"):
        read_stream(path)
