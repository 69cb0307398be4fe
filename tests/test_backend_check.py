"""A GPU rank without a working cupy is a ConfigError naming the install line, not a silent
numpy fallback; CPU preprocessing on a GPU rank only when the job asks for it."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from hpcdiff.backend_check import INSTALL_HINT, cupy_problem, preprocess_gpu
from hpcdiff.config import parse_job
from hpcdiff.errors import ConfigError
from hpcdiff.geometry import DetectorModel, small_geometry
from hpcdiff.parallel.placement import select_device
from hpcdiff.progress import Timings


@pytest.fixture
def gpu_node_without_cupy(monkeypatch):
    """torch sees one CUDA device; ``import cupy`` fails as on a node without the wheel."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError


def test_gpu_node_without_cupy_is_a_config_error_with_the_install_line(gpu_node_without_cupy):
    device = select_device("auto", requested="auto", local_rank=0, local_size=1)
    assert device == "cuda:0"
    with pytest.raises(ConfigError) as err:
        preprocess_gpu(device)
    message = str(err.value)
    assert INSTALL_HINT in message and "cannot import cupy" in message
    assert "cuda:0" in message and 'preprocess_device = "cpu"' in message


def test_device_cuda_requested_without_cupy_is_a_config_error(gpu_node_without_cupy):
    device = select_device("local_rank", requested="cuda", local_rank=1, local_size=2)
    assert device == "cuda:0"
    with pytest.raises(ConfigError, match="hpcdiff\\[gpu\\]"):
        preprocess_gpu("cuda")


def test_explicit_cpu_preprocessing_on_a_gpu_rank_is_allowed(gpu_node_without_cupy):
    assert preprocess_gpu("cuda:0", preprocess_device="cpu") is None


def test_cpu_ranks_never_look_for_cupy(monkeypatch):
    def fail(name: str):
        raise AssertionError(f"imported {name} on a CPU rank")

    monkeypatch.setattr("hpcdiff.backend_check.importlib.import_module", fail)
    assert preprocess_gpu("cpu") is None
    assert preprocess_gpu("cpu", preprocess_device="cpu") is None


def test_cupy_that_imports_but_cannot_run_is_an_error(monkeypatch):
    """A cupy wheel for the wrong CUDA imports fine and fails at the first kernel."""

    class Broken:
        def __init__(self, index: int) -> None:
            self.index = index

        def __enter__(self):
            raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Broken)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", fake)
    problem = cupy_problem(1)
    assert problem is not None and "cuda:1" in problem and "InsufficientDriver" in problem
    with pytest.raises(ConfigError, match="cupy cannot run on cuda:1"):
        preprocess_gpu("cuda:1")


def test_working_cupy_gives_the_device_number(monkeypatch):
    """With a cupy that runs (numpy standing in for the device), the rank's GPU number."""

    class Dev:
        def __init__(self, index: int) -> None:
            self.index = index

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Dev)  # type: ignore[attr-defined]
    fake.arange = np.arange  # type: ignore[attr-defined]
    fake.int32 = np.int32  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert cupy_problem(2) is None
    assert preprocess_gpu("cuda:2") == 2
    assert preprocess_gpu("cuda:2", preprocess_device="cpu") is None


def test_job_file_key_is_validated():
    assert parse_job({}).background.preprocess_device == "auto"
    assert parse_job({"background": {"preprocess_device": "cpu"}}).background.preprocess_device == (
        "cpu"
    )
    with pytest.raises(ConfigError, match="preprocess_device"):
        parse_job({"background": {"preprocess_device": "gpu"}})


def test_featurizer_on_a_gpu_rank_without_cupy_stops_before_any_work(gpu_node_without_cupy):
    """The classify job's Featurizer raises the ConfigError (it builds no network first)."""
    from hpcdiff.pipelines.classify import Featurizer

    model = DetectorModel.build(small_geometry(), photon_energy_ev=9500.0)
    job = parse_job(
        {
            "background": {"n_radial_bins": 40, "image_size_px": 64},
            "features": {"weights": "random:0", "layer": "gap", "batch_size": 2},
        }
    )
    with pytest.raises(ConfigError, match="hpcdiff\\[gpu\\]"):
        Featurizer(job, model=model, device="cuda:0", timings=Timings())
