"""The classify job's Featurizer: where a rank preprocesses (numpy threads or cupy on its GPU),
what it records about it, and that the features are those of the stages it glues."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hpcdiff.backend import gpu_available
from hpcdiff.config import parse_job
from hpcdiff.features.extractor import cpu_has_native_bf16
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.parallel.frame_loop import FrameBatch
from hpcdiff.pipelines.classify import Featurizer
from hpcdiff.preprocess import Preprocessor
from hpcdiff.progress import Timings

ENERGY_EV = 9500.0


@pytest.fixture(scope="module")
def model() -> DetectorModel:
    return DetectorModel.build(small_geometry(), photon_energy_ev=ENERGY_EV)


@pytest.fixture(scope="module")
def job():
    return parse_job(
        {
            "background": {"n_radial_bins": 40, "image_size_px": 64},
            "features": {"weights": "random:0", "layer": "gap", "batch_size": 2},
        }
    )


def _batch(model: DetectorModel, n: int = 3) -> FrameBatch:
    rng = np.random.default_rng(2)
    photons = rng.poisson(0.5, (n, *model.slab_shape)).astype(np.float32)
    adu = photons * np.float32(model.geom.panels[0].adu_per_ev * ENERGY_EV)
    energy = np.full(n, ENERGY_EV)
    return FrameBatch(0, n, adu, np.arange(n), {"photon_energy_ev": energy})


def test_cpu_rank_preprocesses_with_numpy_on_its_threads(model, job):
    timings = Timings()
    fz = Featurizer(job, model=model, device="cpu", timings=timings, threads=2)
    assert fz.preprocess_gpu is None and fz.preprocess.threads == 2
    described = fz.describe()
    assert described["preprocess"] == "numpy on 2 thread(s)"
    assert described["features"]["device"] == "cpu"
    want_autocast = "torch.bfloat16" if cpu_has_native_bf16() else None
    assert described["features"]["autocast"] == want_autocast
    batch = _batch(model)
    fz.prepare(batch)
    assert isinstance(batch.prepared, np.ndarray) and batch.prepared.shape == (3, 3, 64, 64)
    features = fz.features(batch)
    assert features.shape == (3, 512) and features.dtype == np.float32
    # the glue adds nothing: the preprocessor's images through the extractor
    pre = Preprocessor(model, job.background, job.corrections)
    images = pre(batch.frames, photon_energy_ev=ENERGY_EV)
    np.testing.assert_array_equal(batch.prepared, images)
    np.testing.assert_array_equal(features, fz.extractor.extract(images))
    stages = timings.as_dict()
    assert stages["preprocess"]["frames"] == 3 and stages["features"]["frames"] == 3


@pytest.mark.gpu
def test_gpu_rank_preprocesses_with_cupy_on_its_device(model, job):
    import torch

    cupy = pytest.importorskip("cupy")
    if not (gpu_available() and torch.cuda.is_available()):
        pytest.skip("no CUDA device")
    cpu = Featurizer(job, model=model, device="cpu", timings=Timings())
    want = cpu.features(_batch(model))
    fz = Featurizer(job, model=model, device="cuda:0", timings=Timings(), threads=2)
    assert fz.preprocess_gpu == 0
    assert fz.describe()["preprocess"] == "cupy on cuda:0"
    batch = _batch(model)
    # as the classify job does it: images made in the reader thread, features in the main one
    reader = threading.Thread(target=fz.prepare, args=(batch,))
    reader.start()
    reader.join()
    assert isinstance(batch.prepared, cupy.ndarray) and batch.prepared.device.id == 0
    np.testing.assert_allclose(cupy.asnumpy(batch.prepared), cpu.images(_batch(model)), atol=1e-4)
    np.testing.assert_allclose(fz.features(batch), want, rtol=5e-2, atol=5e-2)


def test_cpu_rank_preprocesses_its_first_batch_on_the_cnn_threads_too(model, job, monkeypatch):
    """The CNN has nothing to do until the first batch is ready: that batch is
    preprocessed on the CNN's threads as well, the others on the rank's own; the images
    are the same."""
    import torch

    fz = Featurizer(job, model=model, device="cpu", timings=Timings(), threads=1)
    seen: list[int | None] = []
    call = Preprocessor.__call__

    def spy(self, frames, *, photon_energy_ev, threads=None):
        seen.append(threads)
        return call(self, frames, photon_energy_ev=photon_energy_ev, threads=threads)

    monkeypatch.setattr(Preprocessor, "__call__", spy)
    first, second = fz.images(_batch(model)), fz.images(_batch(model))
    assert seen == [max(1, torch.get_num_threads()), None]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(
        first, fz.preprocess(_batch(model).frames, photon_energy_ev=ENERGY_EV, threads=3)
    )
