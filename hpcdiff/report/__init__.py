"""Self-contained HTML reports with PNG figures, written by every job."""

from hpcdiff.report.html import Report, figure_png

__all__ = ["Report", "figure_png"]
