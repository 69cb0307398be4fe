"""Labels in every form (HDF5, CSV, CrystFEL lists), told apart by content; every error
names the file and the line; matching to a run; the job's ``labels`` key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.config import load_job
from hpcdiff.errors import ConfigError, FormatError
from hpcdiff.io.cxi import FrameId
from hpcdiff.io.labels import Labels, label_sources, read_labels, write_labels
from hpcdiff.io.labels_text import csv_text, sniff, write_label_lists, write_labels_csv

RUN = [FrameId(f"/data/run7/frames_{f:03d}.cxi", i) for f in range(2) for i in range(4)]


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _where(exc: pytest.ExceptionInfo[FormatError]) -> tuple[str, int | None]:
    return Path(exc.value.path).name, exc.value.line


# ----------------------------------------------------------------------------- forms


def test_csv_with_names_integers_and_extra_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "my labels.txt",  # content decides, not the extension
        """
        frame_id,File,index,label,diffuse_strength,comment
        a,frames_000.cxi,0,diffuse,0.7,looks streaky
        b,frames_000.cxi,//3,non-diffuse,,
        c,/data/run7/frames_001.cxi,2,1,,"x, y"
        d,frames_001.cxi,3,0,0.0,
        e,frames_001.cxi,1,Diffuse,,case ignored
        """,
    )
    assert sniff(path) == "csv"
    labels = read_labels(path)
    assert labels.class_names == ("non-diffuse", "diffuse")
    assert labels.file.tolist()[:2] == ["frames_000.cxi", "frames_000.cxi"]
    assert labels.index.tolist() == [0, 3, 2, 3, 1]
    assert labels.diffuse.tolist() == [1, 0, 1, 0, 1]
    assert labels.diffuse_class.tolist() == [1, 0, 1, 0, 1]
    strength = labels.diffuse_strength
    assert strength[0] == pytest.approx(0.7) and np.isnan(strength[1]) and strength[3] == 0
    assert labels.where(2) == f"{path}, line 4"


def test_csv_with_job_class_names_and_the_class_names_line(tmp_path: Path) -> None:
    body = "file,index,label\nf.cxi,0,none\nf.cxi,1,strong\nf.cxi,2,1\nf.cxi,3,non-diffuse\n"
    path = _write(tmp_path / "l.csv", body)
    labels = read_labels(path, class_names=["none", "weak", "strong"])
    assert labels.diffuse_class.tolist() == [0, 2, 1, 0]
    assert labels.diffuse.tolist() == [0, 1, 1, 0]
    # the same names from the file's own comment line
    _write(tmp_path / "m.csv", "# class_names = none, weak, strong\n" + body)
    assert read_labels(tmp_path / "m.csv").equals(labels)
    # "diffuse" does not say which of three classes
    _write(tmp_path / "n.csv", "file,index,label\nf.cxi,0,diffuse\n")
    with pytest.raises(FormatError, match="unknown class 'diffuse'") as exc:
        read_labels(tmp_path / "n.csv", class_names=["none", "weak", "strong"])
    assert _where(exc) == ("n.csv", 2)


def test_crystfel_lists_one_per_class(tmp_path: Path) -> None:
    d = _write(tmp_path / "diffuse.lst", "/data/run7/frames_000.cxi //1\nframes_001.cxi //0\n")
    n = _write(
        tmp_path / "non-diffuse.lst",
        "# frames without diffuse scattering\n\n/data/run7/frames_000.cxi //0\n",
    )
    assert sniff(d) == sniff(n) == "list"
    labels = read_labels([d, n])
    assert labels.file.tolist() == [
        "/data/run7/frames_000.cxi",
        "frames_001.cxi",
        "/data/run7/frames_000.cxi",
    ]
    assert labels.index.tolist() == [1, 0, 0]
    assert labels.diffuse.tolist() == [1, 1, 0]
    assert labels.where(2) == f"{n}, line 3"
    # the class given with the path, in either form
    hits = _write(tmp_path / "hits.lst", "frames_001.cxi //2\n")
    same = read_labels([f"diffuse={hits}", f"non-diffuse={n}"])
    assert same.diffuse.tolist() == [1, 0] and same.index.tolist() == [2, 0]
    assert read_labels({"diffuse": hits, "non-diffuse": n}).equals(same)
    # one list alone: its class from its name
    assert read_labels(d).diffuse.tolist() == [1, 1]


def test_hdf5_is_read_by_content_and_old_callers_work(tmp_path: Path) -> None:
    labels = Labels.from_frame_ids(
        RUN[:3], diffuse=[0, 1, 1], diffuse_strength=[0, 1, 2], diffuse_class=[0, 1, 2],
        class_names=("none", "weak", "strong"),
    )  # fmt: skip
    path = write_labels(tmp_path / "labels.dat", labels)
    assert sniff(path) == "hdf5"
    again = read_labels(path)
    assert again.equals(labels) and again.where(1) == f"{path}, dataset /file row 1"
    assert read_labels(str(path)).equals(labels)
    with pytest.raises(FormatError, match="differ from the job's"):
        read_labels(path, class_names=["non-diffuse", "diffuse"])


def test_text_round_trips(tmp_path: Path) -> None:
    labels = Labels.from_frame_ids(
        RUN, diffuse=[0, 1] * 4, diffuse_strength=np.arange(8) / 4, diffuse_class=[0, 1] * 4,
        class_names=("non-diffuse", "diffuse"),
    )  # fmt: skip
    csv_path = write_labels_csv(tmp_path / "l.csv", labels)
    assert not csv_text(labels).startswith("#")  # plain CSV for the binary classes
    assert read_labels(csv_path).equals(labels)
    lists = write_label_lists(tmp_path / "lists", labels)
    assert [p.name for p in lists] == ["non-diffuse.lst", "diffuse.lst"]
    assert lists[1].read_text().splitlines()[0] == "/data/run7/frames_000.cxi //1"
    back = read_labels(lists)
    assert sorted(zip(back.file, back.index, back.diffuse, strict=True)) == sorted(
        zip(labels.file, labels.index, labels.diffuse, strict=True)
    )
    multi = Labels.from_frame_ids(
        RUN[:4], diffuse=[0, 1, 1, 1], diffuse_strength=[0, 1, 2, 3], diffuse_class=[0, 1, 2, 3],
        class_names=("none", "weak", "moderate", "strong"),
    )  # fmt: skip
    path = write_labels_csv(tmp_path / "multi.csv", multi)
    assert path.read_text().startswith("# class_names = none,weak,moderate,strong\n")
    assert read_labels(path).equals(multi)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("file,index\nf.cxi,0\n", 1, r"bad header .* needs at least the columns file,index,label"),
        ("name,index,label\nf.cxi,0,diffuse\n", 1, r"missing file"),
        ("file,index,label,label\nf.cxi,0,1,1\n", 1, r"appear twice"),
        ("file,index,label\nf.cxi,0,diffuse\nf.cxi,x,diffuse\n", 3, r"bad index 'x'"),
        ("file,index,label\nf.cxi,-1,diffuse\n", 2, r"bad index '-1'"),
        ("file,index,label\nf.cxi,0,diffuse\n\nf.cxi,1\n", 4, r"wrong column count: 2 value"),
        ("file,index,label\nf.cxi,0,diffuse,extra\n", 2, r"wrong column count: 4 value"),
        ("file,index,label\nf.cxi,0,hazy\n", 2, r"unknown class 'hazy' .*non-diffuse, diffuse"),
        ("file,index,label\nf.cxi,0,7\n", 2, r"label 7 is not a class: expected 0\.\.1"),
        ("file,index,label\nf.cxi,0,1\nf.cxi,1,0\nf.cxi,0,0\n", 4, r"twice \(first at line 2\)"),
        ("# a note\nfile,index,label,diffuse_strength\nf.cxi,0,1,lots\n", 3, r"bad diffuse_str"),
        ("file,index,label\n,0,1\n", 2, r"empty file name"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path / "labels.csv", text)
    with pytest.raises(FormatError, match=message) as exc:
        read_labels(path)
    assert _where(exc) == ("labels.csv", line)
    assert str(exc.value).startswith(f"{path}, line {line}: ")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a.cxi //0\na.cxi\n", 2, r"expected 'path //index'"),
        ("a.cxi //0\na.cxi //one\n", 2, r"bad index 'one'"),
        ("a.cxi //0\n\na.cxi //0\n", 3, r"labelled twice \(first at .*diffuse\.lst, line 1\)"),
    ],
)
def test_list_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path / "diffuse.lst", text)
    with pytest.raises(FormatError, match=message) as exc:
        read_labels(path)
    assert _where(exc) == ("diffuse.lst", line)


def test_list_errors_across_files_and_classes(tmp_path: Path) -> None:
    d = _write(tmp_path / "diffuse.lst", "a.cxi //0\na.cxi //1\n")
    n = _write(tmp_path / "non-diffuse.lst", "a.cxi //2\na.cxi //1\n")
    with pytest.raises(
        FormatError, match=r"a\.cxi //1 is labelled twice .*diffuse\.lst, line 2"
    ) as e:
        read_labels([d, n])
    assert _where(e) == ("non-diffuse.lst", 2)
    odd = _write(tmp_path / "hits.lst", "a.cxi //5\n")
    with pytest.raises(FormatError, match=r"unknown class 'hits' in the class of the file name"):
        read_labels([d, odd])
    with pytest.raises(FormatError, match=r"unknown class 'weak' in the class given"):
        read_labels([f"weak={odd}", str(n)])
    csv = _write(tmp_path / "l.csv", "file,index,label\na.cxi,9,1\n")
    with pytest.raises(FormatError, match="must all be CrystFEL list files"):
        read_labels([d, csv])


def test_unreadable_content(tmp_path: Path) -> None:
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\x00\xff\xfe\x80" * 10)
    with pytest.raises(FormatError, match="neither HDF5 nor UTF-8"):
        read_labels(binary)
    empty = _write(tmp_path / "empty.csv", "\n# only a comment\n")
    with pytest.raises(FormatError, match="holds no line"):
        read_labels(empty)
    with pytest.raises(FormatError, match="labels file not found"):
        read_labels(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- the run


def test_match_run_by_path_and_base_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = [
        FrameId(str(tmp_path / "run7" / f"frames_{f:03d}.cxi"), i)
        for f in range(2)
        for i in range(3)
    ]
    monkeypatch.chdir(tmp_path)
    path = _write(
        tmp_path / "labels.csv",
        f"""
        file,index,label
        {tmp_path}/run7/frames_001.cxi,2,diffuse
        run7/frames_000.cxi,1,non-diffuse
        frames_001.cxi,0,diffuse
        """,
    )
    labels = read_labels(path)
    assert labels.match_run(run).tolist() == [5, 1, 3]
    pos, mine = labels.for_run(run)
    assert pos.tolist() == [1, 3, 5]  # run order; unlabelled frames are left out
    assert mine.diffuse.tolist() == [0, 1, 1]


def test_frames_the_run_lacks_and_the_same_frame_twice(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "labels.csv",
        "file,index,label\nframes_000.cxi,0,1\nframes_000.cxi,9,0\nframes_005.cxi,0,1\n",
    )
    labels = read_labels(path)
    assert labels.match_run(RUN).tolist() == [0, -1, -1]
    with pytest.raises(
        FormatError, match=r"frames_000\.cxi //9 is not in the run .*1 more row"
    ) as e:
        labels.for_run(RUN)
    assert _where(e) == ("labels.csv", 3)
    twice = _write(
        tmp_path / "twice.csv",
        "file,index,label\nframes_000.cxi,1,1\n/data/run7/frames_000.cxi,1,1\n",
    )
    with pytest.raises(FormatError, match=r"labelled twice \(.*twice\.csv, line 2\)") as e:
        read_labels(twice).for_run(RUN)
    assert _where(e) == ("twice.csv", 3)
    ambiguous = [FrameId("/a/f.cxi", 0), FrameId("/b/f.cxi", 0)]
    one = _write(tmp_path / "one.csv", "file,index,label\nf.cxi,0,1\n")
    with pytest.raises(FormatError, match="matches several run files") as e:
        read_labels(one).match_run(ambiguous)
    assert _where(e) == ("one.csv", 2)


def test_job_labels_key_in_every_form(tmp_path: Path) -> None:
    _write(tmp_path / "diffuse.lst", "f.cxi //0\n")
    _write(tmp_path / "rest.lst", "f.cxi //1\n")
    (tmp_path / "f.cxi").write_bytes(b"")
    forms = {
        'labels = ["diffuse.lst", "non-diffuse=rest.lst"]': [1, 0],
        'labels = {diffuse = "diffuse.lst", non-diffuse = "rest.lst"}': [1, 0],
        'labels = "rest.lst"\nclass_names = ["diffuse", "x"]': None,
    }
    for line, expected in forms.items():
        job_path = _write(tmp_path / "job.toml", f'[experiment]\nframes = ["f.cxi"]\n{line}\n')
        job = load_job(job_path)
        if expected is None:
            with pytest.raises(FormatError, match="unknown class 'rest'"):
                read_labels(job.experiment.labels, class_names=job.experiment.class_names)
            continue
        assert read_labels(job.experiment.labels).diffuse.tolist() == expected
        assert all(p.is_absolute() for p, _ in label_sources(job.experiment.labels))
    _write(tmp_path / "job.toml", '[experiment]\nframes = ["f.cxi"]\nlabels = ["a.lst"]\n')
    with pytest.raises(ConfigError, match=r"\[experiment.labels\] file .*a\.lst does not exist"):
        load_job(tmp_path / "job.toml")
    _write(tmp_path / "job.toml", '[learn]\nsplit = "random"\n')
    with pytest.raises(ConfigError, match="'stratified', 'order'"):
        load_job(tmp_path / "job.toml")
