"""The limits of the GPU the job runs on: host-to-device bandwidth and bf16 matmul peak.

These two numbers bound the end-to-end classification rate from host memory:
a full CSPAD frame is 1480 x 1552 float32 = 9.19 MB, so ``bandwidth / 9.19 MB`` frames/s
is the transfer ceiling, and VGG16 at 224 x 224 costs about 15.5 G multiply-adds (31 GFLOP)
per image, so ``peak / 31 GFLOP`` frames/s is the compute ceiling.
The suite compares the measured end-to-end rate (``bench_mpi``/``bench_classify``) with
the lower of the two.  Without a CUDA device this benchmark reports that and measures
nothing (it never invents GPU numbers).

With a CUDA device it also measures the data path of :mod:`hpcdiff.parallel.device_feed`:
host-to-device bandwidth from pageable and pinned memory for float32 and int16 frames, each
stage per batch (upload + widening, cupy preprocessing, VGG16 bf16), and end to end
(reader thread -> pinned slots -> preprocessing -> VGG16) as a fraction of the transfer
ceiling (float32 and int16 frames) and of the compute ceiling.  VGG16 runs with random
weights there: its speed does not depend on the weights, and no feature is kept.

On any machine it also counts the host synchronisations of one batch of the device
preprocessing chain with cupy emulated on numpy (target 0), and on a GPU it times that chain
per batch, per recipe and stage (:mod:`device_prep_rows`).

Run alone: ``python benchmarks/bench_gpu_limits.py [--quick] [--record PATH_STEM]``;
``benchmarks/gpu.sh`` runs it with the gpu-marked tests and writes the record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_prep_rows import median_time  # noqa: E402

CSPAD_SLAB = (1480, 1552)
FRAME_BYTES = CSPAD_SLAB[0] * CSPAD_SLAB[1] * 4
VGG16_FLOP_PER_IMAGE = 2 * 15.47e9


def run(quick: bool = False) -> dict:
    """Measure host-to-device bandwidth (pinned and pageable) and bf16 matmul TFLOP/s."""
    import torch

    title = "GPU limits: host-to-device bandwidth and bf16 matmul peak"
    # the device chain's host syncs per batch, counted on the CPU (cupy emulated): any machine
    sync_rows = _device_prep().sync_rows(quick=quick)
    if not torch.cuda.is_available():
        return {
            "title": title,
            "rows": [
                {
                    "metric": "cuda device",
                    "value": "none",
                    "unit": "",
                    "note": "no CUDA device on this machine: nothing measured",
                },
                *sync_rows,
            ],
        }
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    repeats = 5 if quick else 20
    n_bytes = 256 * 2**20
    rows = [{"metric": "device", "value": torch.cuda.get_device_name(0), "unit": "", "note": ""}]
    for pinned in (True, False):
        host = torch.empty(n_bytes // 4, dtype=torch.float32, pin_memory=pinned)
        dst = torch.empty_like(host, device=dev)
        t = median_time(
            lambda h=host, d=dst: d.copy_(h, non_blocking=True), repeats=repeats, sync=sync
        )
        rows.append(
            {
                "metric": f"host-to-device bandwidth ({'pinned' if pinned else 'pageable'})",
                "value": n_bytes / t / 1e9,
                "unit": "GB/s",
                "note": "median, 256 MiB copies",
            }
        )
    h2d = rows[1]["value"] * 1e9
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    t = median_time(lambda: a @ b, repeats=repeats, sync=sync)
    peak = 2 * n**3 / t
    rows.append(
        {
            "metric": "bf16 matmul",
            "value": peak / 1e12,
            "unit": "TFLOP/s",
            "note": f"median, {n}x{n} @ {n}x{n}",
        }
    )
    transfer_limit = h2d / FRAME_BYTES
    compute_limit = peak / VGG16_FLOP_PER_IMAGE
    rows += [
        {
            "metric": "transfer ceiling (float32 CSPAD frames)",
            "value": transfer_limit,
            "unit": "frames/s",
            "note": "pinned bandwidth / 9.19 MB",
        },
        {
            "metric": "VGG16 compute ceiling (bf16 peak)",
            "value": compute_limit,
            "unit": "frames/s",
            "note": "peak / 31 GFLOP per 224x224 image",
        },
        {
            "metric": "end-to-end limit",
            "value": min(transfer_limit, compute_limit),
            "unit": "frames/s",
            "note": "lower of the two",
        },
    ]
    rows += _data_path_rows(torch, quick=quick, h2d_pinned=h2d, peak=peak)
    rows += sync_rows
    try:  # device preprocessing per batch, per recipe and stage; ring median packed vs padded
        rows += _device_prep().gpu_rows(batch=16 if quick else 32, repeats=3 if quick else 10)
    except Exception:
        rows.append(_row("device preprocessing rows", "error", "", traceback.format_exc()[-800:]))
    return {"title": title, "rows": rows, "limit_frames_per_s": min(transfer_limit, compute_limit)}


def _device_prep():
    """benchmarks/device_prep_rows.py (imported from this file's folder)."""
    import device_prep_rows

    return device_prep_rows


def _row(metric: str, value: object, unit: str, note: str = "") -> dict:
    return {"metric": metric, "value": value, "unit": unit, "note": note}


def _cspad_batch(n: int, *, seed: int = 0):
    """``(n, 1480, 1552)`` int16 ADU frames: Poisson photons on a CSPAD-like detector."""
    import numpy as np

    from hpcdiff.geometry import DetectorModel, cspad_like_geometry

    model = DetectorModel.build(cspad_like_geometry(), photon_energy_ev=9500.0)
    adu = float(model.geom.panels[0].adu_per_ev) * 9500.0
    rng = np.random.default_rng(seed)
    photons = rng.poisson(0.3, (n, *model.slab_shape))
    return model, np.clip(np.rint(photons * adu), -32768, 32767).astype(np.int16)


def _data_path_rows(torch, *, quick: bool, h2d_pinned: float, peak: float) -> list[dict]:
    """Bandwidth per dtype and memory kind, each stage per batch, end to end."""
    rows: list[dict] = []
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    repeats = 3 if quick else 10
    batch = 16 if quick else 32
    n_pix = CSPAD_SLAB[0] * CSPAD_SLAB[1]
    for dtype, size in ((torch.float32, 4), (torch.int16, 2)):
        for pinned in (False, True):
            host = torch.zeros((batch, n_pix), dtype=dtype, pin_memory=pinned)
            dst = torch.empty_like(host, device=dev)
            t = median_time(
                lambda h=host, d=dst: d.copy_(h, non_blocking=True), repeats=repeats, sync=sync
            )
            kind = "pinned" if pinned else "pageable"
            name = str(dtype).removeprefix("torch.")
            rows.append(
                _row(
                    f"H2D {name} frames ({kind})",
                    batch / t,
                    "frames/s",
                    f"{batch * n_pix * size / t / 1e9:.2f} GB/s, batch of {batch} CSPAD frames",
                )
            )
            del host, dst
    limits = {
        "transfer ceiling float32": h2d_pinned / FRAME_BYTES,
        "transfer ceiling int16": 2 * h2d_pinned / FRAME_BYTES,
        "compute ceiling": peak / VGG16_FLOP_PER_IMAGE,
    }
    try:
        rows += _stage_rows(torch, batch=batch, repeats=repeats, limits=limits, quick=quick)
    except Exception:  # one broken stage is recorded, the limits above stay
        rows.append(_row("data path stages", "error", "", traceback.format_exc()[-800:]))
    return rows


def _stage_rows(torch, *, batch: int, repeats: int, limits: dict, quick: bool) -> list[dict]:
    from hpcdiff.backend_check import cupy_problem
    from hpcdiff.config import BackgroundConfig, CorrectionsConfig
    from hpcdiff.features import FeatureExtractor
    from hpcdiff.parallel.device_feed import DeviceFeed, SlotUploader, handoff
    from hpcdiff.preprocess import Preprocessor

    rows: list[dict] = []
    sync = torch.cuda.synchronize
    model, frames = _cspad_batch(batch)
    up = SlotUploader(
        batch_size=batch, frame_shape=frames.shape[1:], dtype=frames.dtype, device="cuda"
    )
    slot = [0]

    def upload():
        s = slot[0] = (slot[0] + 1) % up.slots
        up.consumed(s)
        return up.upload(s, up.fill(s, frames))

    t = median_time(upload, repeats=repeats, sync=sync)
    rates = [batch / t]
    rows.append(
        _row(
            "stage: fill pinned + upload int16 + widen",
            batch / t,
            "frames/s",
            f"{t * 1e3:.1f} ms per {batch}",
        )
    )

    problem = cupy_problem(torch.cuda.current_device())
    pre = None
    if problem is None:
        pre = Preprocessor(model, BackgroundConfig(), CorrectionsConfig())
        dev_frames = handoff(upload(), "cupy")
        pre(dev_frames, photon_energy_ev=9500.0)  # warm-up: kernels, tables on the device
        t = median_time(
            lambda: pre(dev_frames, photon_energy_ev=9500.0), repeats=repeats, sync=sync
        )
        rates.append(batch / t)
        rows.append(
            _row("stage: preprocess (cupy)", batch / t, "frames/s", f"{t * 1e3:.1f} ms per {batch}")
        )
    else:
        rows.append(_row("stage: preprocess (cupy)", "not measured", "", problem))

    extractor = FeatureExtractor(
        "random:0", layer="pool5", device="cuda", bf16=True, batch_size=batch
    )
    images = torch.rand((batch, 3, 224, 224), device="cuda")
    extractor.extract(images)
    t = median_time(lambda: extractor.extract(images), repeats=repeats, sync=sync)
    rates.append(batch / t)
    rows.append(
        _row(
            "stage: VGG16 pool5 bf16",
            batch / t,
            "frames/s",
            f"{t * 1e3:.1f} ms per {batch}; random weights (speed only)",
        )
    )
    if pre is None:
        return rows

    # about 15 s (5 s quick) at the slowest stage's rate, 4 to 40 batches
    seconds = 5.0 if quick else 15.0
    n_batches = int(min(max(seconds * min(rates) / batch, 4), 40))

    def end_to_end(n: int) -> None:
        feed = DeviceFeed(
            iter([frames] * n),  # in host memory, as from the page cache
            batch_size=batch,
            frame_shape=frames.shape[1:],
            dtype=frames.dtype,
            device="cuda",
        )
        for raw in feed:
            extractor.extract(pre(handoff(raw, "cupy"), photon_energy_ev=9500.0))

    end_to_end(2)  # warm-up
    sync()
    start = time.perf_counter()
    cpu0 = time.process_time()
    end_to_end(n_batches)
    sync()
    wall = time.perf_counter() - start
    rate = n_batches * batch / wall
    cpu = time.process_time() - cpu0
    rows.append(
        _row(
            "end to end (int16 feed, cupy preprocess, VGG16)",
            rate,
            "frames/s",
            f"{n_batches * batch} frames, {wall:.2f} s wall, {cpu:.2f} s CPU",
        )
    )
    for name, limit in limits.items():
        rows.append(
            _row(f"end to end / {name}", rate / limit, "fraction", f"{name} {limit:.0f} frames/s")
        )
    return rows


def record(result: dict, stem: Path, *, tests_log: Path | None, tests_rc: int | None) -> None:
    """Write ``STEM.json`` and ``STEM.txt``: machine, rows and the gpu tests' outcome."""
    import torch

    machine = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tests = None
    if tests_log is not None and tests_log.exists():
        tail = tests_log.read_text().strip().splitlines()[-1:]
        tests = {"rc": tests_rc, "summary": tail[0] if tail else "", "log": str(tests_log)}
    doc = {"machine": machine, "gpu_tests": tests, **result}
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [f"{k}: {v}" for k, v in machine.items()]
    if tests is not None:
        lines.append(f"gpu tests: rc {tests['rc']}, {tests['summary']}")
    lines += ["", *_table(result["rows"])]
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")


def _table(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        value = row["value"]
        text = f"{value:.4g}" if isinstance(value, int | float) else str(value)
        out.append(f"{row['metric']:<50} {text:>12} {row['unit']:<9} {row['note']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    parser.add_argument("--record", type=Path, help="write PATH_STEM.json and PATH_STEM.txt")
    parser.add_argument("--tests-log", type=Path, help="pytest output of the gpu tests")
    parser.add_argument("--tests-rc", type=int, help="pytest exit status of the gpu tests")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print("\n".join(_table(result["rows"])))
    if args.record is not None and "limit_frames_per_s" in result:
        record(result, args.record, tests_log=args.tests_log, tests_rc=args.tests_rc)
        print(f"wrote {args.record}.json and {args.record}.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
