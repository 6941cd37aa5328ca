"""Write the QC report: ``qc/index.html``, an overlay and a thumbnail per unit, two CSVs.

Output is deterministic: no time stamps unless a run summary passes one, so a
rerun gives byte-identical files; images of montages no longer shown are removed.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..executor import Executor, run_tasks
from ..files import atomic_write_text, list_images, read_image, remove_file, write_image
from ..labels import decode_annotation
from ..layout import WorkingFolder
from .collect import collect_qc
from .html import UNIT_COLUMNS, render_html
from .model import MontageQc, OverlayFile, QcSummary
from .overlay import overlay_panels, stretch_to_uint8, thumbnail, to_grey

__all__ = ["THUMB_SIDE", "QcFiles", "write_qc", "write_qc_report"]

logger = logging.getLogger(__name__)

#: Longest side of a unit's thumbnail on the page, in pixels.
THUMB_SIDE = 240


@dataclass(frozen=True)
class QcFiles:
    """Every file :func:`write_qc` wrote: the page, the images, the CSV tables.

    ``thumbnails`` are the separate small images; an overlay no larger than
    :data:`THUMB_SIDE` is shown as its own thumbnail.
    """

    index: Path
    overlays: tuple[Path, ...]
    thumbnails: tuple[Path, ...]
    tables: tuple[Path, ...]

    @property
    def paths(self) -> list[Path]:
        """All of them, the page first."""
        return [self.index, *self.overlays, *self.thumbnails, *self.tables]


def write_qc_report(
    wf: WorkingFolder,
    *,
    summary: Mapping[str, object] | None = None,
    max_overlays: int | None = None,
    job_id: int | None = None,
    qc: QcSummary | None = None,
) -> Path:
    """Write ``qc/index.html`` with a thumbnail of every unit, overlays and CSV tables.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder (any stages done; what is missing is listed).
    summary : mapping, optional
        Numbers of a run to show, see :func:`~cellcrowd.qc.collect_qc` (a time stamp
        belongs here: the page itself holds none, so reruns are byte-identical).
    max_overlays : int, optional
        Montages that get a full-size overlay ``qc/{montage}_overlay.png``
        (default: all with labels or an annotation).
    job_id : int, optional
        The job whose broken-link and download-failure CSVs are shown.
    qc : QcSummary, optional
        A summary already made by :func:`~cellcrowd.qc.collect_qc` (then ``summary``
        and ``job_id`` must not be given; its overlay choice is used).

    Returns
    -------
    Path
        ``wf.qc_index``.

    Raises
    ------
    ValueError
        ``qc`` is given together with ``summary`` or ``job_id``, or ``max_overlays`` < 0.
    InputError
        The working folder does not exist.
    """
    if qc is None:
        qc = collect_qc(wf, summary=summary, job_id=job_id, max_overlays=max_overlays)
    elif summary is not None or job_id is not None:
        raise ValueError("give either qc (from collect_qc) or summary/job_id, not both: "
                         "the summary already holds them")
    return write_qc(qc).index


def write_qc(qc: QcSummary, *, executor: Executor | None = None) -> QcFiles:
    """Write the page, images and tables of a collected summary; return every file written.

    ``executor`` draws the montages' images, one task per montage (default: here, one
    after the other); the page and tables are written here.
    """
    wf = qc.wf
    chosen = set(qc.overlays)
    images = list(run_tasks(_images_task, [(wf, m, m.name in chosen) for m in qc.montages],
                            executor=executor))
    _remove_stale(wf, images)
    tables = (atomic_write_text(wf.qc_units_csv, _units_csv(qc)),
              atomic_write_text(wf.qc_workers_csv, _workers_csv(qc)))
    index = atomic_write_text(wf.qc_index, render_html(qc, images))
    files = QcFiles(index, tuple(o.path for o in images if o.path is not None),
                    tuple(o.thumbnail for o in images
                          if o.thumbnail is not None and o.thumbnail != o.path), tables)
    logger.info("QC report written to %s (%d overlay(s), %d thumbnail(s); %d thing(s) "
                "missing)", index, len(files.overlays), len(files.thumbnails),
                len(qc.missing))
    return files


# -- images -----------------------------------------------------------------------------------


def _read(path: Path | None, notes: list[str], decode: bool = False) -> NDArray[np.generic] | None:
    if path is None:
        return None
    try:
        image = np.asarray(read_image(path))
        if decode:
            return np.asarray(decode_annotation(image))
    except InputError as exc:
        notes.append(str(exc))
        return None
    return image


def _overlay_of(m: MontageQc) -> tuple[NDArray[np.uint8] | None, list[str]]:
    """The montage's overlay (labels and/or annotation over raw), or of the raw montage alone."""
    notes: list[str] = []
    labels = _read(m.labels_path, notes)
    if labels is not None and (labels.ndim != 2 or labels.dtype.kind not in "ui"):
        notes.append(f"{m.name}: the cleaned labels are not a label image")
        labels = None
    annotation = _read(m.annotation_path, notes, decode=True)
    raw_read = _read(m.raw_path, notes)
    raw = to_grey(raw_read) if raw_read is not None else None
    shape = next((a.shape for a in (labels, annotation, raw) if a is not None), None)
    if shape is None:
        return None, notes or ["no image of this unit yet"]
    if annotation is not None and labels is not None and annotation.shape != labels.shape:
        notes.append(f"annotation is {annotation.shape}, labels are {labels.shape}: not shown")
        annotation = None
    if raw is None or raw.shape != shape:
        if raw is not None:
            notes.append(f"raw montage is {raw.shape}, labels are {shape}: raw not shown")
        raw = np.zeros(shape[:2], dtype=np.uint16)
    if labels is None and annotation is None:
        return np.repeat(stretch_to_uint8(raw)[..., None], 3, axis=2), notes
    return overlay_panels(raw, labels, annotation), notes


def _write_images(wf: WorkingFolder, m: MontageQc, full: bool) -> OverlayFile:
    image, notes = _overlay_of(m)
    if image is None:
        return OverlayFile(m.name, notes=tuple(notes))
    path = None
    if full and (m.labels or m.annotation):
        path = write_image(wf.qc_overlay(m.name), image)
    small = thumbnail(image, THUMB_SIDE)
    # A small overlay is its own thumbnail: one file less per unit.
    thumb = path if path is not None and small.shape == image.shape else write_image(
        wf.qc_thumbnail(m.name), small)
    return OverlayFile(m.name, path, (image.shape[1], image.shape[0]), thumb,
                       (small.shape[1], small.shape[0]), tuple(notes))


def _images_task(task: tuple[WorkingFolder, MontageQc, bool]) -> OverlayFile:
    return _write_images(*task)


def _remove_stale(wf: WorkingFolder, images: Sequence[OverlayFile]) -> None:
    keep = {p for o in images for p in (o.path, o.thumbnail) if p is not None}
    thumbs = wf.qc_thumbnail("x").parent
    old = [p for folder in (wf.qc, thumbs) if folder.is_dir() for p in list_images(folder)
           if folder == thumbs or p.name.endswith("_overlay.png")]
    for path in old:
        if path not in keep:
            logger.info("QC: removing the old image %s", path.name)
            remove_file(path)


# -- tables -----------------------------------------------------------------------------------


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return out.getvalue()


def _units_csv(qc: QcSummary) -> str:
    header = [c for c in UNIT_COLUMNS if c != "thumbnail"]
    rows = [(i + 1, m.name, m.part, m.position, " ".join(p.kind for p in m.problems),
             None if m.agreement is None else round(m.agreement, 6), m.judgments,
             m.low_support_cells, m.raw, m.annotation, m.labels, m.cells, m.min_cells_per_frame,
             m.max_cells_per_frame, m.pixels_removed, m.pixels_filled,
             "; ".join(p.detail for p in m.problems),
             "; ".join(dict.fromkeys(p.advice for p in m.problems)))
            for i, m in enumerate(qc.by_attention())]
    return _csv_text(header, rows)


def _workers_csv(qc: QcSummary) -> str:
    rows = [(w.worker_id, w.reliability, w.units, w.agreement) for w in qc.workers]
    return _csv_text(("worker", "reliability", "units", "agreement"), rows)
