"""Diffuse-scattering models: smooth functions of 3D q, tabulated once per experiment.

Every model gives the diffuse intensity (per unit strength, before the experiment's scale
``K``) as a function of fractional hkl in the crystal frame.  The smooth part is computed
once on the molecular transform's grid (:class:`~hpcdiff.simulate.physics.MolecularTransform`
layout, so frames interpolate it trilinearly at their pixels' hkl, as for ``|F|^2``); the
``correlated`` model multiplies it per pixel by a lattice factor that is periodic in hkl,
read from three 1D tables.  q is in nm^-1 without 2 pi; ``w(q) = 1 - exp(-4 pi^2 sigma^2 q^2)``
(:func:`~hpcdiff.simulate.physics.diffuse_weight`).

``displacement``
    ``w(|q|) |F(q)|^2``: uncorrelated displacements of whole cell contents (the original
    model).
``liquid_like``
    ``w(|q|) (|F|^2 * L_gamma)(q)``: liquid-like motions (Caspar, Wall); ``L_gamma`` is the
    3D Fourier transform of ``exp(-r / gamma)`` (correlation length ``gamma`` nm),
    ``8 pi gamma^3 / (1 + 4 pi^2 gamma^2 q^2)^2`` normalised to unit integral; the
    convolution is a product with ``exp(-r / gamma)`` of the Patterson function.
``rigid_body``
    ``<|F(R q)|^2>_R - |<F(R q)>_R|^2 exp(-4 pi^2 q^T U q)``: rigid-body libration of the
    cell content (Gaussian rotations of RMS ``libration_deg`` about its centroid, averaged
    over 8 symmetric samples) plus anisotropic translation (covariance ``U`` nm^2 in the
    crystal frame): halos and tangential streaks.
``correlated``
    ``w(|q|) |F(q)|^2 S(hkl)`` with ``S = prod_a (1 - c_a^2) / (1 + c_a^2 - 2 c_a cos 2 pi h_a)``:
    displacements correlated between neighbouring cells (correlation ``c_a`` along cell
    axis ``a`` decaying as ``c_a^|n|``).  ``S`` averages to 1 over a cell of hkl and peaks at
    the nodes: halos around Bragg positions, streaks along axes where ``c`` is small.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

from hpcdiff.simulate.physics import MolecularTransform, _node_q_abs, diffuse_weight

DIFFUSE_MODELS: tuple[str, ...] = ("displacement", "liquid_like", "rigid_body", "correlated")
"""Model names of ``[simulate] diffuse_model`` (besides ``random``)."""

LATTICE_TABLE_SIZE = 2048
"""Points of the lattice-factor tables over one hkl period."""


@dataclass(frozen=True)
class DiffuseModel:
    """One experiment's diffuse model and its parameters (recorded in truth and manifest).

    Attributes
    ----------
    name
        One of :data:`DIFFUSE_MODELS`.
    sigma_nm
        RMS displacement of the weight ``w`` (displacement, liquid_like, correlated).
    gamma_nm
        Liquid-like correlation length (nm).
    translation_nm
        Rigid-body RMS translations along the principal axes (nm).
    translation_axes
        (3, 3) rows: principal axes of the translation in the crystal frame (flattened
        to 9 numbers).
    libration_deg
        Rigid-body RMS rotation angle about each axis (degrees).
    correlation
        Neighbour-cell displacement correlation along a, b, c (correlated model).
    """

    name: str
    sigma_nm: float = 0.05
    gamma_nm: float = 0.0
    translation_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_axes: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    libration_deg: float = 0.0
    correlation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.name not in DIFFUSE_MODELS:
            raise ValueError(
                f"unknown diffuse model {self.name!r}; valid: {', '.join(DIFFUSE_MODELS)}"
            )
        if any(not 0 <= c < 1 for c in self.correlation):
            raise ValueError(f"correlations must lie in [0, 1), got {self.correlation}")

    def as_dict(self) -> dict[str, object]:
        """Plain values, for JSON and HDF5 attributes."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def translation_covariance_nm2(self) -> np.ndarray:
        """(3, 3) ``U`` (nm^2) in the crystal frame."""
        axes = np.array(self.translation_axes, dtype=np.float64).reshape(3, 3)
        return axes.T @ np.diag(np.square(self.translation_nm)) @ axes


def draw_diffuse_model(
    rng: np.random.Generator, name: str, *, sigma_nm: float | None = None
) -> DiffuseModel:
    """Draw a model's parameters (``name`` ``"random"`` draws the model too).

    Ranges: sigma 0.03-0.08 nm (unless given), gamma 0.3-1.5 nm (log-uniform), rigid-body
    translations 0.02-0.07 nm along random principal axes and libration 1-4 degrees,
    neighbour correlations either all in [0.3, 0.7] (halos) or one or two axes in
    [0.5, 0.8] and the others below 0.1 (streaks).  Always consumes 16 uniform numbers
    and one rotation, whatever the model, so later draws do not depend on it.
    """
    from hpcdiff.simulate.physics import random_rotation

    u = rng.random(16)
    axes = random_rotation(rng)
    if name == "random":
        name = DIFFUSE_MODELS[min(int(u[0] * len(DIFFUSE_MODELS)), len(DIFFUSE_MODELS) - 1)]
    sigma = float(sigma_nm) if sigma_nm is not None else 0.03 + 0.05 * float(u[1])
    if name == "displacement":
        return DiffuseModel(name, sigma_nm=sigma)
    if name == "liquid_like":
        gamma = float(math.exp(math.log(0.3) + u[2] * math.log(1.5 / 0.3)))
        return DiffuseModel(name, sigma_nm=sigma, gamma_nm=gamma)
    if name == "rigid_body":
        trans = tuple(float(0.02 + 0.05 * x) for x in u[3:6])
        return DiffuseModel(
            name,
            sigma_nm=sigma,
            translation_nm=(trans[0], trans[1], trans[2]),
            translation_axes=tuple(float(x) for x in axes.ravel()),
            libration_deg=float(1.0 + 3.0 * u[6]),
        )
    if name == "correlated":
        if u[7] < 0.4:
            c = [0.3 + 0.4 * float(x) for x in u[8:11]]
        else:
            n_high = 1 + int(u[11] < 0.5)
            order = np.argsort(u[12:15])
            c = [0.1 * float(x) for x in u[8:11]]
            for a in order[:n_high]:
                c[int(a)] = 0.5 + 0.3 * float(u[8 + int(a)])
        return DiffuseModel(name, sigma_nm=sigma, correlation=(c[0], c[1], c[2]))
    raise ValueError(f"unknown diffuse model {name!r}; valid: random, {', '.join(DIFFUSE_MODELS)}")


def model_grid(transform: MolecularTransform, model: DiffuseModel) -> MolecularTransform:
    """The model's smooth diffuse intensity on the transform's grid (a transform-like object).

    Parameters
    ----------
    transform
        The cell content's transform (with ``amplitude`` for ``rigid_body``).
    model
        The diffuse model.

    Returns
    -------
    MolecularTransform
        Same grid, ``intensity`` (m0, m1, m2) float32 = the model's diffuse intensity per
        unit strength (dimensionless, the ``|F|^2`` scale of ``transform``), >= 0.
    """
    q_abs = _node_q_abs(
        np.array(transform.intensity.shape), transform.oversampling, transform.basis
    )
    if model.name in ("displacement", "correlated"):
        values = transform.intensity * diffuse_weight(q_abs, sigma_nm=model.sigma_nm)
    elif model.name == "liquid_like":
        smooth = lorentzian_convolved(transform, gamma_nm=model.gamma_nm)
        values = smooth * diffuse_weight(q_abs, sigma_nm=model.sigma_nm)
    elif model.name == "rigid_body":
        values = rigid_body_intensity(transform, model)
    else:  # pragma: no cover - DiffuseModel validates names
        raise ValueError(model.name)
    del q_abs
    values = np.maximum(values, np.float32(0)).astype(np.float32, copy=False)
    return MolecularTransform(
        values, transform.oversampling, transform.basis, transform.atoms_nm, transform.scale
    )


def lorentzian_convolved(transform: MolecularTransform, *, gamma_nm: float) -> np.ndarray:
    """``|F|^2`` convolved with the unit-integral transform of ``exp(-r / gamma)``.

    The grid's inverse FFT is the Patterson function on the periodic box of
    ``oversampling`` cells; it is multiplied by ``exp(-|r| / gamma)`` (minimum-image
    distance) and transformed back.  The mean over the grid is kept (the kernel integrates
    to 1).

    Returns
    -------
    numpy.ndarray
        (m0, m1, m2) float32.
    """
    grid = transform.intensity
    shape = np.array(grid.shape)
    patterson = scipy.fft.ifftn(np.fft.ifftshift(grid), workers=1)
    # real-space box: oversampling cells along each axis; point j at fraction j / m
    real = np.linalg.inv(transform.basis).T * transform.oversampling  # rows: box vectors
    axes = [np.fft.fftfreq(int(n), d=1.0 / int(n)) / int(n) for n in shape]  # wrapped fraction
    f0, f1, f2 = np.meshgrid(*axes, indexing="ij", sparse=True)
    x = f0 * real[0, 0] + f1 * real[1, 0] + f2 * real[2, 0]
    y = f0 * real[0, 1] + f1 * real[1, 1] + f2 * real[2, 1]
    z = f0 * real[0, 2] + f1 * real[1, 2] + f2 * real[2, 2]
    r = np.sqrt(x * x + y * y + z * z)
    patterson *= np.exp(-r / gamma_nm).astype(np.float32)
    del r, x, y, z
    out = scipy.fft.fftn(patterson, workers=1)
    del patterson
    return np.fft.fftshift(out.real).astype(np.float32)


def rigid_body_intensity(transform: MolecularTransform, model: DiffuseModel) -> np.ndarray:
    """``<|F(R q)|^2>_R - |<F(R q)>_R|^2 exp(-4 pi^2 q^T U q)`` on the transform's grid.

    Rotations: 8 samples ``exp(+-v_k)`` with ``v_k`` Gaussian of RMS ``libration_deg`` per
    axis (4 draws from a fixed stream and their inverses), about the cell content's
    centroid (the transform's origin).  Computed inside the grid's inscribed sphere (which
    holds the detector's |q| range); 0 beyond.

    Returns
    -------
    numpy.ndarray
        (m0, m1, m2) float32, >= 0 up to rounding.
    """
    if transform.amplitude is None:
        raise ValueError("the rigid-body model needs the transform's complex amplitude")
    shape = np.array(transform.intensity.shape)
    os_ = transform.oversampling
    basis = transform.basis
    axes = [(np.arange(n) - n // 2) / os_ for n in shape]
    h, k, l_ = np.meshgrid(*axes, indexing="ij", sparse=True)
    hkl_t = np.empty((3, int(np.prod(shape))), dtype=np.float32)
    hkl_t[0] = np.broadcast_to(h, tuple(shape)).ravel()
    hkl_t[1] = np.broadcast_to(k, tuple(shape)).ravel()
    hkl_t[2] = np.broadcast_to(l_, tuple(shape)).ravel()
    del h, k, l_
    q_t = basis.T.astype(np.float32) @ hkl_t  # crystal-frame q, (3, n)
    del hkl_t
    # only the points inside the grid's inscribed sphere (|q| below every face): the
    # detector never reaches beyond it (q_max < Nyquist), and rotated points stay inside
    real = np.linalg.inv(basis).T  # rows a, b, c (nm)
    faces = (shape // 2 - 1) / os_ / np.linalg.norm(real, axis=1)
    radius = np.float32(0.98 * float(faces.min()))
    keep = np.flatnonzero(np.einsum("in,in->n", q_t, q_t) <= radius * radius)
    q_t = np.ascontiguousarray(q_t[:, keep])
    grids = (
        transform.intensity,
        np.ascontiguousarray(transform.amplitude.real),
        np.ascontiguousarray(transform.amplitude.imag),
    )
    rng = np.random.default_rng(12345)
    sigma = math.radians(model.libration_deg)
    vecs = rng.normal(scale=sigma, size=(4, 3))
    inv_b = np.linalg.inv(basis).astype(np.float32)
    n_points = q_t.shape[1]
    mean_i = np.zeros(n_points, dtype=np.float32)
    mean_re = np.zeros(n_points, dtype=np.float32)
    mean_im = np.zeros(n_points, dtype=np.float32)
    n = 0
    samples = (*vecs, *(-vecs)) if sigma > 0 else (np.zeros(3),)
    for v in samples:
        rot = _rotation_from_vector(v).astype(np.float32)
        # hkl of R q, (3, n) rows contiguous; continuous() takes its (n, 3) view
        hkl_r = (inv_b.T @ rot) @ q_t
        f2, re, im = transform.interpolate(hkl_r.T, grids)
        mean_i += f2
        mean_re += re
        mean_im += im
        del f2, re, im
        n += 1
        del hkl_r
    mean_i /= n
    mean_re /= n
    mean_im /= n
    cov = model.translation_covariance_nm2.astype(np.float32)
    uq = cov @ q_t
    quad = np.einsum("in,in->n", q_t, uq)
    del uq
    coherent = (mean_re**2 + mean_im**2) * np.exp(np.float32(-4 * math.pi**2) * quad)
    mean_i -= coherent
    out = np.zeros(int(np.prod(shape)), dtype=np.float32)
    out[keep] = np.maximum(mean_i, 0)
    return out.reshape(tuple(shape))


def _rotation_from_vector(v: np.ndarray) -> np.ndarray:
    """Rotation matrix ``exp([v]_x)`` (Rodrigues), angle ``|v|`` about ``v``."""
    angle = float(np.linalg.norm(v))
    if angle == 0:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


@dataclass(frozen=True)
class LatticeFactor:
    """Per-pixel lattice factor ``S(hkl)`` of the correlated model, from three 1D tables.

    Attributes
    ----------
    tables
        (3, LATTICE_TABLE_SIZE) float32: ``S_a`` at fractional parts ``-0.5 .. 0.5``.
    """

    tables: np.ndarray

    @classmethod
    def build(cls, correlation: tuple[float, float, float]) -> LatticeFactor:
        """Tables of ``(1 - c^2) / (1 + c^2 - 2 c cos 2 pi f)`` (mean 1 over a period)."""
        f = np.linspace(-0.5, 0.5, LATTICE_TABLE_SIZE)
        rows = []
        for c in correlation:
            rows.append((1 - c * c) / (1 + c * c - 2 * c * np.cos(2 * math.pi * f)))
        return cls(np.array(rows, dtype=np.float32))

    def __call__(self, hkl_t: np.ndarray) -> np.ndarray:
        """``S`` at fractional hkl.

        Parameters
        ----------
        hkl_t
            (3, n) float32 fractional Miller indices (rows h, k, l).

        Returns
        -------
        numpy.ndarray
            (n,) float32.
        """
        scale = np.float32(LATTICE_TABLE_SIZE - 1)
        out: np.ndarray | None = None
        for a in range(3):
            row = hkl_t[a]
            frac = row - np.rint(row)
            frac += np.float32(0.5)
            frac *= scale
            frac += np.float32(0.5)
            idx = frac.astype(np.int32)
            np.clip(idx, 0, LATTICE_TABLE_SIZE - 1, out=idx)
            vals = np.take(self.tables[a], idx)
            out = vals if out is None else out * vals
        assert out is not None
        return out


__all__ = [
    "DIFFUSE_MODELS",
    "DiffuseModel",
    "LatticeFactor",
    "draw_diffuse_model",
    "lorentzian_convolved",
    "model_grid",
    "rigid_body_intensity",
]
