#!/usr/bin/env bash
# GPU checks on a GPU node, in under 10 minutes: the gpu-marked tests, then the GPU benchmark
# rows of benchmarks/bench_gpu_limits.py (H2D bandwidth pageable/pinned for float32 and int16
# frames, bf16 matmul peak, each stage per batch, end to end as a fraction of both limits).
# Writes benchmarks/records/gpu-HOST-DATE.{json,txt} (+ .tests.txt, the pytest output, and
# .feed.txt, benchmarks/bench_feed.py: reader processes and the device feed on this node).
# Without a CUDA device it prints "no CUDA device: nothing measured", then the CPU rows of
# benchmarks/device_prep_rows.py (host syncs per batch of the device chain, cupy emulated),
# and exits 0.
#
# Usage: bash benchmarks/gpu.sh [--quick]      (PYTHON=... to pick the interpreter)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA device: nothing measured"
    # what needs no GPU: the device chain's host syncs per batch, counted with cupy emulated
    "$PY" benchmarks/device_prep_rows.py --quick
    exit 0
fi

host=$(hostname -s 2>/dev/null || hostname)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
base="benchmarks/records/gpu-${host}-${stamp}"
mkdir -p benchmarks/records
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0))'

# 1) the gpu-marked tests (200 s at most; never the slurm ones)
timeout 200 "$PY" -m pytest -q -m "gpu and not slurm" -p no:cacheprovider tests 2>&1 \
    | tee "${base}.tests.txt"
tests_rc=${PIPESTATUS[0]}

# 2) the benchmark rows (270 s at most), with the tests' outcome in the record
timeout 270 "$PY" benchmarks/bench_gpu_limits.py "$@" --record "$base" \
    --tests-log "${base}.tests.txt" --tests-rc "$tests_rc"
bench_rc=$?

# 3) the host feed: reader processes (1..16) on lz4 int16 CSPAD frames, DeviceFeed on CUDA (100 s at most)
timeout 100 "$PY" benchmarks/bench_feed.py "$@" 2>&1 | tee "${base}.feed.txt"
feed_rc=${PIPESTATUS[0]}

echo "gpu tests: exit ${tests_rc}; benchmark: exit ${bench_rc}; host feed: exit ${feed_rc};" \
    "record: ${base}.{json,txt,tests.txt,feed.txt}"
if [ "$tests_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ] || [ "$feed_rc" -ne 0 ]; then
    exit 1
fi
exit 0
