"""From a CSV labelling some frames of a simulated run to ``diffuse.lst``: train on the
labelled frames only, predict, and check every output against ``predictions.h5``; the
``hpcdiff labels`` command's summary and conversions round-trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.cli import main
from hpcdiff.config import SimulateConfig
from hpcdiff.io.featurefile import read_features
from hpcdiff.io.labels import read_labels
from hpcdiff.io.labels_text import write_labels_csv
from hpcdiff.io.predictions import read_predictions
from hpcdiff.simulate import simulate_experiment

N_FRAMES = 24
LABELLED = 16  # frames of the run the CSV labels; the other 8 have no label


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated run, a CSV labelling 16 of its 24 frames, and a job file."""
    root = tmp_path_factory.mktemp("labels-e2e")
    cfg = SimulateConfig(
        n_frames=N_FRAMES, detector="small", frames_per_file=12, seed=3, truth_grid_size=8,
        diffuse_fraction=0.5,
    )  # fmt: skip
    exp = simulate_experiment(cfg, root / "sim")
    truth = read_labels(exp.labels)  # simulated labels, 4 classes; the CSV says diffuse or not
    rows = np.random.default_rng(0).permutation(N_FRAMES)[:LABELLED]
    # balance: at least 3 of each class among the labelled frames
    assert 3 <= truth.diffuse[rows].sum() <= LABELLED - 3
    lines = ["frame,file,index,label,who"]
    for r in sorted(rows.tolist()):
        label = "diffuse" if truth.diffuse[r] else "non-diffuse"
        lines.append(f"{r},{truth.file[r]},{truth.index[r]},{label},me")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    job = root / "job.toml"
    job.write_text(
        f"""
[experiment]
name = "labels-e2e"
frames = ["sim/frames_*.cxi"]
geometry = "sim/detector.geom"
data_path = "/entry_1/data_1/data"
labels = "labels.csv"

[corrections]
bad_pixel_frames = 0

[background]
image_size_px = 64

[features]
weights = "random:0"
layer = "gap"
batch_size = 8
device = "cpu"
bf16_cpu = false

[learn]
n_components = 3
n_train = 10
n_test = 6
split = "order"

[parallel]
gpu = "none"
max_reject_fraction = 0.5

[output]
dir = "{root / "out"}"
"""
    )
    return job


def test_train_on_labelled_frames_then_predict_writes_lists(
    experiment: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = experiment.parent / "out"
    assert main(["classify", "train", str(experiment)]) == 0
    printed = capsys.readouterr().out
    assert "paper P" in printed and "cxiclp9515" in printed  # what good looks like
    report = json.loads((out / "train-report.json").read_text())
    # order split of the 16 labelled frames: first 10 train, last 6 test
    assert (report["n_train"], report["n_test"], report["split"]) == (10, 6, "order")
    assert report["report"]["n"] == 6 and report["published"]["accuracy"] == 0.92
    assert len(read_features(out / "features.h5")) == N_FRAMES  # features of every frame

    assert main(["classify", "predict", str(experiment)]) == 0
    pred = read_predictions(out / "predictions.h5")
    assert len(pred.indices) == N_FRAMES
    diffuse_rows = np.flatnonzero(pred.labels == 1)
    expected = [f"{os.path.abspath(pred.files[r])} //{pred.indices[r]}" for r in diffuse_rows]
    listed = (out / "diffuse.lst").read_text().splitlines()
    assert listed == expected
    assert all(Path(line.split(" //")[0]).is_absolute() for line in listed)
    # predictions.csv: one row per frame, and it reads back as a labels file
    back = read_labels(out / "predictions.csv")
    assert len(back) == N_FRAMES and back.diffuse.tolist() == pred.labels.tolist()
    assert back.index.tolist() == pred.indices.tolist()
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "file,index,class,probability,diffuse_score"
    run = json.loads((out / "predict-run.json").read_text())
    assert run["outputs"]["diffuse_list"] == str(out / "diffuse.lst")
    page = (out / "report" / "index.html").read_text()
    assert "Most confident frames" in page and "Least confident frames" in page
    assert "frames_000.cxi" in page and "cxiclp9515" in page
    assert f"{LABELLED} labelled of {N_FRAMES} frames" in page
    # nothing is overwritten without --force
    assert main(["classify", "predict", str(experiment)]) == 1
    assert "exists already" in capsys.readouterr().err


def test_feature_file_commands_use_labelled_frames(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = experiment.parent / "out"
    if not (out / "features.h5").is_file():
        pytest.skip("needs the features of the training run (test above)")
    model = tmp_path / "m.npz"
    args = ["train", "--job", str(experiment), "--model", str(model), "--quiet"]
    assert main([*args, "--split", "stratified", "--n-test", "4"]) == 0
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["n_labelled"] == LABELLED and report["n_frames"] == N_FRAMES
    assert report["n_train"] == 10 and report["n_test"] == 4
    # too few labelled frames for PCA: a clear error naming the counts
    few = ["--n-components", "20", "--n-train", "500", "--n-test", "500", "--force"]
    assert main([*args, *few]) == 1  # 16 labelled frames split 8 / 8: 8 train for PCA(20)
    err = capsys.readouterr().err
    assert "only 16 labelled frame(s), of which 8 train" in err and "n_components = 20" in err
    # a labelled frame the features lack: the file and line, no traceback
    bad = tmp_path / "bad.csv"
    bad.write_text((experiment.parent / "labels.csv").read_text() + "1,frames_000.cxi,99,1,x\n")
    assert main([*args, "--labels", str(bad), "--force"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}, line {LABELLED + 2}: frame frames_000.cxi //99 is not in the run" in err
    preds = tmp_path / "run7.h5"
    argv = ["predict", "--job", str(experiment), "--model", str(model), "--out", str(preds)]
    assert main([*argv, "--quiet"]) == 0
    assert (tmp_path / "run7.csv").is_file() and (tmp_path / "run7.diffuse.lst").is_file()
    p = read_predictions(preds)
    n_diffuse = int((p.labels == 1).sum())
    assert len((tmp_path / "run7.diffuse.lst").read_text().splitlines()) == n_diffuse
    ev = [
        "evaluate",
        "--predictions",
        str(preds),
        "--labels",
        str(experiment.parent / "labels.csv"),
    ]
    assert main(ev) == 0
    printed = capsys.readouterr().out
    assert f"{LABELLED} labelled of {N_FRAMES} frames" in printed and "paper R" in printed


def test_labels_command_summary_and_round_trips(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = experiment.parent
    csv_path = root / "labels.csv"
    assert main(["labels", str(csv_path), "--job", str(experiment), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["form"] == "csv" and summary["frames"] == LABELLED
    assert sum(summary["per_class"].values()) == LABELLED
    assert summary["run"]["labelled"] == LABELLED
    assert summary["run"]["unlabelled"] == N_FRAMES - LABELLED
    # csv -> lists -> h5 -> csv keeps every label; lists name the run's absolute paths
    lists = tmp_path / "lists"
    argv = ["labels", str(csv_path), "--job", str(experiment), "--to", "lists", "--out", str(lists)]
    assert main(argv) == 0
    first = (lists / "diffuse.lst").read_text().splitlines()[0]
    assert os.path.isabs(first.split(" //")[0]) and (root / "sim").as_posix() in first
    h5 = tmp_path / "l.h5"
    argv = ["labels", str(lists / "diffuse.lst"), str(lists / "non-diffuse.lst")]
    assert main([*argv, "--to", "h5", "--out", str(h5)]) == 0
    again = tmp_path / "again.csv"
    assert main(["labels", str(h5), "--to", "csv", "--out", str(again)]) == 0
    original, converted = read_labels(csv_path), read_labels(again)

    def rows(labels):
        names = [os.path.basename(f) for f in labels.file]
        return sorted(zip(names, labels.index.tolist(), labels.diffuse.tolist(), strict=True))

    assert rows(original) == rows(converted)
    # never overwritten without --force
    assert main(["labels", str(h5), "--to", "csv", "--out", str(again)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["labels", str(h5), "--to", "csv", "--out", str(again), "--force"]) == 0
    # frames the run lacks: named with file and line, exit status 1
    bad = tmp_path / "bad.csv"
    write_labels_csv(bad, read_labels(csv_path))
    with bad.open("a") as fh:
        fh.write("frames_009.cxi,4,diffuse,\n")
    capsys.readouterr()
    assert main(["labels", str(bad), "--job", str(experiment)]) == 1
    text = capsys.readouterr().out
    assert "1 labelled frame(s) are not in the run" in text
    assert f"{bad}, line {LABELLED + 2}: frames_009.cxi //4" in text
    assert main(["labels", str(bad), "--job", str(experiment), "--to", "csv", "--out", "x"]) == 1
    assert f"{bad}, line {LABELLED + 2}: frame frames_009.cxi //4 is not in the run" in (
        capsys.readouterr().err
    )
