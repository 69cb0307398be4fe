"""VGG16 feature extraction: state-dict identity, layers, weights, preprocessing."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpcdiff.errors import FormatError  # noqa: E402
from hpcdiff.features import LAYER_SIZES, FeatureExtractor, WeightsError, load_weights  # noqa: E402
from hpcdiff.features.extractor import cpu_has_native_bf16  # noqa: E402
from hpcdiff.features.vgg16 import VGG16  # noqa: E402
from hpcdiff.features.weights import (  # noqa: E402
    CAFFE_MEAN_BGR,
    TORCHVISION_FILE,
    TORCHVISION_URL,
)

CAFFE_CHECKPOINT = Path("/tmp/hpcdiff-weights/vgg16_features_imagenet_caffe.pth")


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _torchvision():
    """torchvision's model zoo, importable even where its compiled ops do not match torch."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("x"))
    try:
        import torchvision.models as tvm
    except Exception as exc:  # noqa: BLE001 - any import failure means: not available here
        pytest.skip(f"torchvision not importable: {exc}")
    return tvm


@pytest.fixture(scope="module")
def random_conv_checkpoint(tmp_path_factory) -> Path:
    """A conv-only checkpoint (features.* keys only) of seeded random weights."""
    path = tmp_path_factory.mktemp("w") / "conv_only.pth"
    model = VGG16(generator=torch.Generator().manual_seed(7))
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, path)
    return path


def test_state_dict_identical_to_torchvision():
    tvm = _torchvision()
    with torch.device("meta"):
        ours = VGG16().state_dict()
        theirs = tvm.vgg16().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert {k.rsplit(".", 1)[0] for k in ours} == {
        *(f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
        "classifier.0",
        "classifier.3",
        "classifier.6",
    }


def test_torchvision_checkpoint_loads_and_matches_torchvision(tmp_path, monkeypatch):
    """A torchvision state dict in the hub cache loads unchanged and gives torchvision's fc7."""
    tvm = _torchvision()
    torch.manual_seed(3)
    tv = tvm.vgg16().eval()
    ckpt = tmp_path / "hub" / "checkpoints" / TORCHVISION_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # fp32 on every CPU: the reference is torchvision's fp32 forward pass
    fx = FeatureExtractor("hub", layer="fc7", device="cpu", channels_last=False, bf16_cpu=False)
    info = fx.weights_info
    assert info["pretrained"] is True and info["path"] == str(ckpt.resolve())
    assert info["preprocessing"]["style"] == "torchvision"
    x = _images(2)
    got = fx.extract(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        h = torch.flatten(tv.avgpool(tv.features((torch.from_numpy(x) - mean) / std)), 1)
        want = tv.classifier[:5](h).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layer_output_sizes():
    model = VGG16(generator=torch.Generator().manual_seed(0)).eval()
    x = torch.from_numpy(_images(1, size=224))
    with torch.inference_mode():
        outs = {layer: model.forward_features(x, layer) for layer in LAYER_SIZES}
    for layer, size in LAYER_SIZES.items():
        assert outs[layer].shape == (1, size)
    assert LAYER_SIZES == {
        "fc6+fc7": 8192, "fc7": 4096, "pool5": 25088, "gap": 512, "pool4+pool5": 1024
    }  # fmt: skip
    # fc7 is the second half of fc6+fc7; both are ReLU outputs; gap averages pool5
    np.testing.assert_array_equal(outs["fc6+fc7"][:, 4096:], outs["fc7"])
    assert (outs["fc6+fc7"] >= 0).all()
    pool5 = outs["pool5"].view(1, 512, 49)
    np.testing.assert_allclose(outs["gap"], pool5.mean(dim=2), rtol=1e-5, atol=1e-6)
    # pool4+pool5: pool4's spatial mean, then gap; pool4 is the 14 x 14 map before block 5
    np.testing.assert_allclose(outs["pool4+pool5"][:, 512:], outs["gap"], rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        pool4 = model.features[:24](x)
    assert pool4.shape == (1, 512, 14, 14)
    np.testing.assert_allclose(
        outs["pool4+pool5"][:, :512], pool4.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        model.forward_features(x, "fc8")


def test_random_weights_deterministic_and_not_pretrained():
    a = load_weights("random:5")
    b = load_weights("random:5")
    assert a.info.sha256 == b.info.sha256
    assert a.info.pretrained is False
    assert "random" in a.info.name and "not pretrained" in a.info.name
    assert a.info.path is None
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = load_weights("random:6")
    assert c.info.sha256 != a.info.sha256
    with pytest.raises(WeightsError, match="random:SEED"):
        load_weights("random:abc")


def test_random_extractor_features_reproducible():
    x = _images(3)
    f1 = FeatureExtractor("random:1", layer="gap", device="cpu", batch_size=2).extract(x)
    fx = FeatureExtractor("random:1", layer="gap", device="cpu", batch_size=3)
    f2 = fx.extract(x)
    assert f1.shape == (3, 512) and f1.dtype == np.float32
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)  # batching does not matter
    assert fx.weights_info["pretrained"] is False
    # bf16 on the CPU by default only where it is native (and fast); fp32 when asked
    native = cpu_has_native_bf16()
    assert fx.run_info()["autocast"] == ("torch.bfloat16" if native else None)
    fp32 = FeatureExtractor("random:1", layer="gap", device="cpu", bf16_cpu=False)
    assert fp32.run_info()["autocast"] is None
    # bf16 on the CPU: weights cast once; the fp32 fallback keeps float32 weights
    assert fx.run_info()["weights_dtype"] == ("torch.bfloat16" if native else "torch.float32")
    assert fp32.run_info()["weights_dtype"] == "torch.float32"
    forced = FeatureExtractor("random:1", layer="gap", device="cpu", bf16_cpu=True)
    assert forced.run_info()["weights_dtype"] == "torch.bfloat16"
    np.testing.assert_allclose(forced.extract(x), fp32.extract(x), rtol=5e-2, atol=5e-2)
    np.testing.assert_allclose(fp32.extract(x), f2, rtol=5e-2, atol=5e-2 if native else 1e-6)
    with pytest.raises(ValueError, match="bf16_cpu must be true, false or 'auto'"):
        FeatureExtractor("random:1", layer="gap", device="cpu", bf16_cpu="yes")


def test_missing_checkpoint_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        load_weights("hub")
    text = str(err.value)
    assert TORCHVISION_URL in text
    assert str(tmp_path / "hub" / "checkpoints" / TORCHVISION_FILE) in text
    assert "random:SEED" in text
    with pytest.raises(WeightsError, match="not found"):
        FeatureExtractor(str(tmp_path / "nowhere.pth"), layer="gap", device="cpu")


def test_conv_only_checkpoint_refuses_fc_layers(random_conv_checkpoint):
    info = load_weights(str(random_conv_checkpoint)).info
    assert set(info.layers) == {"pool5", "gap", "pool4+pool5"}
    for layer in ("fc6+fc7", "fc7"):
        with pytest.raises(WeightsError, match="only the convolutional stack") as err:
            FeatureExtractor(str(random_conv_checkpoint), layer=layer, device="cpu")
        assert "fc6/fc7" in str(err.value) and "'pool5'" in str(err.value)


def test_conv_only_checkpoint_gives_conv_layers(random_conv_checkpoint):
    fx = FeatureExtractor(str(random_conv_checkpoint), layer="pool5", device="cpu")
    f = fx.extract(_images(1))
    assert f.shape == (1, 25088)
    assert fx.weights_info["preprocessing"]["style"] == "torchvision"  # no sidecar


def _caffe_sidecar(path: Path, **extra) -> None:
    meta = {
        "preprocessing": {
            "channel_order": "BGR",
            "value_range": "0-255",
            "mean_subtracted_bgr": CAFFE_MEAN_BGR,
        },
        **extra,
    }
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_caffe_preprocessing_applied(tmp_path, random_conv_checkpoint):
    ckpt = tmp_path / "caffe.pth"
    ckpt.write_bytes(random_conv_checkpoint.read_bytes())
    _caffe_sidecar(ckpt)
    fx = FeatureExtractor(str(ckpt), layer="gap", device="cpu", channels_last=False, bf16_cpu=False)
    assert fx.weights_info["preprocessing"]["style"] == "caffe"
    x = _images(2)
    # the normalisation: RGB [0, 1] -> BGR 0-255 minus the BGR means
    norm = fx.normalise(torch.from_numpy(x)).numpy()
    want = x[:, ::-1] * 255.0 - np.asarray(CAFFE_MEAN_BGR, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(norm, want, rtol=1e-5, atol=1e-3)
    # and the features are those of the network on that input
    model = VGG16()
    model.load_state_dict(torch.load(ckpt, weights_only=True), strict=False)
    with torch.inference_mode():
        ref = model.eval().forward_features(torch.from_numpy(want.copy()), "gap").numpy()
    np.testing.assert_allclose(fx.extract(x), ref, rtol=1e-4, atol=1e-4)
    # torchvision-normalised input gives different features: the sidecar matters
    plain = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu")
    assert not np.allclose(plain.extract(x), ref, rtol=1e-2)


def test_sidecar_hash_mismatch_refused(tmp_path, random_conv_checkpoint):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(random_conv_checkpoint.read_bytes())
    _caffe_sidecar(ckpt, sha256="0" * 64)
    with pytest.raises(FormatError, match="declares sha256"):
        load_weights(str(ckpt))


def test_not_a_vgg16_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5)}, bad)
    with pytest.raises(FormatError, match=r"features.0.weight has shape \(64, 3, 5, 5\)"):
        load_weights(str(bad))
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    with pytest.raises(FormatError, match="keys not in torchvision"):
        load_weights(str(other))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(FormatError, match="not a torch state dict"):
        load_weights(str(junk))


def test_extract_validates_input(random_conv_checkpoint):
    fx = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu")
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        fx.extract(np.zeros((2, 1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        fx.extract(np.zeros((1, 3, 64, 64), np.uint8))
    assert fx.extract(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 512)


@pytest.mark.skipif(not CAFFE_CHECKPOINT.is_file(), reason=f"{CAFFE_CHECKPOINT} not built")
def test_imagenet_caffe_checkpoint():
    """The real ImageNet conv weights: Caffe preprocessing from the sidecar, pool5/gap only."""
    fx = FeatureExtractor(str(CAFFE_CHECKPOINT), layer="gap", device="cpu")
    info = fx.weights_info
    assert info["pretrained"] is True
    assert info["preprocessing"]["channel_order"] == "BGR"
    assert info["sha256"] == json.loads(CAFFE_CHECKPOINT.with_suffix(".json").read_text())["sha256"]
    f = fx.extract(_images(1, size=224))
    assert f.shape == (1, 512) and np.isfinite(f).all() and (f >= 0).all() and f.max() > 0
    with pytest.raises(WeightsError, match="fc6"):
        FeatureExtractor(str(CAFFE_CHECKPOINT), layer="fc6+fc7", device="cpu")


@pytest.mark.gpu
def test_gpu_matches_cpu(random_conv_checkpoint):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = _images(4, size=224)
    cpu = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu").extract(x)
    gpu = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cuda", bf16=False)
    np.testing.assert_allclose(gpu.extract(x), cpu, rtol=1e-3, atol=1e-3)
    bf = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cuda", bf16=True)
    np.testing.assert_allclose(bf.extract(x), cpu, rtol=5e-2, atol=5e-2)


class _DLPackOnly:
    """An array exposing only the DLPack protocol (as cupy does), delegating to a tensor."""

    def __init__(self, tensor):
        self._tensor = tensor

    def __dlpack__(self, *args, **kwargs):
        return self._tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def test_extract_torch_and_dlpack_input_match_numpy(random_conv_checkpoint):
    cuda_was_initialized = torch.cuda.is_initialized()
    fx = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu", batch_size=2)
    x = _images(3)
    want = fx.extract(x)
    # contiguous, non-contiguous (transposed storage), channels-last, float64, DLPack-only
    transposed = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(2, 3)
    assert not transposed.is_contiguous()
    inputs = {
        "tensor": torch.from_numpy(x),
        "non-contiguous": transposed,
        "channels-last": torch.from_numpy(x).contiguous(memory_format=torch.channels_last),
        "float64": torch.from_numpy(x.astype(np.float64)),
        "dlpack": _DLPackOnly(torch.from_numpy(x)),
    }
    for name, images in inputs.items():
        got = fx.extract(images)
        assert got.shape == (3, 512) and got.dtype == np.float32, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert fx._pinned is None  # no pinned staging on the CPU
    if not cuda_was_initialized:
        assert not torch.cuda.is_initialized()  # the CPU path never touches CUDA


@pytest.mark.parametrize("wrap", [torch.from_numpy, lambda a: _DLPackOnly(torch.from_numpy(a))])
def test_extract_validates_tensor_input(random_conv_checkpoint, wrap):
    fx = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu")
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\); got \(2, 1, 64, 64\)"):
        fx.extract(wrap(np.zeros((2, 1, 64, 64), np.float32)))
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\); got \(3, 64, 64\)"):
        fx.extract(wrap(np.zeros((3, 64, 64), np.float32)))
    with pytest.raises(ValueError, match="at least 32 x 32"):
        fx.extract(wrap(np.zeros((1, 3, 16, 64), np.float32)))
    for dtype in (np.uint8, np.int64):
        with pytest.raises(
            ValueError, match=f"floating point in \\[0, 1\\]; got dtype {dtype.__name__}"
        ):
            fx.extract(wrap(np.zeros((1, 3, 64, 64), dtype)))
    assert fx.extract(wrap(np.zeros((0, 3, 64, 64), np.float32))).shape == (0, 512)


def test_extract_unreadable_dlpack_is_a_type_error(random_conv_checkpoint):
    class Broken:
        def __dlpack__(self, *args, **kwargs):
            raise BufferError("no export")

        def __dlpack_device__(self):
            return (1, 0)  # kDLCPU

    fx = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu")
    with pytest.raises(TypeError, match="Broken could not be read through DLPack"):
        fx.extract(Broken())


@pytest.mark.gpu
def test_gpu_tensor_input_and_pinned_buffer(random_conv_checkpoint):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fx = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cuda", batch_size=2)
    x = _images(5)
    want = fx.extract(x)  # numpy: staged through the pinned buffer
    buf = fx._pinned
    assert buf is not None and buf.is_pinned() and buf.numel() == 2 * 3 * 64 * 64
    np.testing.assert_allclose(fx.extract(x), want, rtol=1e-3, atol=1e-3)
    fx.extract(_images(3, size=32))  # smaller images fit the same buffer
    assert fx._pinned.data_ptr() == buf.data_ptr()  # reused across calls
    # device input never goes through the host buffer; bf16 tolerance
    fx._pinned = None
    on_gpu = torch.from_numpy(x).cuda()
    for images in (on_gpu, on_gpu.double().transpose(2, 3).contiguous().transpose(2, 3)):
        np.testing.assert_allclose(fx.extract(images), want, rtol=5e-2, atol=5e-2)
    pinned = torch.from_numpy(x).pin_memory()  # already pinned: copied straight to the GPU
    np.testing.assert_allclose(fx.extract(pinned), want, rtol=5e-2, atol=5e-2)
    assert fx._pinned is None
    # a CPU extractor takes CUDA input too (moved with .to)
    cpu = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cpu")
    np.testing.assert_array_equal(cpu.extract(on_gpu), cpu.extract(x))
    # larger images: the buffer grows
    big = _images(2, size=96)
    np.testing.assert_allclose(fx.extract(big), cpu.extract(big), rtol=5e-2, atol=5e-2)
    assert fx._pinned.numel() == 2 * 3 * 96 * 96


@pytest.mark.gpu
def test_gpu_cupy_input(random_conv_checkpoint):
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fx = FeatureExtractor(str(random_conv_checkpoint), layer="gap", device="cuda", batch_size=2)
    x = _images(3)
    want = fx.extract(x)
    fx._pinned = None
    np.testing.assert_allclose(fx.extract(cupy.asarray(x)), want, rtol=5e-2, atol=5e-2)
    assert fx._pinned is None  # cupy data never visited the host


def test_cpu_forward_passes_are_cut_to_a_few_images():
    from hpcdiff.features.extractor import cpu_forward_batch

    assert cpu_forward_batch(1) == 4 and cpu_forward_batch(2) == 4 and cpu_forward_batch(16) == 32
    x = _images(6)
    big = FeatureExtractor("random:1", layer="gap", device="cpu", batch_size=64).extract(x)
    one = FeatureExtractor("random:1", layer="gap", device="cpu", batch_size=1).extract(x)
    assert big.shape == (6, 512)
    np.testing.assert_allclose(big, one, rtol=1e-5, atol=1e-6)  # chunking does not matter
