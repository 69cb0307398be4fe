"""The liquid-like model's physics: it tends to the displacement model as the correlation
length grows, and its speckle contrast falls as gamma shrinks (why short-gamma liquid-like
frames are nearly isotropic; see ``benchmarks/bench_diffuse_visibility.py``)."""

from __future__ import annotations

import numpy as np

from hpcdiff.simulate.diffuse_models import DiffuseModel, model_grid
from hpcdiff.simulate.physics import MolecularTransform, _node_q_abs


def _transform() -> MolecularTransform:
    rng = np.random.default_rng(1)
    atoms = rng.normal(size=(60, 3)) * 0.1
    return MolecularTransform.from_atoms(atoms, (4.0, 4.5, 3.0), (90.0, 90.0, 90.0),
                                         q_max_per_nm=2.5)  # fmt: skip


def _shell_contrast(grid: np.ndarray, q: np.ndarray) -> float:
    """Mean over |q| shells (1.0-2.4 nm^-1) of std / mean of the grid in the shell."""
    edges = np.linspace(1.0, 2.4, 8)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        shell = grid[(q >= lo) & (q < hi)]
        out.append(shell.std() / shell.mean())
    return float(np.mean(out))


def test_liquid_like_tends_to_displacement_and_loses_contrast_as_gamma_shrinks():
    t = _transform()
    q = _node_q_abs(np.array(t.intensity.shape), t.oversampling, t.basis)
    inside = q < 2.4
    disp = model_grid(t, DiffuseModel("displacement", sigma_nm=0.05)).intensity
    c_disp = _shell_contrast(disp, q)
    assert c_disp > 0.8  # Wilson speckle: exponential statistics, contrast near 1
    # gamma far beyond the molecule: exp(-r / gamma) ~ 1 over the Patterson, no smoothing
    far = model_grid(t, DiffuseModel("liquid_like", sigma_nm=0.05, gamma_nm=100.0)).intensity
    assert np.corrcoef(far[inside], disp[inside])[0, 1] > 0.999
    assert abs(far[inside].mean() / disp[inside].mean() - 1) < 0.01
    contrasts = [
        _shell_contrast(
            model_grid(t, DiffuseModel("liquid_like", sigma_nm=0.05, gamma_nm=g)).intensity, q
        )
        for g in (0.2, 0.4, 0.8, 1.5, 3.0, 10.0)
    ]
    assert all(a < b for a, b in zip(contrasts[:-1], contrasts[1:], strict=True)), contrasts
    assert contrasts[-1] < c_disp
    # at gamma 0.2 nm the kernel (HWHM ~0.5 nm^-1) is wider than the speckle: nearly flat
    assert contrasts[0] < 0.1 * c_disp
