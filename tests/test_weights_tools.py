"""Weights tools: download (against a local HTTP server), verify, find, hash cache, layer auto."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hpcdiff.cli import main  # noqa: E402
from hpcdiff.errors import FormatError, OutputExistsError  # noqa: E402
from hpcdiff.features import hashcache  # noqa: E402
from hpcdiff.features.catalog import find_weights, verify_checkpoint  # noqa: E402
from hpcdiff.features.download import (  # noqa: E402
    DownloadError,
    download_checkpoint,
    hash_prefix_from_name,
)
from hpcdiff.features.layers import (  # noqa: E402
    BEST_CONV_LAYER,
    LAYER_SIZES,
    layer_note,
    resolve_layer,
)
from hpcdiff.features.weights import _random_state_dict, hub_checkpoint_path  # noqa: E402

PAYLOAD = os.urandom(3 * 65536 + 123)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCDIFF_CACHE_DIR", str(tmp_path / "cache"))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/models/ok.pth":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/models/short.pth":  # promises more than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 1000))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_hash_prefix_from_name():
    assert hash_prefix_from_name("vgg16-397923af.pth") == "397923af"
    assert hash_prefix_from_name("resnet50-0676ba61.pth") == "0676ba61"
    assert hash_prefix_from_name("vgg16_features_imagenet_caffe.pth") is None


def test_download_checks_hash_and_renames(server, tmp_path):
    dest = tmp_path / "hub" / "checkpoints" / f"vgg16-{PAYLOAD_SHA[:8]}.pth"
    seen: list[tuple[int, int | None]] = []
    sha = download_checkpoint(
        f"{server}/models/ok.pth",
        dest,
        block_bytes=65536,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert sha == PAYLOAD_SHA
    assert dest.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) == 4
    assert _leftovers(dest.parent) == []
    with pytest.raises(OutputExistsError, match="--force"):
        download_checkpoint(f"{server}/models/ok.pth", dest)
    download_checkpoint(f"{server}/models/ok.pth", dest, force=True)
    assert dest.read_bytes() == PAYLOAD


def test_download_wrong_hash_installs_nothing(server, tmp_path):
    wrong = "0" * 8 if not PAYLOAD_SHA.startswith("0" * 8) else "1" * 8
    dest = tmp_path / f"vgg16-{wrong}.pth"
    with pytest.raises(DownloadError, match=f"does not start with the published {wrong}"):
        download_checkpoint(f"{server}/models/ok.pth", dest)
    assert not dest.exists() and _leftovers(tmp_path) == []
    # an explicit prefix overrides the name's
    other = tmp_path / "plain.pth"
    with pytest.raises(DownloadError, match="does not start with"):
        download_checkpoint(f"{server}/models/ok.pth", other, sha256_prefix=wrong)
    assert not other.exists()
    assert download_checkpoint(f"{server}/models/ok.pth", other, sha256_prefix=PAYLOAD_SHA[:12])


def test_download_refuses_unchecked_and_reports_http_errors(server, tmp_path):
    with pytest.raises(DownloadError, match="publishes no SHA-256 prefix"):
        download_checkpoint(f"{server}/models/ok.pth", tmp_path / "plain.pth")
    dest = tmp_path / "x-12345678.pth"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_checkpoint(f"{server}/models/missing.pth", dest)
    with pytest.raises(DownloadError, match=f"{len(PAYLOAD)} of {len(PAYLOAD) + 1000} bytes"):
        download_checkpoint(f"{server}/models/short.pth", dest)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_download_into_a_folder_that_cannot_be_made(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(DownloadError, match="cannot write into"):
        download_checkpoint(f"{server}/models/ok.pth", blocker / "sub" / "x-12345678.pth")


def test_download_offline_is_a_clear_error(tmp_path):
    # a port nothing listens on: connection refused, as on a node without internet
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(DownloadError, match="no internet access.*copy it to"):
        download_checkpoint(f"http://127.0.0.1:{port}/vgg16-397923af.pth", dest, timeout_s=5)
    assert not dest.exists()


def test_cli_download_into_hub_cache(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = hub_checkpoint_path()
    assert hub == tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    url = f"{server}/models/ok.pth"
    argv = ["weights", "download", "--url", url, "--sha256-prefix", PAYLOAD_SHA[:8]]
    assert main(argv) == 0
    assert hub.read_bytes() == PAYLOAD
    assert PAYLOAD_SHA in capsys.readouterr().out
    assert main(argv) == 1  # exists: refused without --force
    assert "exists already" in capsys.readouterr().err
    bad = ["weights", "download", "--url", url, "--dest", str(tmp_path / "vgg16-00000000.pth")]
    assert main(bad) == 1
    assert "does not start with the published 00000000" in capsys.readouterr().err


# --------------------------------------------------------------------------- verify


@pytest.fixture(scope="module")
def conv_state() -> dict:
    return {k: v for k, v in _random_state_dict(3).items() if k.startswith("features.")}


@pytest.fixture(scope="module")
def conv_random(tmp_path_factory, conv_state) -> Path:
    """Conv-only weights as torchvision initialises them: zero biases, NOT pretrained."""
    path = tmp_path_factory.mktemp("w") / "conv_random.pth"
    torch.save(conv_state, path)
    return path


@pytest.fixture(scope="module")
def conv_trained_like(tmp_path_factory, conv_state) -> Path:
    """Conv-only weights with non-zero biases and a sidecar naming their source."""
    folder = tmp_path_factory.mktemp("w")
    path = folder / "conv_trained.pth"
    state = {k: (v + 0.01 if k.endswith(".bias") else v) for k, v in conv_state.items()}
    torch.save(state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = {
        "sha256": sha,
        "preprocessing": {"channel_order": "BGR", "mean_subtracted_bgr": [103.9, 116.8, 123.7]},
        "provenance": {"original_weights": "VGG16 ImageNet (test double)"},
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def test_verify_conv_only_random(conv_random):
    r = verify_checkpoint(conv_random)
    assert r.ok and r.kind == "conv-only"
    assert set(r.layers) == {"pool5", "gap", "pool4+pool5"}
    assert r.sha256 == hashlib.sha256(conv_random.read_bytes()).hexdigest()
    assert r.n_tensors == 26 and r.n_params == 14_714_688
    assert r.pretrained is False and "bias" in r.pretrained_reason
    assert (
        r.sidecar is None
        and r.missing_keys
        and all(k.startswith("classifier") for k in r.missing_keys)
    )


def test_verify_sidecar_and_pretrained(conv_trained_like, tmp_path, capsys):
    r = verify_checkpoint(conv_trained_like)
    assert r.ok and r.pretrained is True and "test double" in r.pretrained_reason
    assert r.sidecar == conv_trained_like.with_suffix(".json").resolve()
    assert r.preprocessing.startswith("caffe (BGR")
    assert main(["weights", "verify", str(conv_trained_like)]) == 0
    out = capsys.readouterr().out
    assert "conv-only" in out and "gap, pool4+pool5, pool5" in out and "usable" in out
    # a sidecar declaring another file's hash is a problem, listed, not a traceback
    copy = tmp_path / "copy.pth"
    copy.write_bytes(conv_trained_like.read_bytes())
    side = json.loads(conv_trained_like.with_suffix(".json").read_text())
    side["sha256"] = "f" * 64
    copy.with_suffix(".json").write_text(json.dumps(side))
    assert main(["weights", "verify", str(copy)]) == 1
    assert "declares sha256" in capsys.readouterr().out


def test_verify_small_fake_state_dict_lists_every_problem(tmp_path):
    path = tmp_path / "fake-abcdef12.pth"
    torch.save(
        {
            "features.0.weight": torch.zeros(64, 3, 5, 5),  # wrong shape
            "features.0.bias": torch.zeros(64),
            "head.weight": torch.zeros(4, 2),  # not vgg16
        },
        path,
    )
    r = verify_checkpoint(path)
    assert not r.ok
    text = " | ".join(r.problems)
    assert "abcdef12" in text and "truncated or corrupted" in text  # name's hash prefix
    assert "head.weight" in text
    assert "features.0.weight (64, 3, 5, 5)" in text
    assert "missing convolution weights" in text
    assert r.layers == ()
    # the legacy (non-zip) format of older checkpoints is read too (without mmap)
    legacy = tmp_path / "legacy.pth"
    torch.save({"head.weight": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert verify_checkpoint(legacy).unknown_keys == ["head.weight"]
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    assert "not a torch state dict" in verify_checkpoint(junk).problems[0]
    with pytest.raises(FormatError, match="not found"):
        verify_checkpoint(tmp_path / "absent.pth")


def test_find_weights_honours_torch_home_env_and_jobs(tmp_path, monkeypatch, conv_random):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HPCDIFF_WEIGHTS", str(conv_random))
    found = find_weights([("job.toml", "random:5"), ("job2.toml", str(conv_random))])
    where = {c.where: c for c in found}
    assert where["torch hub cache"].path == tmp_path / "th/hub/checkpoints/vgg16-397923af.pth"
    assert not where["torch hub cache"].exists
    assert where["$HPCDIFF_WEIGHTS"].path == conv_random and where["$HPCDIFF_WEIGHTS"].exists
    assert where["job.toml [features] weights"].spec == "random:5"
    assert "job2.toml [features] weights" not in where  # the same file is listed once


def test_cli_weights_list(tmp_path, monkeypatch, conv_random, capsys):
    from hpcdiff.features import catalog

    monkeypatch.setattr(catalog, "CONV_ONLY_DIR", tmp_path / "none")
    monkeypatch.setattr(catalog, "CONV_ONLY_DEFAULT", tmp_path / "none" / "conv.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HPCDIFF_WEIGHTS", str(conv_random))
    job = tmp_path / "job.toml"
    job.write_text('[features]\nweights = "random:1"\n')
    assert main(["weights", "--job", str(job), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    env_row = next(r for r in rows if r["where"] == "$HPCDIFF_WEIGHTS")
    assert env_row["kind"] == "conv-only" and env_row["pretrained"] is False
    assert any(r["weights"] == "random:1" and r["pretrained"] is False for r in rows)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "not there" in out and "NOT pretrained" in out and "hpcdiff weights download" in out


# --------------------------------------------------------------------------- hash cache


def test_sha256_cache_by_path_size_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "MIN_CACHED_BYTES", 0)
    calls: list[Path] = []
    real = hashcache.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashcache, "sha256_file", counting)
    f = tmp_path / "w.pth"
    f.write_bytes(b"a" * 1000)
    want = hashlib.sha256(b"a" * 1000).hexdigest()
    assert hashcache.cached_sha256(f) == want and len(calls) == 1
    assert hashcache.cached_sha256(f) == want and len(calls) == 1  # from the cache
    cache = json.loads((tmp_path / "cache" / hashcache.CACHE_FILE).read_text())
    assert cache[str(f.resolve())]["size"] == 1000
    f.write_bytes(b"b" * 1000)  # same size, new mtime
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hashcache.cached_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(calls) == 2
    (tmp_path / "cache" / hashcache.CACHE_FILE).write_text("{not json")  # a broken cache
    assert hashcache.cached_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()


# --------------------------------------------------------------------------- layer auto


def test_resolve_layer():
    full = tuple(LAYER_SIZES)
    assert resolve_layer("auto", full) == "fc6+fc7"
    assert resolve_layer("auto", ("pool5", "gap")) == BEST_CONV_LAYER
    assert BEST_CONV_LAYER in LAYER_SIZES
    assert resolve_layer("pool5", full) == "pool5"
    assert layer_note("auto", full) is None
    assert layer_note("gap", ("pool5", "gap")) is None
    note = layer_note("auto", ("pool5", "gap"))
    assert note is not None and BEST_CONV_LAYER in note and "fc6+fc7" in note


def test_extractor_auto_layer_with_conv_only_weights(conv_random, caplog):
    from hpcdiff.features import FeatureExtractor

    with caplog.at_level("WARNING", logger="hpcdiff.features"):
        fx = FeatureExtractor(str(conv_random), layer="auto", device="cpu")
    assert fx.layer == BEST_CONV_LAYER and fx.n_features == LAYER_SIZES[BEST_CONV_LAYER]
    info = fx.run_info()
    assert info["layer"] == BEST_CONV_LAYER and info["layer_requested"] == "auto"
    assert "conv-only" in info["layer_note"]
    assert "conv-only" in caplog.text
    assert fx.extract(torch.rand(1, 3, 64, 64).numpy()).shape == (1, LAYER_SIZES[BEST_CONV_LAYER])


def test_feature_meta_records_resolved_layer(conv_random):
    from hpcdiff.config import parse_job
    from hpcdiff.features.weights import load_weights
    from hpcdiff.pipelines.classify import feature_meta

    job = parse_job({})
    assert job.features.layer == "auto"
    conv_info = load_weights(str(conv_random)).info.to_dict()
    meta = feature_meta(job, conv_info)
    assert meta.layer == BEST_CONV_LAYER and meta.n_features == LAYER_SIZES[BEST_CONV_LAYER]
    assert "conv-only" in meta.extra["layer_note"]
    full = dict(conv_info, layers=list(LAYER_SIZES))
    meta = feature_meta(job, full)
    assert meta.layer == "fc6+fc7" and "layer_note" not in meta.extra
    # an explicit layer is kept, never "auto"
    job = parse_job({"features": {"layer": "pool5"}})
    assert feature_meta(job, conv_info).layer == "pool5"
