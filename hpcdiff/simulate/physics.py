"""Scattering physics of the simulated experiment, as pure functions of q-vector arrays.

Conventions (``docs/ARCHITECTURE.md``): q in nm^-1 without 2 pi (``|q| = 1/d``), lab frame
with the beam along +z, ``q = k_out - k_in`` with ``|k| = 1/lambda``.  The reciprocal basis
``A`` has rows ``a*, b*, c*`` (nm^-1, lab frame) so that ``q = hkl @ A``; with the crystal
frame basis ``B`` (rows ``a*, b*, c*``) and a rotation ``U``, ``A = B @ U.T`` (the column form
``A^T = U B^T`` of the usual ``UB`` matrix).

Intensities returned here are expected photon counts (float32) or photons per
micro-steradian before polarisation; detector effects live in
:mod:`hpcdiff.simulate.detector_effects`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft

TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- crystal


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly over SO(3) (Shoemake's uniform quaternions).

    Returns
    -------
    numpy.ndarray
        (3, 3) float64, orthonormal with determinant +1.
    """
    u1, u2, u3 = rng.random(3)
    a, b = math.sqrt(1.0 - u1), math.sqrt(u1)
    w, x, y, z = (
        a * math.sin(TWO_PI * u2),
        a * math.cos(TWO_PI * u2),
        b * math.sin(TWO_PI * u3),
        b * math.cos(TWO_PI * u3),
    )
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def cell_matrix(cell_nm: tuple[float, ...], angles_deg: tuple[float, ...]) -> np.ndarray:
    """Real-space cell vectors in the crystal frame (a along x, b in the xy plane).

    Parameters
    ----------
    cell_nm
        ``(a, b, c)`` in nm.
    angles_deg
        ``(alpha, beta, gamma)`` in degrees.

    Returns
    -------
    numpy.ndarray
        (3, 3) float64, rows ``a, b, c`` in nm.

    Raises
    ------
    ValueError
        If the angles do not form a cell.
    """
    a, b, c = cell_nm
    al, be, ga = np.radians(angles_deg)
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz2 = c * c - cx * cx - cy * cy
    if cz2 <= 0:
        raise ValueError(f"cell angles {tuple(angles_deg)} degrees do not form a unit cell")
    return np.array(
        [[a, 0.0, 0.0], [b * math.cos(ga), b * math.sin(ga), 0.0], [cx, cy, math.sqrt(cz2)]]
    )


def reciprocal_basis(cell_nm: tuple[float, ...], angles_deg: tuple[float, ...]) -> np.ndarray:
    """Reciprocal basis ``B`` in the crystal frame: rows ``a*, b*, c*`` in nm^-1 (no 2 pi).

    ``cell_matrix @ B.T`` is the identity.
    """
    return np.linalg.inv(cell_matrix(cell_nm, angles_deg)).T


def wavelength_nm(photon_energy_ev: float) -> float:
    """Photon wavelength in nm for an energy in eV."""
    return 1239.8419843320026 / photon_energy_ev


# --------------------------------------------------------------------------- molecule


@dataclass(frozen=True)
class MolecularTransform:
    """|F|^2 of one molecule sampled on a fractional-hkl grid, for interpolation.

    Attributes
    ----------
    intensity
        (m0, m1, m2) float32, dimensionless (scaled so that its mean over integer-hkl nodes
        with ``|q|`` in the ratio band is 1).  Index ``j`` along axis ``i`` is
        ``hkl_i = (j - m_i // 2) / oversampling``.
    oversampling
        Grid points per reciprocal-lattice unit (integer >= 1).
    basis
        (3, 3) float64 crystal-frame reciprocal basis ``B`` (rows ``a*, b*, c*``, nm^-1).
    atoms_nm
        (n_atoms, 3) float64 atom positions in the crystal frame (nm), origin at the box
        centre.
    scale
        The factor the raw ``|sum_j f_j exp(2 pi i q.r_j)|^2`` was divided by.
    amplitude
        (m0, m1, m2) complex64 ``F`` on the same grid (``|F|^2 = intensity``) when kept,
        else ``None``.
    """

    intensity: np.ndarray
    oversampling: int
    basis: np.ndarray
    atoms_nm: np.ndarray
    scale: float
    amplitude: np.ndarray | None = None

    @property
    def centre(self) -> np.ndarray:
        """(3,) int64 grid index of hkl = 0."""
        return np.array(self.intensity.shape, dtype=np.int64) // 2

    @classmethod
    def random(
        cls,
        cell_nm: tuple[float, ...],
        angles_deg: tuple[float, ...],
        *,
        rng: np.random.Generator,
        q_max_per_nm: float,
        n_atoms: int = 150,
        atom_sigma_nm: float = 0.08,
        oversampling: int = 2,
        normalise_band: tuple[float, float] | None = None,
    ) -> MolecularTransform:
        """Build a compact random molecule and its transform.

        ``n_atoms`` Gaussian blobs (RMS width ``atom_sigma_nm``) are placed uniformly in an
        ellipsoid spanning 70 % of the unit cell along each axis (see
        :meth:`from_atoms` for the transform).

        Parameters
        ----------
        cell_nm, angles_deg
            Unit cell (nm, degrees).
        rng
            Generator the atom positions are drawn from.
        q_max_per_nm
            Largest |q| (nm^-1) to cover.
        normalise_band
            ``(q_lo, q_hi)`` nm^-1: scale so that the mean over integer nodes in the band
            is 1.  Default: the whole covered range.
        """
        pts = rng.normal(size=(n_atoms, 3))
        pts *= (rng.random(n_atoms) ** (1 / 3) / np.linalg.norm(pts, axis=1))[:, None]
        return cls.from_atoms(
            0.35 * pts,
            cell_nm,
            angles_deg,
            q_max_per_nm=q_max_per_nm,
            atom_sigma_nm=atom_sigma_nm,
            oversampling=oversampling,
            normalise_band=normalise_band,
        )

    @classmethod
    def from_atoms(
        cls,
        frac: np.ndarray,
        cell_nm: tuple[float, ...],
        angles_deg: tuple[float, ...],
        *,
        q_max_per_nm: float,
        weights: np.ndarray | None = None,
        atom_sigma_nm: float = 0.08,
        oversampling: int = 2,
        normalise_band: tuple[float, float] | None = None,
        keep_amplitude: bool = False,
        max_grid_points: int = 64_000_000,
    ) -> MolecularTransform:
        """The transform of atoms given in fractional cell coordinates.

        The electron density (Gaussian atoms of RMS ``atom_sigma_nm``, weights
        ``weights``) is painted on a periodic box of ``oversampling`` cells per axis and
        Fourier transformed, giving ``|F|^2`` at fractional hkl steps of
        ``1 / oversampling`` up to ``q_max_per_nm``.  The atoms should span less than
        ``oversampling`` cells along each axis (the transform of a cell content that
        reaches beyond is aliased).

        Parameters
        ----------
        frac
            (n, 3) fractional coordinates, centred near 0 (|frac| < oversampling / 2).
        weights
            (n,) scattering weights (default 1 each).
        keep_amplitude
            Also keep the complex amplitude ``F`` (for rigid-body averages).
        max_grid_points
            Refuse grids larger than this (memory), naming the cell and |q| range.

        Raises
        ------
        ValueError
            When the grid would exceed ``max_grid_points``.
        """
        real = cell_matrix(cell_nm, angles_deg)
        basis = np.linalg.inv(real).T
        os_ = int(oversampling)
        lengths = np.linalg.norm(real, axis=1)
        # Nyquist frequency of the density grid: high enough that the aliased image of
        # the atoms' Gaussian form factor at |q| <= q_max is below 1e-3 of the true value
        q_nyquist = max(
            1.05 * q_max_per_nm,
            0.5
            * (
                q_max_per_nm
                + math.sqrt(q_max_per_nm**2 + math.log(1e3) / (2 * math.pi**2 * atom_sigma_nm**2))
            ),
        )
        h_max = q_nyquist * lengths + 1.0
        m = 2 * (np.ceil(h_max * os_).astype(int) + 1)
        if int(np.prod(m)) > max_grid_points:
            raise ValueError(
                f"the molecular transform of cell {tuple(round(x, 2) for x in cell_nm)} nm up "
                f"to |q| = {q_max_per_nm:.2f} nm^-1 needs a {m[0]}x{m[1]}x{m[2]} grid (more "
                f"than {max_grid_points} points); use a smaller cell or a lower q range"
            )
        frac = np.asarray(frac, dtype=np.float64)
        atoms = frac @ real
        density = _paint_gaussians(frac / os_ + 0.5, real * os_, m, atom_sigma_nm, weights)
        amp = scipy.fft.fftn(np.fft.ifftshift(density), workers=1)
        del density
        amp = np.fft.fftshift(amp)
        raw = (amp.real**2 + amp.imag**2).astype(np.float32, copy=False)
        # normalise: mean over integer nodes in the band
        grid = _node_q_abs(m, os_, basis)
        lo, hi = normalise_band if normalise_band is not None else (0.0, q_max_per_nm)
        sl = tuple(slice(c % os_, None, os_) for c in m // 2)
        node_q = grid[sl]
        node_i = raw[sl]
        sel = (node_q >= lo) & (node_q < hi)
        scale = float(node_i[sel].mean()) if sel.any() else float(raw.mean())
        amplitude = None
        if keep_amplitude:
            amplitude = (amp / np.float32(math.sqrt(scale))).astype(np.complex64)
        del amp
        return cls(raw / np.float32(scale), os_, basis, atoms, scale, amplitude)

    def with_resolution_limit(self, q_limit_per_nm: float) -> MolecularTransform:
        """The transform times a crystal's resolution falloff ``exp(-ln 2 (|q| / q_limit)^16)``.

        Half the intensity at ``q_limit_per_nm`` (nm^-1), below 1e-3 beyond
        ``1.17 q_limit``: Bragg spots and every diffuse model fade smoothly there (disorder
        beyond the crystal's resolution), instead of ending at the grid's box.
        """
        q = _node_q_abs(np.array(self.intensity.shape), self.oversampling, self.basis)
        window = np.exp(np.float32(-math.log(2.0)) * (q / np.float32(q_limit_per_nm)) ** 16)
        del q
        amplitude = None
        if self.amplitude is not None:
            amplitude = (self.amplitude * np.sqrt(window)).astype(np.complex64)
        return MolecularTransform(
            (self.intensity * window).astype(np.float32),
            self.oversampling,
            self.basis,
            self.atoms_nm,
            self.scale,
            amplitude,
        )

    def continuous(self, hkl: np.ndarray) -> np.ndarray:
        """Trilinear interpolation of |F|^2 at fractional hkl.

        Parameters
        ----------
        hkl
            (..., 3) float32 or float64 fractional Miller indices.

        Returns
        -------
        numpy.ndarray
            (...) float32; 0 outside the grid.
        """
        return self.interpolate(hkl, (self.intensity,))[0]

    def interpolate(self, hkl: np.ndarray, grids: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """Trilinear interpolation of several grids of this transform's layout at once.

        The cell indices and weights are computed once for all grids.

        Parameters
        ----------
        hkl
            (..., 3) fractional Miller indices (a transposed view of a (3, n) array is
            fastest).
        grids
            Arrays of the shape of :attr:`intensity` (float32).

        Returns
        -------
        list of numpy.ndarray
            One (...) float32 array per grid; 0 outside the grid.
        """
        hkl = np.asarray(hkl)
        lead = hkl.shape[:-1]
        cols = hkl.reshape(-1, 3).T  # (3, n); contiguous rows when hkl is a transposed view
        m0, m1, m2 = self.intensity.shape
        os_ = np.float32(self.oversampling)
        c = self.centre.astype(np.float32)
        x = cols[0] * os_ + c[0]
        y = cols[1] * os_ + c[1]
        z = cols[2] * os_ + c[2]
        everywhere = x.size == 0 or (
            x.min() >= 0
            and y.min() >= 0
            and z.min() >= 0
            and x.max() < m0 - 1
            and y.max() < m1 - 1
            and z.max() < m2 - 1
        )
        inside = None
        if not everywhere:  # NaN or beyond the grid: evaluate at the origin, zero below
            inside = (x >= 0) & (x < m0 - 1) & (y >= 0) & (y < m1 - 1) & (z >= 0) & (z < m2 - 1)
            x = np.where(inside, x, np.float32(0))
            y = np.where(inside, y, np.float32(0))
            z = np.where(inside, z, np.float32(0))
        ix, iy, iz = x.astype(np.int32), y.astype(np.int32), z.astype(np.int32)
        fx, fy, fz = x - ix, y - iy, z - iz
        s1, s2 = m1 * m2, m2
        base = ix * np.int32(s1)
        base += iy * np.int32(s2)
        base += iz
        del ix, iy, iz, x, y, z
        results = []
        for grid in grids:
            flat = grid.reshape(-1)

            def lerp_z(offset: int, flat: np.ndarray = flat) -> np.ndarray:
                v0 = np.take(flat, base + offset) if offset else np.take(flat, base)
                v1 = np.take(flat, base + (offset + 1))
                v1 -= v0
                v1 *= fz
                v1 += v0
                return v1

            def lerp_y(offset: int) -> np.ndarray:
                a = lerp_z(offset)
                b = lerp_z(offset + s2)
                b -= a
                b *= fy
                b += a
                return b

            out = lerp_y(0)
            upper = lerp_y(s1)
            upper -= out
            upper *= fx
            out += upper
            if inside is not None:
                out[~inside] = 0
            results.append(out.reshape(lead))
        return results

    def at_nodes(self, hkl_int: np.ndarray) -> np.ndarray:
        """|F|^2 at integer Miller indices (exact grid points).

        Parameters
        ----------
        hkl_int
            (..., 3) integer (or integral float) Miller indices.

        Returns
        -------
        numpy.ndarray
            (...) float32; 0 for nodes outside the grid.
        """
        idx = np.asarray(hkl_int).astype(np.int64) * self.oversampling + self.centre
        shape = np.array(self.intensity.shape)
        inside = np.all((idx >= 0) & (idx < shape), axis=-1)
        idx = np.where(inside[..., None], idx, 0)
        vals = self.intensity[idx[..., 0], idx[..., 1], idx[..., 2]]
        return np.where(inside, vals, np.float32(0))

    def radial_average(self, q_edges: np.ndarray, *, sigma_nm: float | None = None) -> np.ndarray:
        """Spherical average of |F|^2 (times the diffuse weight if ``sigma_nm``) in |q| shells.

        Parameters
        ----------
        q_edges
            (n + 1,) increasing shell edges in nm^-1.
        sigma_nm
            Displacement disorder; when given, averages ``diffuse_weight * |F|^2``.

        Returns
        -------
        numpy.ndarray
            (n,) float64 mean over the grid points of each shell (NaN for empty shells).
        """
        q = _node_q_abs(np.array(self.intensity.shape), self.oversampling, self.basis)
        values = self.intensity
        if sigma_nm is not None:
            values = values * diffuse_weight(q, sigma_nm=sigma_nm)
        q_edges = np.asarray(q_edges, dtype=np.float64)
        n = len(q_edges) - 1
        steps = np.diff(q_edges)
        if np.allclose(steps, steps[0], rtol=1e-9):  # uniform shells: one pass, no search
            which = np.floor((q.ravel() - q_edges[0]) / steps[0]).astype(np.int64)
        else:
            which = np.searchsorted(q_edges, q.ravel(), side="right") - 1
        ok = (which >= 0) & (which < n)
        sums = np.bincount(which[ok], weights=values.ravel()[ok], minlength=n)
        counts = np.bincount(which[ok], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts


def _node_q_abs(shape: np.ndarray, oversampling: int, basis: np.ndarray) -> np.ndarray:
    """|q| (nm^-1, float32) of every point of a fractional-hkl grid."""
    axes = [(np.arange(n) - n // 2) / oversampling for n in shape]
    h, k, l_ = np.meshgrid(*axes, indexing="ij", sparse=True)
    qx = h * basis[0, 0] + k * basis[1, 0] + l_ * basis[2, 0]
    qy = h * basis[0, 1] + k * basis[1, 1] + l_ * basis[2, 1]
    qz = h * basis[0, 2] + k * basis[1, 2] + l_ * basis[2, 2]
    return np.sqrt(qx**2 + qy**2 + qz**2).astype(np.float32)


def _paint_gaussians(
    frac: np.ndarray,
    box: np.ndarray,
    shape: np.ndarray,
    sigma_nm: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of normalised 3D Gaussians on a periodic grid of a (possibly oblique) box.

    Parameters
    ----------
    frac
        (n, 3) fractional positions in the box, in [0, 1).
    box
        (3, 3) box vectors (rows) in nm.
    shape
        (3,) grid points along each box vector.
    sigma_nm
        RMS width of each Gaussian.
    weights
        (n,) weight of each Gaussian (default 1).
    """
    shape = np.asarray(shape, dtype=np.int64)
    density = np.zeros(tuple(shape), dtype=np.float32)
    step = box / shape[:, None]  # voxel edge vectors, nm
    # half-width in voxels along each axis: 4 sigma over the spacing between grid planes
    plane = 1.0 / np.linalg.norm(np.linalg.inv(step).T, axis=1)
    half = np.ceil(4.0 * sigma_nm / plane).astype(int)
    offs = [np.arange(-h, h + 1) for h in half]
    grid_off = np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1)  # (p, q, r, 3)
    for j, pos in enumerate(frac):
        centre = pos * shape
        base = np.floor(centre).astype(np.int64)
        d_vox = grid_off + (base - centre)  # voxel offsets from the atom
        d_nm = d_vox @ step
        g = np.exp(-0.5 * np.einsum("...i,...i->...", d_nm, d_nm) / sigma_nm**2)
        idx = [(base[i] + offs[i]) % shape[i] for i in range(3)]
        density[np.ix_(*idx)] += g if weights is None else g * weights[j]
    return density


# --------------------------------------------------------------------------- Bragg


def bragg_photons(
    q: np.ndarray,
    reciprocal: np.ndarray,
    *,
    wavelength_nm: float,
    transform: MolecularTransform,
    lattice_scale: float,
    pixel_q_area: np.ndarray,
    spot_sigma_per_nm: float,
    excitation_sigma_per_nm: float,
    hkl: np.ndarray | None = None,
) -> np.ndarray:
    """Expected Bragg photons per pixel.

    Each pixel is assigned its nearest reciprocal-lattice node ``n = rint(q @ inv(A))``.  A
    node at ``G = n @ A`` lies a distance ``eps = |G + k_in| - |k_in|`` (excitation error)
    from the Ewald sphere; its recorded fraction is the partiality
    ``exp(-eps^2 / (2 sigma_eps^2))``.  The spot is a 2D Gaussian of RMS
    ``spot_sigma_per_nm`` in the sphere's tangent plane, normalised to integrate to
    ``lattice_scale * |F(n)|^2 * partiality`` photons.  Integration over a pixel is
    approximated by widening the spot variance by the pixel's own (``area / 12`` per axis),
    so pixels larger than the spot still conserve its photons.

    Parameters
    ----------
    q
        (..., 3) float32 scattering vectors (nm^-1).
    reciprocal
        (3, 3) ``A``, rows ``a*, b*, c*`` (nm^-1, lab frame).
    wavelength_nm
        Photon wavelength.
    transform
        Molecular transform giving ``|F(n)|^2``.
    lattice_scale
        Photons of a fully recorded reflection with ``|F|^2 = 1``.
    pixel_q_area
        (...) float32 area of each pixel on the Ewald sphere (nm^-2) = solid angle /
        lambda^2, times the pixel's polarisation factor (which scales the photons).
    spot_sigma_per_nm, excitation_sigma_per_nm
        Spot width in the detector plane and partiality width (nm^-1).
    hkl
        (..., 3) float32 ``q @ inv(A)`` when already computed.

    Returns
    -------
    numpy.ndarray
        (...) float32 expected photons.
    """
    shape = q.shape[:-1]
    qt = np.asarray(q, dtype=np.float32).reshape(-1, 3).T  # (3, n)
    A = np.asarray(reciprocal, dtype=np.float64)
    A32 = A.astype(np.float32)
    if hkl is None:
        hkl_t = np.linalg.inv(A).T.astype(np.float32) @ qt
    else:
        hkl_t = np.asarray(hkl, dtype=np.float32).reshape(-1, 3).T
    area_all = np.asarray(pixel_q_area, dtype=np.float32).reshape(-1)
    max_spot2 = spot_sigma_per_nm**2 + float(area_all.max()) / 12.0
    # pixels within 4 sigma (spot or partiality, whichever is wider) of their nearest node;
    # beyond it a spot holds exp(-8) = 3e-4 of its photons
    cut = 16.0 * max(max_spot2, excitation_sigma_per_nm**2)
    # cheap pre-selection axis by axis: |frac_i| = |d . col_i(inv A)| <= |d| |col_i(inv A)|
    bounds = math.sqrt(cut) * np.linalg.norm(np.linalg.inv(A), axis=0)
    candidates: np.ndarray | None = None
    for i in np.flatnonzero(bounds < 0.5):
        row = hkl_t[i]
        f = row - np.rint(row)
        np.abs(f, out=f)
        inside = f < np.float32(bounds[i])
        candidates = inside if candidates is None else candidates & inside
    out = np.zeros(qt.shape[1], dtype=np.float32)
    idx = np.flatnonzero(candidates) if candidates is not None else np.arange(qt.shape[1])
    if idx.size == 0:
        return out.reshape(shape)
    hkl_c = hkl_t[:, idx]
    frac = hkl_c - np.rint(hkl_c)
    d = A32.T @ frac  # (3, m) q minus its nearest node, nm^-1
    d2 = d[0] * d[0]
    d2 += d[1] * d[1]
    d2 += d[2] * d[2]
    keep = np.flatnonzero(d2 < cut)
    near = idx[keep]
    if near.size == 0:
        return out.reshape(shape)
    k = np.float32(1.0 / wavelength_nm)
    qn, dn, d2n = qt[:, near].T, d[:, keep].T, d2[keep]
    Gn = qn - dn
    g_plus_k = Gn.copy()
    g_plus_k[:, 2] += k
    norm_gk = np.linalg.norm(g_plus_k, axis=1)
    eps = (np.einsum("ij,ij->i", Gn, Gn) + 2 * k * Gn[:, 2]) / (norm_gk + k)
    # nodes more than 4 sigma off the Ewald sphere record nothing: drop them first
    on_sphere = np.abs(eps) < np.float32(4.0 * excitation_sigma_per_nm)
    near, qn, dn, d2n, eps = (
        near[on_sphere],
        qn[on_sphere],
        dn[on_sphere],
        d2n[on_sphere],
        eps[on_sphere],
    )
    if near.size == 0:
        return out.reshape(shape)
    n = np.rint(hkl_t[:, near]).T  # (m, 3) nearest nodes
    normal = qn.copy()
    normal[:, 2] += k
    normal /= k
    d_norm = np.einsum("ij,ij->i", dn, normal)
    d_perp2 = np.maximum(d2n - d_norm**2, 0)
    area = area_all[near]
    s2 = np.float32(spot_sigma_per_nm**2) + area / np.float32(12.0)
    e2 = np.float32(excitation_sigma_per_nm**2)
    f2 = transform.at_nodes(n)
    out[near] = (
        np.float32(lattice_scale)
        * f2
        * np.exp(-0.5 * eps**2 / e2)
        * np.exp(-0.5 * d_perp2 / s2)
        * area
        / (np.float32(TWO_PI) * s2)
    )
    # the origin is not a reflection (it is the direct beam)
    out[near[np.all(n == 0, axis=1)]] = 0
    return out.reshape(shape)


# --------------------------------------------------------------------------- diffuse


def diffuse_weight(q_abs: np.ndarray, *, sigma_nm: float) -> np.ndarray:
    """Weight ``1 - exp(-(2 pi |q| sigma)^2)`` of displacement-disorder diffuse scattering.

    This is the brief's ``1 - exp(-q^2 sigma^2)`` with ``q`` in the 2 pi convention.

    Parameters
    ----------
    q_abs
        (...) |q| in nm^-1 (no 2 pi).
    sigma_nm
        RMS displacement (nm).

    Returns
    -------
    numpy.ndarray
        (...) same dtype as ``q_abs`` (float32 stays float32), in [0, 1).
    """
    q_abs = np.asarray(q_abs)
    if q_abs.dtype.kind != "f":
        q_abs = q_abs.astype(np.float64)
    c = q_abs.dtype.type(-((TWO_PI * sigma_nm) ** 2))
    return -np.expm1(c * q_abs * q_abs)


# --------------------------------------------------------------------------- background


@dataclass(frozen=True)
class BackgroundParams:
    """Shape of one shot's isotropic background (photons per micro-steradian).

    Attributes
    ----------
    jet_scale
        Liquid-jet thickness relative to nominal; scales the whole solvent term.
    water_amplitude
        Water-ring peak (photons / usr) for a nominal jet.
    water_q_per_nm, water_width_per_nm
        Ring centre and RMS width (nm^-1, no 2 pi).
    air_level
        Air scatter at |q| = 0 (photons / usr), decaying as ``exp(-|q| / air_decay_per_nm)``.
    air_decay_per_nm
        Decay length of the air scatter (nm^-1).
    halo_level, halo_width_per_nm
        Low-q halo (photons / usr at |q| = 0, Gaussian RMS width in nm^-1): small-angle
        scattering of the jet, sample debris and beamline; 0 = none.
    streak_level
        Peak of the jet streak (photons / usr; its shape is the experiment's, see
        :class:`hpcdiff.simulate.randomise.BackgroundFamily`); 0 = none.  Not part of
        :func:`background_per_usr` (it is anisotropic).
    """

    jet_scale: float = 1.0
    water_amplitude: float = 2.5
    water_q_per_nm: float = 3.1
    water_width_per_nm: float = 0.33
    air_level: float = 1.0
    air_decay_per_nm: float = 0.8
    halo_level: float = 0.0
    halo_width_per_nm: float = 0.6
    streak_level: float = 0.0

    def as_array(self) -> np.ndarray:
        """(9,) float64 in field order, for files."""
        return np.array([getattr(self, f.name) for f in dataclasses.fields(self)])


NOMINAL_BACKGROUND = BackgroundParams()
"""Median shot: every random parameter at its median."""


def draw_background(rng: np.random.Generator) -> BackgroundParams:
    """One shot's background shape; medians equal :data:`NOMINAL_BACKGROUND`.

    Jet thickness log-normal (sigma 0.35), ring centre normal 3.1 +- 0.05 nm^-1 clipped to
    [3.0, 3.2], ring width 0.33 +- 0.03 nm^-1, air level log-normal (sigma 0.5), air decay
    uniform in [0.55, 1.05] nm^-1 (median 0.8).  Consumes exactly four normal draws and one
    uniform draw.
    """
    z = rng.normal(size=4)
    u = rng.random()
    nom = NOMINAL_BACKGROUND
    return BackgroundParams(
        jet_scale=float(math.exp(0.35 * z[0])),
        water_amplitude=nom.water_amplitude,
        water_q_per_nm=float(np.clip(nom.water_q_per_nm + 0.05 * z[1], 3.0, 3.2)),
        water_width_per_nm=float(max(nom.water_width_per_nm + 0.03 * z[2], 0.2)),
        air_level=float(nom.air_level * math.exp(0.5 * z[3])),
        air_decay_per_nm=float(0.55 + 0.5 * u),
    )


def background_per_usr(q_abs: np.ndarray, params: BackgroundParams) -> np.ndarray:
    """Isotropic background (photons per micro-steradian, before polarisation).

    ``jet * A_w * (ring(q0, w) + 0.3 ring(1.45 q0, 1.5 w) + 0.15) + air * exp(-q / q_air)
    + halo * exp(-q^2 / (2 w_halo^2))``: the water ring, its weak second peak, a flat solvent
    (Compton) floor, air scatter and the low-q halo.

    Parameters
    ----------
    q_abs
        (...) float32 |q| in nm^-1.
    params
        The shot's background shape.

    Returns
    -------
    numpy.ndarray
        (...) float32.
    """
    q = np.asarray(q_abs, dtype=np.float32)
    f = np.float32
    q0, w = f(params.water_q_per_nm), f(params.water_width_per_nm)
    ring = np.exp(f(-0.5) * ((q - q0) / w) ** 2)
    ring += f(0.3) * np.exp(f(-0.5) * ((q - f(1.45) * q0) / (f(1.5) * w)) ** 2)
    ring += f(0.15)
    solvent = f(params.jet_scale * params.water_amplitude) * ring
    air = f(params.air_level) * np.exp(-q / f(params.air_decay_per_nm))
    out = solvent + air
    if params.halo_level > 0:
        out += f(params.halo_level) * np.exp(f(-0.5) * (q / f(params.halo_width_per_nm)) ** 2)
    return out


__all__ = [
    "NOMINAL_BACKGROUND",
    "BackgroundParams",
    "MolecularTransform",
    "background_per_usr",
    "bragg_photons",
    "cell_matrix",
    "diffuse_weight",
    "draw_background",
    "random_rotation",
    "reciprocal_basis",
    "wavelength_nm",
]
