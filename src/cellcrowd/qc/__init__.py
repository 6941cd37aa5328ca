"""A quality-control report a person can look at: ``qc/index.html`` beside its images.

The work is split by what it touches:

* :mod:`.collect` gathers the numbers (:func:`collect_qc` -> :class:`QcSummary`) from
  what the stages recorded: the manifest, the logs, the consensus reports, the
  workers file and the cleaning stats (:mod:`.sources` reads them, :mod:`.assess`
  says which units need a look and what to do);
* :mod:`.overlay` draws (pure array functions: outlines on raw, removed pixels);
* :mod:`.plots` and :mod:`.html` make the page, :mod:`.report` writes it with an
  overlay and a thumbnail of every unit and the unit and worker tables as CSV
  (:func:`write_qc_report`, :func:`write_qc`).
"""

from __future__ import annotations

from .collect import collect_qc
from .html import MAX_TABLE_ROWS, PAGE_SIZE, render_html
from .model import (
    CsvTable,
    ExportLink,
    MontageQc,
    OverlayFile,
    PartQc,
    Problem,
    QcSummary,
    StageQc,
    StageRunQc,
    StitchedQc,
    WorkerQc,
)
from .overlay import (
    PALETTE,
    PANEL_GAP,
    REMOVED_COLOUR,
    cells_per_frame,
    fill_overlay,
    outline_overlay,
    overlay_panels,
    stretch_to_uint8,
    thumbnail,
)
from .report import THUMB_SIDE, QcFiles, write_qc, write_qc_report

__all__ = [
    "MAX_TABLE_ROWS",
    "PAGE_SIZE",
    "PALETTE",
    "PANEL_GAP",
    "REMOVED_COLOUR",
    "THUMB_SIDE",
    "CsvTable",
    "ExportLink",
    "MontageQc",
    "OverlayFile",
    "PartQc",
    "Problem",
    "QcFiles",
    "QcSummary",
    "StageQc",
    "StageRunQc",
    "StitchedQc",
    "WorkerQc",
    "cells_per_frame",
    "collect_qc",
    "fill_overlay",
    "outline_overlay",
    "overlay_panels",
    "render_html",
    "stretch_to_uint8",
    "thumbnail",
    "write_qc",
    "write_qc_report",
]
