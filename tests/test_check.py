"""``hpcdiff check``: every problem a run would hit, listed at once, one test per bad case."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcdiff.features.layers import BEST_CONV_LAYER

torch = pytest.importorskip("torch")

from hpcdiff.cli import main  # noqa: E402
from hpcdiff.config import SimulateConfig, load_job  # noqa: E402
from hpcdiff.pipelines.preflight import check_job  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCDIFF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """40 labelled frames of the small detector in two files, half of them diffuse."""
    from hpcdiff.simulate import simulate_experiment

    out = tmp_path_factory.mktemp("exp") / "sim"
    cfg = SimulateConfig(
        n_frames=40,
        detector="small",
        diffuse_fraction=0.5,
        frames_per_file=20,
        truth_grid_size=8,
        compression="none",
        processes=1,
    )
    simulate_experiment(cfg, out)
    return out


@pytest.fixture(scope="module")
def conv_ckpt(tmp_path_factory) -> Path:
    from hpcdiff.features.weights import _random_state_dict

    path = tmp_path_factory.mktemp("w") / "conv.pth"
    state = _random_state_dict(1)
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, path)
    return path


def _job(folder: Path, exp: Path, ckpt: Path, extra: str = "", **sections: str) -> Path:
    """A job on the simulated experiment; ``sections`` replace whole sections' bodies."""
    body = {
        "experiment": (
            f'frames = ["{exp}/frames_*.cxi"]\ngeometry = "{exp}/detector.geom"\n'
            f'stream = "{exp}/orientations.stream"\nlabels = "{exp}/labels.h5"\n'
            'data_path = "/entry_1/data_1/data"\n'
        ),
        "features": f'weights = "{ckpt}"\nlayer = "auto"\n',
        "learn": "n_train = 20\nn_test = 20\nn_components = 5\n",
        "output": f'dir = "{folder}/out"\n',
    }
    body.update(sections)
    text = "".join(f"[{name}]\n{text}\n" for name, text in body.items()) + extra
    path = folder / "job.toml"
    path.write_text(text)
    return path


def _check(path: Path, mode: str = "auto"):
    return check_job(load_job(path, check_files=False), mode=mode)


def _wheres(result) -> str:
    return "\n".join(str(p) for p in result.problems)


def test_a_good_job_passes(tmp_path, experiment, conv_ckpt, capsys):
    job = _job(tmp_path, experiment, conv_ckpt)
    r = _check(job)
    assert r.ok, _wheres(r)
    assert (r.mode, r.n_files, r.n_frames, r.n_labelled) == ("train", 2, 40, 40)
    assert r.layer == BEST_CONV_LAYER  # auto with conv-only weights
    assert any("conv-only" in n for n in r.notes)  # ... and it says so
    assert any("NOT pretrained" in n for n in r.notes)  # zero biases: an initialisation
    assert main(["check", str(job)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and f"layer {BEST_CONV_LAYER}" in out and "conv-only" in out


def test_missing_frame_file(tmp_path, experiment, conv_ckpt):
    exp = (
        f'frames = ["{experiment}/frames_*.cxi", "{tmp_path}/gone.cxi"]\n'
        f'geometry = "{experiment}/detector.geom"\nlabels = "{experiment}/labels.h5"\n'
    )
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp))
    assert len(r.problems) == 1 and "gone.cxi" in r.problems[0].where
    assert "matches no file" in r.problems[0].what


def test_frame_file_that_does_not_open(tmp_path, experiment, conv_ckpt):
    bad = tmp_path / "frames_bad.cxi"
    bad.write_text("not hdf5")
    exp = (
        f'frames = ["{experiment}/frames_*.cxi", "{bad}"]\n'
        f'geometry = "{experiment}/detector.geom"\nlabels = "{experiment}/labels.h5"\n'
    )
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp))
    assert [p.where for p in r.problems] == [f"[experiment.frames] {bad}"]
    assert "cannot be used" in r.problems[0].what and "inspect" in r.problems[0].fix


def test_wrong_frame_shape(tmp_path, experiment, conv_ckpt):
    odd = tmp_path / "frames_odd.cxi"
    with h5py.File(odd, "w") as h5:
        h5.create_dataset("/entry_1/data_1/data", data=np.zeros((3, 50, 60), np.float32))
    exp = (
        f'frames = ["{experiment}/frames_*.cxi", "{odd}"]\n'
        f'geometry = "{experiment}/detector.geom"\nlabels = "{experiment}/labels.h5"\n'
    )
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp))
    assert len(r.problems) == 1
    p = r.problems[0]
    assert str(odd) in p.where and "shape" in p.what and "(192, 64)" in p.fix


def test_labels_that_do_not_match_the_run(tmp_path, experiment, conv_ckpt):
    from hpcdiff.io.cxi import FrameId
    from hpcdiff.io.labels import Labels, write_labels

    ids = [FrameId(str(experiment / "frames_000.cxi"), i) for i in range(20)]
    ids += [FrameId("/elsewhere/other_run.cxi", i) for i in range(3)]
    labels = Labels.from_frame_ids(
        ids,
        diffuse=[i % 2 for i in range(23)],
        diffuse_strength=[float(i % 2) for i in range(23)],
        diffuse_class=[i % 2 for i in range(23)],
    )
    path = write_labels(tmp_path / "labels.h5", labels)
    exp = (
        f'frames = ["{experiment}/frames_*.cxi"]\ngeometry = "{experiment}/detector.geom"\n'
        f'labels = "{path}"\n'
    )
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp))
    text = _wheres(r)
    assert "3 labelled frame(s) are not in the run" in text and "other_run.cxi //0" in text
    assert r.n_labelled == 20
    assert any("20 of the run's 40 frames have no label" in n for n in r.notes)
    # an unreadable labels file
    (tmp_path / "junk.h5").write_text("junk")
    exp = exp.replace(str(path), str(tmp_path / "junk.h5"))
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp))
    assert len(r.problems) == 1 and "cannot be read" in r.problems[0].what


def test_missing_weights(tmp_path, experiment, conv_ckpt):
    r = _check(
        _job(tmp_path, experiment, conv_ckpt, features=f'weights = "{tmp_path}/vgg16.pth"\n')
    )
    assert len(r.problems) == 1
    p = r.problems[0]
    assert "[features.weights]" in p.where and "not found" in p.what
    assert "hpcdiff weights download" in p.fix


def test_layer_not_in_weights(tmp_path, experiment, conv_ckpt):
    features = f'weights = "{conv_ckpt}"\nlayer = "fc6+fc7"\n'
    r = _check(_job(tmp_path, experiment, conv_ckpt, features=features))
    assert len(r.problems) == 1
    p = r.problems[0]
    assert p.where == "[features.layer] 'fc6+fc7'" and "conv-only" in p.what
    assert f'layer = "auto" (picks {BEST_CONV_LAYER})' in p.fix


def _model(path: Path, job_path: Path, conv_ckpt: Path) -> None:
    from hpcdiff.features.weights import load_weights
    from hpcdiff.learn import DiffuseClassifier
    from hpcdiff.pipelines.classify import feature_meta

    job = load_job(job_path, check_files=False)
    meta = feature_meta(job, load_weights(str(conv_ckpt)).info.to_dict())
    rng = np.random.default_rng(0)
    x = rng.random((12, meta.n_features), dtype=np.float32)
    clf = DiffuseClassifier(n_components=3).fit(
        x, np.arange(12) % 2, class_names=("non-diffuse", "diffuse"), feature_meta=meta
    )
    clf.save(path)


def test_missing_model_for_predict(tmp_path, experiment, conv_ckpt):
    r = _check(_job(tmp_path, experiment, conv_ckpt), mode="predict")
    assert len(r.problems) == 1
    assert "model.npz" in r.problems[0].where and "does not exist" in r.problems[0].what


def test_model_made_another_way(tmp_path, experiment, conv_ckpt, capsys):
    model = tmp_path / "model.npz"
    output = f'dir = "{tmp_path}/out"\nmodel = "{model}"\n'
    job = _job(tmp_path, experiment, conv_ckpt, output=output)
    _model(model, job, conv_ckpt)
    r = _check(job)  # the model exists: checked for predict, and it matches
    assert r.mode == "predict" and r.ok, _wheres(r)
    # the same job with another background method and layer: the model no longer fits
    job = _job(
        tmp_path,
        experiment,
        conv_ckpt,
        output=output,
        features=f'weights = "{conv_ckpt}"\nlayer = "pool5"\n',
        extra='[background]\nmethod = "local"\n',
    )
    r = _check(job)
    assert len(r.problems) == 1
    what = r.problems[0].what
    assert "made another way" in what and f"layer '{BEST_CONV_LAYER}' != 'pool5'" in what
    assert "background.method 'radial' != 'local'" in what
    assert main(["check", str(job), "--for", "predict"]) == 1
    assert "1 problem(s)" in capsys.readouterr().out


def test_n_components_and_n_train_too_large(tmp_path, experiment, conv_ckpt):
    r = _check(
        _job(
            tmp_path, experiment, conv_ckpt, learn="n_train = 50\nn_test = 30\nn_components = 25\n"
        )
    )
    wheres = [p.where for p in r.problems]
    assert wheres == ["[learn.n_train]", "[learn.n_components]"], _wheres(r)
    assert "more than the 40 labelled frames" in r.problems[0].what
    assert "of which 25 train" in r.problems[1].what


def test_truth_without_axes(tmp_path, experiment, conv_ckpt):
    truth = tmp_path / "truth.h5"
    with h5py.File(truth, "w") as h5:
        h5.create_dataset("intensity", data=np.zeros((4, 4, 4), np.float32))
    r = _check(_job(tmp_path, experiment, conv_ckpt, fourier=f'truth = "{truth}"\n'))
    assert len(r.problems) == 1
    assert r.problems[0].where == f"[fourier.truth] {truth}"
    assert "no axis dataset 'h'" in r.problems[0].what
    # the simulation's own truth map has them
    ok = _job(tmp_path, experiment, conv_ckpt, fourier=f'truth = "{experiment}/truth.h5"\n')
    assert _check(ok).ok


def test_stream_that_does_not_parse(tmp_path, experiment, conv_ckpt):
    stream = tmp_path / "bad.stream"
    text = (experiment / "orientations.stream").read_text()
    stream.write_text(text.replace("astar = ", "astar = x", 1))
    exp = (
        f'frames = ["{experiment}/frames_*.cxi"]\ngeometry = "{experiment}/detector.geom"\n'
        f'labels = "{experiment}/labels.h5"\nstream = "{stream}"\n'
    )
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp))
    assert len(r.problems) == 1 and "does not parse" in r.problems[0].what
    # the Fourier job needs a stream at all
    exp = exp.replace(f'stream = "{stream}"\n', "")
    r = _check(_job(tmp_path, experiment, conv_ckpt, experiment=exp), mode="fourier")
    assert [p.where for p in r.problems] == ["[experiment.stream]"]


def test_every_problem_is_listed_at_once(tmp_path, experiment, conv_ckpt, capsys):
    bad = tmp_path / "frames_bad.cxi"
    bad.write_text("not hdf5")
    truth = tmp_path / "truth.h5"
    with h5py.File(truth, "w") as h5:
        h5.create_dataset("intensity", data=np.zeros((4, 4, 4), np.float32))
    job = _job(
        tmp_path,
        experiment,
        conv_ckpt,
        experiment=(
            f'frames = ["{experiment}/frames_*.cxi", "{bad}", "{tmp_path}/gone_*.cxi"]\n'
            f'geometry = "{experiment}/detector.geom"\nlabels = "{experiment}/labels.h5"\n'
            f'pedestal = "{tmp_path}/pedestal.h5"\n'
        ),
        features=f'weights = "{conv_ckpt}"\nlayer = "fc7"\n',
        learn="n_train = 50\nn_test = 30\nn_components = 25\n",
        fourier=f'truth = "{truth}"\n',
    )
    assert main(["check", str(job)]) == 1
    out = capsys.readouterr().out
    assert "7 problem(s)" in out
    for needle in (
        "pedestal.h5: file does not exist",
        "gone_*.cxi",
        "frames_bad.cxi: cannot be used",
        "[features.layer] 'fc7'",
        "[learn.n_train]",
        "[learn.n_components]",
        "[fourier.truth]",
    ):
        assert needle in out, needle
    assert out.count("->") == 7  # each with what to do


def test_example_job_passes_on_the_demo_layout(tmp_path, monkeypatch):
    """jobs/demo-train.toml checks clean against the folder `hpcdiff demo` writes.

    The demo's training run is replaced by a small simulated experiment of the same layout
    (``hpcdiff-demo/experiment/train/``) with as many labelled frames as the job needs.
    """
    from hpcdiff.simulate import simulate_experiment

    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "demo-train.toml"
    shutil.copy(REPO / "jobs" / "demo-train.toml", job)
    cfg = SimulateConfig(
        n_frames=120,
        detector="small",
        diffuse_fraction=0.5,
        frames_per_file=60,
        truth_grid_size=8,
        compression="none",
        processes=1,
    )
    simulate_experiment(cfg, tmp_path / "hpcdiff-demo" / "experiment" / "train")
    assert main(["check", str(job)]) == 0


def test_slurm_render_does_not_open_frames(tmp_path, experiment, conv_ckpt, capsys):
    bad = tmp_path / "frames_bad.cxi"
    bad.write_text("not hdf5")
    exp = f'frames = ["{bad}"]\ngeometry = "{experiment}/detector.geom"\n'
    job = _job(tmp_path, experiment, conv_ckpt, experiment=exp)
    assert main(["slurm", "render", str(job)]) == 0
    assert "#SBATCH" in capsys.readouterr().out
