"""``hpcdiff inspect PATH [--json]``: what a geometry, stream or CXI/HDF5 file holds.

* ``.geom``: panels, pixels, slab shape, assembled image shape, largest radius in pixels,
  where frames and per-frame values are read from;
* ``.stream``: chunks, hits, crystals, reflections, median cell, lattice types;
* CXI/HDF5 (``.cxi``, ``.h5``, ``.hdf5``, ...): datasets with shapes, dtypes, chunks and
  compression filters, the frame dataset and frame count;
* hpcdiff's own files: labels (frames per class), features (layer, weights, pretrained),
  predictions (frames per predicted class, diffuse scores, model), models (``.npz``: classes,
  PCA size, training frames, layer, weights);
* psana geometry-def files (``.data``): objects, sensors, slab layout, pixel extent;
* frame sources beside CXI (:mod:`hpcdiff.io.sources`): a European XFEL run directory
  (detector, modules, trains, frames per train, frame ids), an NXmx file (frames, dtype,
  distance, beam centre, pixel size, modules from its NXtransformations), an ``.xtc2``
  file (psana2: events, detector, frame shape).

The type comes from the suffix, else from the file's first bytes (HDF5 signature, or a
``CrystFEL stream format`` first line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hpcdiff.errors import FormatError

HDF5_SUFFIXES = (".cxi", ".h5", ".hdf5", ".hdf", ".nxs")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a .geom, .stream, CXI/HDF5, psana .data or hpcdiff file",
        description="Summarise a CrystFEL geometry (.geom), a CrystFEL stream (.stream) or a "
        "CXI/HDF5 frame file: a table, or JSON with --json.",
    )
    p.add_argument("path", help=".geom, .stream, or CXI/HDF5 file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    kind = file_kind(path)
    if kind in SOURCE_KINDS:
        from hpcdiff.io.sources import describe_source

        summary = {"path": str(path), "kind": kind, **describe_source(path, kind=kind)}
    elif kind in OWN_KINDS:
        from hpcdiff.io.summaries import summarise_own_file

        summary = summarise_own_file(path, kind)
    else:
        summary = {"geometry": summarise_geometry_file, "stream": summarise_stream_file}.get(
            kind, summarise_hdf5_file
        )(path)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(format_summary(summary))
    return 0


SOURCE_KINDS = ("euxfel", "nxmx", "psana2")
_SOURCE_TITLES = {
    "euxfel": "European XFEL run directory",
    "nxmx": "NXmx file",
    "psana2": "psana2 XTC2 file",
}
OWN_KINDS = ("labels", "features", "predictions", "model", "psana-geometry")
_OWN_TITLES = {
    "labels": "hpcdiff labels file",
    "features": "hpcdiff features file",
    "predictions": "hpcdiff predictions file",
    "model": "hpcdiff model",
    "psana-geometry": "psana geometry",
}


def file_kind(path: Path) -> str:
    """``"geometry"``, ``"stream"``, ``"hdf5"``, or one of :data:`OWN_KINDS`.

    Raises
    ------
    FormatError
        When the file is missing or its type cannot be told.
    """
    if path.is_dir():
        from hpcdiff.io.sources import detect_kind

        return detect_kind(path)  # "euxfel", or a FormatError saying what a folder needs
    if not path.is_file():
        raise FormatError(path, "file not found" if not path.exists() else "not a regular file")
    from hpcdiff.io.sources.nxmx import is_nxmx
    from hpcdiff.io.summaries import is_psana_geometry, own_file_kind

    if path.suffix.lower() == ".xtc2":
        return "psana2"

    suffix = path.suffix.lower()
    if suffix == ".geom":
        return "geometry"
    if suffix == ".stream":
        return "stream"
    if suffix in (".npz", ".csv", ".lst"):
        own = own_file_kind(path)
        if own is not None:
            return own
    with open(path, "rb") as fh:
        head = fh.read(64)
    if suffix in HDF5_SUFFIXES or head.startswith(_HDF5_SIGNATURE):
        return own_file_kind(path) or ("nxmx" if is_nxmx(path) else "hdf5")
    if is_psana_geometry(path):
        return "psana-geometry"
    if head.startswith(b"CrystFEL stream format"):
        return "stream"
    raise FormatError(
        path,
        f"unknown file type {suffix or '(no suffix)'}; expected a CrystFEL geometry (.geom), "
        f"a CrystFEL stream (.stream), a CXI/HDF5 file ({', '.join(HDF5_SUFFIXES)}), a psana "
        "geometry-def file (.data) or an hpcdiff model (.npz)",
    )


# --------------------------------------------------------------------------- summaries


def summarise_geometry_file(path: Path) -> dict[str, Any]:
    """Panels, pixels, slab and assembled shapes, largest radius of a ``.geom`` file."""
    import numpy as np

    from hpcdiff.geometry import fixed_shift_m, pixel_map, pixel_positions_m
    from hpcdiff.io.geom import read_geom

    geom = read_geom(path)
    positions = pixel_positions_m(geom, clen_m=0.0, shift_m=fixed_shift_m(geom))
    radius_px = 0.0
    for p in geom.panels:
        xy = positions[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1, :2]
        radius_px = max(radius_px, float(np.max(np.hypot(xy[..., 0], xy[..., 1]))) * p.res)
    panel = geom.panels[0]
    res = sorted({p.res for p in geom.panels})
    return {
        "path": str(path),
        "kind": "geometry",
        "panels": len(geom.panels),
        "pixels": geom.n_pixels,
        "slab_shape": list(geom.slab_shape),
        "assembled_shape": list(pixel_map(geom, positions_m=positions).shape),
        "largest_radius_px": round(radius_px, 2),
        "res_px_per_m": res[0] if len(res) == 1 else [res[0], res[-1]],
        "bad_regions": len(geom.bad_regions),
        "data": panel.data,
        "dim_structure": [str(d) for d in panel.dim_structure],
        "clen": panel.clen,
        "coffset_m": panel.coffset_m,
        "photon_energy": geom.photon_energy,
        "masks": sorted(
            {
                f"{m.data}" + (f" in {m.file}" if m.file else "")
                for p in geom.panels
                for m in p.masks
            }
        ),  # fmt: skip
        "flags": sorted({f"{f.kind} {f.value:g}" for p in geom.panels for f in p.flags}),
        "mask_edge_pixels": sorted({p.mask_edge_pixels for p in geom.panels}),
        "saturation_maps": sum(p.saturation_map is not None for p in geom.panels),
        "detector_shift": None if geom.detector_shift is None else list(geom.detector_shift),
    }


def summarise_stream_file(path: Path) -> dict[str, Any]:
    """Chunks, hits, crystals and the median cell of a ``.stream`` file."""
    from hpcdiff.io.geom import parse_geom
    from hpcdiff.io.stream import read_stream, summarise_stream

    stream = read_stream(path)
    summary = {"path": str(path), "kind": "stream", **summarise_stream(stream)}
    if stream.geometry_text is not None:
        try:
            geom = parse_geom(stream.geometry_text, source=f"{path} (embedded geometry)")
        except (FormatError, ValueError) as exc:
            summary["geometry"] = {"error": str(exc)}
        else:
            summary["geometry"] = {"panels": len(geom.panels), "slab_shape": list(geom.slab_shape)}
    return summary


def summarise_hdf5_file(path: Path) -> dict[str, Any]:
    """Datasets, frames, shapes, dtypes and compression of a CXI/HDF5 file."""
    from hpcdiff.io.cxi import summarise_cxi

    return {"kind": "hdf5", **summarise_cxi(path)}


# --------------------------------------------------------------------------- text


def _shape(shape: Any) -> str:
    return " x ".join(str(v) for v in shape) if shape else "scalar"


def _rows(rows: list[tuple[str, Any]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"  {k:<{width}}  {v}" for k, v in rows]


def _embedded(geometry: dict[str, Any] | None) -> str:
    if geometry is None:
        return "none"
    if "error" in geometry:
        return f"embedded, unreadable: {geometry['error']}"
    return f"embedded, {geometry['panels']} panel(s), slab {_shape(geometry['slab_shape'])}"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "-"
    return "-" if value is None else str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable table of a summary from one of the ``summarise_*_file`` functions."""
    kind = summary["kind"]
    if kind in SOURCE_KINDS:
        return "\n".join(
            [
                f"{summary['path']}: {_SOURCE_TITLES[kind]}",
                *_rows(
                    [
                        (k.replace("_", " "), _shape(v) if k.endswith("shape") else _value(v))
                        for k, v in summary.items()
                        if k not in ("path", "kind", "inputs")
                    ]
                ),
            ]
        )
    if kind in OWN_KINDS:
        from hpcdiff.io.summaries import format_rows

        return "\n".join([f"{summary['path']}: {_OWN_TITLES[kind]}", *_rows(format_rows(summary))])
    lines = [
        f"{summary['path']}: "
        + {"geometry": "CrystFEL geometry", "stream": "CrystFEL stream"}.get(kind, "HDF5 file")
    ]
    if kind == "geometry":
        lines += _rows(
            [
                ("panels", summary["panels"]),
                ("pixels", f"{summary['pixels']:,}"),
                ("slab shape", f"{_shape(summary['slab_shape'])} (n_ss x n_fs)"),
                ("assembled shape", f"{_shape(summary['assembled_shape'])} (H x W)"),
                ("largest radius", f"{summary['largest_radius_px']:.1f} px"),
                ("res", f"{summary['res_px_per_m']} px/m"),
                ("bad regions", summary["bad_regions"]),
                ("data", f"{summary['data']} dims {summary['dim_structure']}"),
                ("clen", f"{summary['clen']} (+ coffset {summary['coffset_m']} m)"),
                ("photon energy", summary["photon_energy"]),
                ("masks", ", ".join(summary["masks"]) or "none"),
                ("flags", ", ".join(summary["flags"]) or "none"),
                ("edge pixels masked", "/".join(map(str, summary["mask_edge_pixels"]))),
                ("saturation maps", f"{summary['saturation_maps']} panel(s)"),
                ("detector shift", summary["detector_shift"] or "none"),
            ]
        )
    elif kind == "stream":
        cell = summary["median_cell"]
        cell_text = "none"
        if cell:
            cell_text = (
                f"{cell['a_nm']:.4f} {cell['b_nm']:.4f} {cell['c_nm']:.4f} nm, "
                f"{cell['alpha_deg']:.2f} {cell['beta_deg']:.2f} {cell['gamma_deg']:.2f} deg"
            )
        energy = summary["photon_energy_ev"]
        lines += _rows(
            [
                ("chunks", summary["chunks"]),
                ("hits", summary["hits"]),
                ("indexed", summary["indexed"]),
                ("crystals", summary["crystals"]),
                ("reflections", summary["reflections"]),
                ("median cell", cell_text),
                (
                    "lattices",
                    ", ".join(f"{k} {v}" for k, v in summary["lattice_types"].items()) or "none",
                ),
                (
                    "photon energy",
                    f"{energy['min']:.1f} .. {energy['max']:.1f} eV (median {energy['median']:.1f})"
                    if energy
                    else "none",
                ),
                ("geometry", _embedded(summary.get("geometry"))),
            ]
        )
    else:
        frames = summary["frame_dataset"]
        lines += _rows(
            [
                ("size", f"{summary['size_bytes']:,} bytes"),
                ("frame dataset", frames or "none found"),
                ("frames", summary["n_frames"] if frames else "-"),
                ("frame shape", _shape(summary["frame_shape"]) if frames else "-"),
            ]
        )
        table = [("dataset", "shape", "dtype", "chunks", "compression")]
        for d in summary["datasets"]:
            table.append(
                (
                    d["path"],
                    _shape(d["shape"]),
                    d["dtype"],
                    _shape(d["chunks"]) if d["chunks"] else "contiguous",
                    "+".join(d["compression"]) or "none",
                )
            )
        widths = [max(len(str(row[k])) for row in table) for k in range(5)]
        lines.append("")
        lines += [
            "  " + "  ".join(f"{v:<{w}}" for v, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        ]
    return "\n".join(lines)
