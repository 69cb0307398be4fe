"""The limits of the GPU the job runs on: host-to-device bandwidth and bf16 matmul peak.

These two numbers bound the end-to-end classification rate from host memory:
a full CSPAD frame is 1480 x 1552 float32 = 9.19 MB, so ``bandwidth / 9.19 MB`` frames/s
is the transfer ceiling, and VGG16 at 224 x 224 costs about 15.5 G multiply-adds (31 GFLOP)
per image, so ``peak / 31 GFLOP`` frames/s is the compute ceiling.
The suite compares the measured end-to-end rate (``bench_mpi``/``bench_classify``) with
the lower of the two.  Without a CUDA device this benchmark reports that and measures
nothing (it never invents GPU numbers).

Run alone: ``python benchmarks/bench_gpu_limits.py``.
"""

from __future__ import annotations

import statistics
import time

FRAME_BYTES = 1480 * 1552 * 4
VGG16_FLOP_PER_IMAGE = 2 * 15.47e9


def _median_time(fn, *, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False) -> dict:
    """Measure host-to-device bandwidth (pinned and pageable) and bf16 matmul TFLOP/s."""
    import torch

    title = "GPU limits: host-to-device bandwidth and bf16 matmul peak"
    if not torch.cuda.is_available():
        return {
            "title": title,
            "rows": [
                {
                    "metric": "cuda device",
                    "value": "none",
                    "unit": "",
                    "note": "no CUDA device on this machine: nothing measured",
                }
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
        t = _median_time(
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
    t = _median_time(lambda: a @ b, repeats=repeats, sync=sync)
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
    return {"title": title, "rows": rows, "limit_frames_per_s": min(transfer_limit, compute_limit)}


if __name__ == "__main__":
    for row in run()["rows"]:
        print(f"{row['metric']:<45} {row['value']!s:>12} {row['unit']}  {row['note']}")
