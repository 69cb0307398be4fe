"""Torch threads leave a core to the preprocessing reader thread on CPU ranks."""

from __future__ import annotations

import pytest

from hpcdiff.parallel.placement import torch_threads


@pytest.mark.parametrize(
    ("threads", "device", "overlap", "expected"),
    [
        (2, "cpu", True, 1),
        (16, "cpu", True, 15),
        (1, "cpu", True, 1),  # never 0
        (2, "cpu", False, 2),  # preprocessing runs between batches: all cores to torch
        (8, "cuda:0", True, 8),  # the network runs on the GPU
    ],
)
def test_torch_threads(threads, device, overlap, expected):
    assert torch_threads(threads, device=device, overlap_preprocess=overlap) == expected
