"""The one appendable, atomic HDF5 writer under frames, features and predictions files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.errors import OutputExistsError
from hpcdiff.io.appendable import AppendableH5


def _parts(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".part"))


def test_columns_grow_together_and_the_name_appears_on_close(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    with AppendableH5(out, attrs={"kind": "test"}) as f:
        f.column("x", dtype=np.float32, row_shape=(3,), chunk_rows=4)
        f.column("group/i", dtype=np.int64)
        for start in (0, 5):
            f.append(
                {"x": np.full((5, 3), start, np.float32), "group/i": np.arange(start, start + 5)}
            )
        assert not out.exists() and len(_parts(tmp_path)) == 1
        assert f.n_rows == 10
    assert _parts(tmp_path) == []
    with h5py.File(out, "r") as h5:
        assert h5.attrs["kind"] == "test"
        assert h5["x"].dtype == np.float32 and h5["x"].shape == (10, 3)
        np.testing.assert_array_equal(h5["group/i"][...], np.arange(10))
        np.testing.assert_array_equal(h5["x"][5:, 0], 5.0)


def test_an_error_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        AppendableH5(out)
    with pytest.raises(RuntimeError, match="boom"), AppendableH5(out, force=True) as f:
        f.column("x", dtype=np.int16)
        f.append({"x": np.arange(4)})
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and _parts(tmp_path) == []


def test_columns_must_be_complete_and_of_equal_length(tmp_path: Path) -> None:
    f = AppendableH5(tmp_path / "out.h5")
    f.column("a", dtype=np.int64)
    f.column("b", dtype=np.float32, row_shape=(2,))
    with pytest.raises(ValueError, match="append needs columns"):
        f.append({"a": np.arange(3)})
    with pytest.raises(ValueError, match="unequal length"):
        f.append({"a": np.arange(3), "b": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"rows of shape \(2,\)"):
        f.append({"a": np.arange(3), "b": np.zeros((3, 4))})
    f.append({"a": np.arange(3), "b": np.zeros((3, 2))})
    with pytest.raises(RuntimeError, match="after 3 rows"):
        f.column("c", dtype=np.int64)
    f.close(ok=False)
    f.close()
    assert not (tmp_path / "out.h5").exists() and _parts(tmp_path) == []
    with pytest.raises(RuntimeError, match="append after close"):
        f.append({"a": np.arange(1), "b": np.zeros((1, 2))})
