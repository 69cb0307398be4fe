"""Report figures as functions of plain arrays, returning matplotlib Figures.

Only the object-oriented API (``matplotlib.figure.Figure``) is used: no pyplot state, no
display, safe in batch jobs and threads. Empty or all-NaN inputs give a figure that says
so instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

_CMAP_LABELS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def _no_data(ax, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _robust_limits(image: np.ndarray, *, lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(finite, [lo, hi])
    if vmax <= vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def frames_figure(
    raw: Sequence[np.ndarray],
    residual: Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
) -> Figure:
    """Example frames: raw (top row) and after background removal (bottom row).

    Parameters
    ----------
    raw, residual
        Sequences of assembled 2D images ``(H, W)``, NaN in gaps; same length.
    titles
        One title per frame, e.g. ``"diffuse p=0.93 (true: diffuse)"``.
    """
    n = len(raw)
    if n != len(residual):
        raise ValueError(f"{n} raw frames but {len(residual)} residual frames")
    fig = Figure(figsize=(3.2 * max(n, 1), 6.4))
    if n == 0:
        _no_data(fig.add_subplot(1, 1, 1), "no frames")
        return fig
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        for row, (image, cmap) in enumerate(((raw[i], "viridis"), (residual[i], "RdBu_r"))):
            ax = axes[row, i]
            image = np.asarray(image, dtype=np.float32)
            vmin, vmax = _robust_limits(image)
            if row == 1:  # residuals: symmetric limits around zero
                bound = max(abs(vmin), abs(vmax))
                vmin, vmax = -bound, bound
            ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0 and titles is not None:
                ax.set_title(titles[i], fontsize=9)
        axes[0, 0].set_ylabel("raw")
        axes[1, 0].set_ylabel("background removed")
    return fig


def pca_scatter_figure(
    components: np.ndarray, labels: np.ndarray, *, class_names: Sequence[str]
) -> Figure:
    """First two principal components, coloured by label.

    Parameters
    ----------
    components
        ``(n, >=2)`` PCA projections.
    labels
        ``(n,)`` integer class labels indexing ``class_names``.
    """
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    components = np.asarray(components)
    if components.ndim != 2 or components.shape[0] == 0 or components.shape[1] < 2:
        _no_data(ax)
        return fig
    labels = np.asarray(labels)
    for k, name in enumerate(class_names):
        sel = labels == k
        if sel.any():
            ax.scatter(
                components[sel, 0],
                components[sel, 1],
                s=10,
                alpha=0.7,
                color=_CMAP_LABELS[k % len(_CMAP_LABELS)],
                label=f"{name} ({sel.sum()})",
            )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8)
    return fig


def confusion_matrix_figure(cm: np.ndarray, *, class_names: Sequence[str]) -> Figure:
    """Confusion matrix: counts and row-normalised fractions (rows = true class)."""
    cm = np.asarray(cm, dtype=float)
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    if cm.size == 0:
        _no_data(ax)
        return fig
    row_sums = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{frac[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def accuracy_curve_figure(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    xlabel: str = "diffuse strength",
    ylabel: str = "accuracy",
) -> Figure:
    """Curves of a score against a variable, one per series (``name -> (x, y)``)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    plotted = False
    for name, (x, y) in series.items():
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            ax.plot(x[ok], y[ok], marker="o", label=name)
            plotted = True
    if not plotted:
        _no_data(ax)
        return fig
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def diffusion_map_figure(
    coords: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    aucs: Sequence[float] | None = None,
    title: str = "",
) -> Figure:
    """First two diffusion coordinates coloured by label; per-coordinate AUCs in the axis labels."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    coords = np.asarray(coords, float)
    if (
        coords.ndim != 2
        or coords.shape[0] == 0
        or coords.shape[1] < 2
        or not np.isfinite(coords).any()
    ):
        _no_data(ax)
        return fig
    labels = np.asarray(labels)
    for k, name in enumerate(class_names):
        sel = labels == k
        if sel.any():
            ax.scatter(
                coords[sel, 0],
                coords[sel, 1],
                s=10,
                alpha=0.7,
                color=_CMAP_LABELS[k % len(_CMAP_LABELS)],
                label=name,
            )
    axis_labels: list[str] = []
    for i in range(2):
        auc = f" (AUC {aucs[i]:.2f})" if aucs is not None and i < len(aucs) else ""
        axis_labels.append(f"diffusion coordinate {i + 1}{auc}")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def volume_slices_figure(
    volume: np.ndarray,
    *,
    truth: np.ndarray | None = None,
    axis_names: Sequence[str] = ("h", "k", "l"),
    extent: float | None = None,
) -> Figure:
    """Central slices of a 3D volume (log scale, NaN where no data), truth beside it if given."""
    volume = np.asarray(volume, float)
    rows = [("merged", volume)] + (
        [("truth", np.asarray(truth, float))] if truth is not None else []
    )
    fig = Figure(figsize=(10, 3.4 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    ext = None if extent is None else (-extent, extent, -extent, extent)
    for r, (name, vol) in enumerate(rows):
        if vol.ndim != 3 or vol.size == 0:
            for ax in axes[r]:
                _no_data(ax)
            continue
        centre = [s // 2 for s in vol.shape]
        slices = (vol[centre[0], :, :], vol[:, centre[1], :], vol[:, :, centre[2]])
        for a, (ax, sl) in enumerate(zip(axes[r], slices, strict=True)):
            with np.errstate(invalid="ignore", divide="ignore"):
                img = np.log10(np.where(sl > 0, sl, np.nan))
            if not np.isfinite(img).any():
                _no_data(ax, "no data in slice")
                continue
            vmin, vmax = _robust_limits(img)
            ax.imshow(img.T, origin="lower", cmap="magma", vmin=vmin, vmax=vmax, extent=ext)
            others = [n for i, n in enumerate(axis_names) if i != a]
            ax.set_title(f"{name}: {axis_names[a]} = 0", fontsize=9)
            ax.set_xlabel(others[0])
            ax.set_ylabel(others[1])
    return fig


def throughput_figure(rates: Mapping[str, float | Mapping[str, float]]) -> Figure:
    """Frames/s per stage (log axis); a value may be a mapping ``rank -> frames/s``."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    stages = [s for s, v in rates.items() if v is not None]
    if not stages:
        _no_data(ax)
        return fig
    series: dict[str, list[float]] = {}
    for s in stages:
        value = rates[s]
        per = value if isinstance(value, Mapping) else {"all": value}
        for key, rate in per.items():
            series.setdefault(str(key), [np.nan] * len(stages))[stages.index(s)] = float(rate)
    width = 0.8 / len(series)
    x = np.arange(len(stages))
    for i, (name, values) in enumerate(series.items()):
        label = None if name == "all" else f"rank {name}"
        ax.bar(x + i * width - 0.4 + width / 2, values, width=width, label=label)
    ax.set_xticks(x, stages, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("frames / s")
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def run_fraction_figure(runs: Sequence[str], fractions: Sequence[float]) -> Figure:
    """Diffuse fraction against run (NaN for runs without predictions)."""
    fig = Figure(figsize=(max(5, 0.4 * len(runs)), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    values = np.asarray(fractions, float)
    if len(runs) == 0 or not np.isfinite(values).any():
        _no_data(ax)
        return fig
    x = np.arange(len(runs))
    ax.plot(x, values, marker="o")
    missing = ~np.isfinite(values)
    if missing.any():
        ax.plot(x[missing], np.zeros(missing.sum()), "x", color="tab:red", label="no predictions")
        ax.legend(fontsize=8)
    ax.set_xticks(x, list(runs), rotation=60, fontsize=7)
    ax.set_ylabel("diffuse fraction")
    ax.set_ylim(0, max(0.05, float(np.nanmax(values)) * 1.2))
    ax.grid(alpha=0.3)
    return fig
