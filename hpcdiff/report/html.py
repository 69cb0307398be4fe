"""A self-contained HTML report: text, tables and PNG figures inlined, nothing fetched.

Every job writes one (demo, train, predict, fourier, reprocess summary)::

    report = Report("hpcdiff train", provenance=provenance(job.config_hash(), weights=...))
    report.add_section("Classifier", text="PCA(50) + logistic regression")
    report.add_table("Precision / recall", rows, columns=["class", "precision", "recall"])
    report.add_figure("Confusion matrix", confusion_matrix_figure(cm, class_names))
    report.write(out_dir / "report")  # -> out_dir/report/index.html + figures/*.png

The page inlines every figure as a base64 PNG, so ``index.html`` alone opens offline; the
PNGs are also written beside it (``figures/``) for reuse in papers and logbooks.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from hpcdiff.io.outputs import atomic_path, ensure_writable


@dataclass(frozen=True)
class _Block:
    kind: str  # "section", "text", "table", "figure", "pre"
    title: str = ""
    text: str = ""
    rows: tuple[tuple[Any, ...], ...] = ()
    columns: tuple[str, ...] = ()
    png: bytes = b""
    slug: str = ""


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return f"{value:.3e}"
    return str(value)


def _slug(title: str, n: int) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "figure"
    return f"{n:02d}-{base}"


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render a matplotlib Figure to PNG bytes (Agg, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


@dataclass
class Report:
    """An HTML report under construction.

    Parameters
    ----------
    title
        Page title.
    provenance
        Mapping shown at the top (hpcdiff version, config hash, weights name and SHA-256,
        whether they are pretrained, creation time ...).
    """

    title: str
    provenance: Mapping[str, Any] = field(default_factory=dict)
    _blocks: list[_Block] = field(default_factory=list, init=False, repr=False)

    def add_section(self, title: str, text: str | None = None) -> None:
        """Start a section with a heading and optional paragraph text."""
        self._blocks.append(_Block("section", title=title))
        if text:
            self._blocks.append(_Block("text", text=text))

    def add_text(self, text: str) -> None:
        """A paragraph of plain text (escaped)."""
        self._blocks.append(_Block("text", text=text))

    def add_preformatted(self, text: str, *, title: str = "") -> None:
        """Fixed-width text, such as the precision/recall table printed by a job."""
        self._blocks.append(_Block("pre", title=title, text=text))

    def add_table(self, title: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        """A table; floats are formatted, NaN shows as ``n/a``."""
        columns = tuple(str(c) for c in columns)
        cells = tuple(tuple(r) for r in rows)
        for i, row in enumerate(cells):
            if len(row) != len(columns):
                raise ValueError(
                    f"table {title!r}: row {i} has {len(row)} cells, expected {len(columns)}"
                )
        self._blocks.append(_Block("table", title=title, rows=cells, columns=columns))

    def add_figure(self, title: str, figure: Figure | bytes | Path, caption: str = "") -> None:
        """A figure: a matplotlib Figure, PNG bytes, or a PNG file."""
        if isinstance(figure, Figure):
            png = figure_png(figure)
        elif isinstance(figure, bytes):
            png = figure
        else:
            png = Path(figure).read_bytes()
        if not png.startswith(b"\x89PNG"):
            raise ValueError(f"figure {title!r} is not a PNG image")
        n = sum(b.kind == "figure" for b in self._blocks) + 1
        self._blocks.append(
            _Block("figure", title=title, text=caption, png=png, slug=_slug(title, n))
        )

    @property
    def n_figures(self) -> int:
        """Number of figures added so far."""
        return sum(b.kind == "figure" for b in self._blocks)

    def render(self) -> str:
        """The whole page as one HTML string."""
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        if self.provenance:
            parts.append('<table class="prov">')
            for key, value in self.provenance.items():
                parts.append(f"<tr><th>{e(str(key))}</th><td>{e(_format_cell(value))}</td></tr>")
            parts.append("</table>")
        figures = [b for b in self._blocks if b.kind == "figure"]
        if figures:
            parts.append("<nav><b>Figures</b><ol>")
            parts.extend(f'<li><a href="#{b.slug}">{e(b.title)}</a></li>' for b in figures)
            parts.append("</ol></nav>")
        for block in self._blocks:
            parts.append(_render_block(block))
        parts.append(_CHECK_SCRIPT)
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, *, force: bool = False) -> Path:
        """Write ``out_dir/index.html`` and ``out_dir/figures/*.png``; returns the page path.

        Raises
        ------
        OutputExistsError
            If the page exists and ``force`` is false.
        """
        out_dir = Path(out_dir)
        page = ensure_writable(out_dir / "index.html", force=force)
        fig_dir = out_dir / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        for block in self._blocks:
            if block.kind == "figure":
                with atomic_path(fig_dir / f"{block.slug}.png", force=True) as tmp:
                    tmp.write_bytes(block.png)
        with atomic_path(page, force=force) as tmp:
            tmp.write_text(self.render(), encoding="utf-8")
        return page


def _render_block(block: _Block) -> str:
    e = html.escape
    if block.kind == "section":
        return f"<h2>{e(block.title)}</h2>"
    if block.kind == "text":
        return f"<p>{e(block.text)}</p>"
    if block.kind == "pre":
        head = f"<h3>{e(block.title)}</h3>" if block.title else ""
        return f"{head}<pre>{e(block.text)}</pre>"
    if block.kind == "table":
        head = "".join(f"<th>{e(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(_format_cell(v))}</td>" for v in row) + "</tr>"
            for row in block.rows
        )
        return f"<h3>{e(block.title)}</h3><table><tr>{head}</tr>{body}</table>"
    if block.kind == "figure":
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{e(block.text)}</figcaption>" if block.text else ""
        return (
            f'<figure id="{block.slug}"><h3>{e(block.title)}</h3>'
            f'<img alt="{e(block.title)}" src="data:image/png;base64,{data}">{caption}</figure>'
        )
    raise ValueError(f"unknown block kind {block.kind!r}")


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3}table.prov td,table.prov th{text-align:left;font-size:.9em}
img{max-width:100%}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""

# Records, once the page has loaded, how many images decoded; tests read it from the DOM.
_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
</script>"""
