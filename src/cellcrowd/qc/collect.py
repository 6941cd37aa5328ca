"""Gather the numbers of the QC report from what the stages recorded.

Which files a stage wrote comes from the manifest (``.cellcrowd/manifest.json``);
a folder without one (files made by hand or by the library functions) is checked
at the paths :class:`~cellcrowd.layout.WorkingFolder` names for the job's
montages, parts and positions (from the :class:`~cellcrowd.job.Job`, given or
loaded once), never by matching file names.
Agreement comes from each montage's consensus report, reliability from the
job's workers file, pixels removed/filled from the cleaning stats (a file next
to the labels, or a run summary); anything absent is None, shown as "—".
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..executor import Executor, run_tasks
from ..files import list_images, natural_key, read_image
from ..geometry import Position
from ..job import Job
from ..labelcheck import check_label_image
from ..labels import CleanStats
from ..layout import MontageKey, WorkingFolder, position_name
from ..logs import MontageLog
from ..pipeline.manifest import StageEntries
from .assess import assess, broken_links, montage_problems
from .model import ExportLink, MontageQc, PartQc, QcSummary, StitchedQc, WorkerQc
from .overlay import cells_per_frame
from .sources import Manifest, load_job, npz_shapes, number, present, read_csv
from .sources import read_json as _read_json

__all__ = ["collect_qc"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class _UnitReport:
    """What a montage's consensus report says (all None/empty without one)."""

    judgments: int | None = None
    agreement: float | None = None
    low_support: int | None = None
    scores: tuple[tuple[str, float], ...] = ()  # (worker id, F1 with the consensus)


def collect_qc(
    wf: WorkingFolder,
    *,
    summary: Mapping[str, object] | None = None,
    job_id: int | None = None,
    max_overlays: int | None = None,
    job: Job | None = None,
    executor: Executor | None = None,
    recorded: StageEntries | None = None,
) -> QcSummary:
    """Gather the numbers of the QC report of a working folder.

    Every stage is optional: what is not there is listed in ``missing``.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder (its padding is widened to fit the logs).
    summary : mapping, optional
        Numbers of a run to show (e.g. a time stamp, counts); ``CleanStats`` per
        montage (a mapping of montage name to ``CleanStats``, or a list of
        :class:`~cellcrowd.labels.CleanResult`) fill the removed/filled columns
        (over the cleaning stats file).
    job_id : int, optional
        The job whose broken-link and download-failure CSVs to read.
    max_overlays : int, optional
        Full-size overlay images for at most this many montages, evenly spaced
        over the job; None (the default): every montage with labels or an
        annotation. Every unit gets a thumbnail either way.
    job : Job, optional
        The job, when already loaded for ``wf`` (else its logs are read once here).
    executor : Executor, optional
        Reads the montages' cleaned labels and the stitched label frames, one task
        each (default: here, one after the other).
    recorded : StageEntries, optional
        The manifest's stage entries, when the caller holds them (the pipeline's
        ``ctx.recorded``); else ``.cellcrowd/manifest.json`` is read.

    Returns
    -------
    QcSummary

    Raises
    ------
    InputError
        The working folder does not exist.
    ValueError
        ``max_overlays`` is negative.
    """
    if not wf.base.is_dir():
        raise InputError("working folder not found: check the path", path=wf.base)
    if max_overlays is not None and max_overlays < 0:
        raise ValueError(f"max_overlays must be 0 or more, got {max_overlays!r}")
    job, logs_problem = load_job(wf, job)
    wf = job.wf if job is not None else wf
    manifest = Manifest(wf, recorded)
    summary_stats, run = _split_summary(summary)
    stats = {**_clean_stats_file(wf), **summary_stats}
    reports = {m: _consensus(wf, m) for m in (wf.montage_name(k) for k in _keys(job))}
    montages = _montages(wf, job, manifest, stats, reports, executor)
    broken = broken_links(wf, job_id) if job_id is not None else None
    failures = read_csv(wf.failures_csv(job_id)) if job_id is not None else None
    montages = montage_problems(wf, montages, manifest, job_id, broken, failures)
    movie_files = manifest.files_per_folder("movies")
    parts = tuple(_part_qc(wf, part, job, manifest, movie_files)
                  for part in _part_numbers(job))
    stitched = _stitched_qc(wf, manifest.outputs("stitch"), executor)
    stages, missing = assess(wf, (job is not None, logs_problem), manifest, montages, parts,
                             stitched, job_id, broken, failures)
    with_images = [m.name for m in montages if m.labels or m.annotation]
    return QcSummary(
        wf=wf, job_id=job_id, stages=tuple(stages), montages=montages, parts=parts,
        broken_links=broken, failures=failures, stitched=stitched,
        overlays=_evenly_spaced(with_images, max_overlays), run=run, missing=tuple(missing),
        grid=_grid_text(job), workers=_workers(wf, reports),
        exports=export_links(wf, manifest),
        montage_len=job.montage_len if job is not None else None,
        runs=manifest.runs(),
    )


def _grid_text(job: Job | None) -> str | None:
    if job is None or job.known_grid is None:
        return None
    grid = job.known_grid
    return (f"{grid.num_x}x{grid.num_y} tiles of "
            f"{grid.tile_shape[0]}x{grid.tile_shape[1]} px, "
            f"{job.count} montages of {job.montage_len} frames per tile")


def _evenly_spaced(names: Sequence[str], count: int | None) -> tuple[str, ...]:
    if count is None or count >= len(names):
        return tuple(names)
    if count <= 0 or not names:
        return ()
    index = np.unique(np.rint(np.linspace(0, len(names) - 1, count)).astype(int))
    return tuple(names[i] for i in index)


# -- montages ---------------------------------------------------------------------------------


def _keys(job: Job | None) -> list[MontageKey]:
    """Every montage the logs promise (none when the tile grid is unknown)."""
    return job.montage_keys() if job is not None and job.has_grid else []


def _montages(wf: WorkingFolder, job: Job | None, manifest: Manifest,
              stats: Mapping[str, tuple[int | None, int | None]],
              reports: Mapping[str, _UnitReport], executor: Executor | None
              ) -> tuple[MontageQc, ...]:
    if job is None:  # no montage is known
        return ()
    annotations = manifest.outputs("fetch")
    labels = manifest.outputs("clean")
    tasks = []
    for key in _keys(job):
        name = wf.montage_name(key)
        removed, filled = stats.get(name, (None, None))
        report = reports.get(name, _UnitReport())
        base = MontageQc(
            name=name, part=key.part, position=position_name(key.position, wf.padding),
            montage=key.montage,
            raw_path=present(wf.montage_path(key), None),
            annotation_path=present(wf.annotation_path(name), annotations),
            labels_path=present(wf.label_path(name), labels),
            pixels_removed=removed, pixels_filled=filled, judgments=report.judgments,
            agreement=report.agreement, low_support_cells=report.low_support,
        )
        tasks.append((base, job.montage, job.frames_in(key.montage)))
    out = tuple(run_tasks(_with_label_numbers, tasks, executor=executor))
    for m in out:
        if m.error is not None:
            logger.warning("QC: %s", m.error)
    return out


def _with_label_numbers(task: tuple[MontageQc, MontageLog, int]) -> MontageQc:
    """The montage with its cells, in all and in each of its ``real`` frames, from its
    cleaned labels (a task: reads the labels)."""
    m, log, real = task
    if m.labels_path is None:
        return m
    path = m.labels_path
    try:
        image = read_image(path)
        check_label_image(image, what="cleaned labels", path=path, max_id=None)
        ids = np.unique(image)
        cells = int(ids.size - (1 if ids.size and ids[0] == 0 else 0))
        layout = log.layout_for_montage(image.shape, source=str(path))
        per_frame = cells_per_frame(layout.read(image, source=str(path))[:real])
    except (InputError, OSError) as exc:
        return replace(m, error=str(exc))
    return replace(m, cells=cells, min_cells_per_frame=int(per_frame.min()),
                   max_cells_per_frame=int(per_frame.max()),
                   frame_counts=tuple(int(v) for v in per_frame))


def _consensus(wf: WorkingFolder, montage: str) -> _UnitReport:
    """Judgments merged, the unit's agreement, cells kept on low support and each worker's
    F1, from the montage's consensus report."""
    data = _read_json(wf.consensus_report_path(montage))
    if not isinstance(data, dict):
        return _UnitReport()
    judgments = data.get("judgments")
    workers = [str(j.get("worker_id")) if isinstance(j, dict) else "?"
               for j in (judgments if isinstance(judgments, list) else [])]
    agreement = next((v for v in (number(data.get(k)) for k in
                                  ("unit_agreement", "agreement", "mean_agreement"))
                      if v is not None), None)
    scores = []
    per_annotator = data.get("agreement")
    for i, entry in enumerate(per_annotator if isinstance(per_annotator, list) else []):
        f1 = number(entry.get("f1")) if isinstance(entry, dict) else None
        if f1 is not None and i < len(workers):
            scores.append((workers[i], f1))
    cells = data.get("cells")
    low = (sum(1 for c in cells if isinstance(c, dict) and c.get("low_support") is True)
           if isinstance(cells, list) else None)
    return _UnitReport(len(workers) or None, agreement, low, tuple(scores))


def _clean_stats_file(wf: WorkingFolder) -> dict[str, tuple[int | None, int | None]]:
    """Pixels removed and filled per montage from the cleaning stats file ({} if none)."""
    data = _read_json(wf.clean_stats_path)
    if isinstance(data, dict) and isinstance(data.get("montages"), dict):
        data = data["montages"]
    if not isinstance(data, dict):
        return {}
    out: dict[str, tuple[int | None, int | None]] = {}
    for name, entry in data.items():
        if isinstance(entry, dict):
            removed, filled = (number(entry.get(k)) for k in ("pixels_removed", "pixels_filled"))
            out[str(name)] = (None if removed is None else int(removed),
                              None if filled is None else int(filled))
    return out


def _split_summary(
    summary: Mapping[str, object] | None,
) -> tuple[dict[str, tuple[int | None, int | None]], tuple[tuple[str, str], ...]]:
    """Pixels removed/filled per montage found in a run summary, and the rest as text rows.

    Recognised: a ``CleanStats`` (shown field by field), a mapping of montage name
    to ``CleanStats``, or a sequence of records with ``montage`` and ``stats``
    attributes (:class:`~cellcrowd.labels.CleanResult`).
    """
    stats: dict[str, CleanStats] = {}
    rows: list[tuple[str, str]] = []
    for key, value in (summary or {}).items():
        if isinstance(value, CleanStats):
            rows += [(f"{key}: {f.name}", str(getattr(value, f.name))) for f in fields(value)]
        elif (isinstance(value, Mapping) and value
              and all(isinstance(v, CleanStats) for v in value.values())):
            stats.update({str(k): v for k, v in value.items()})
            rows.append((str(key), f"cleaning stats of {len(value)} montages"))
        elif (isinstance(value, (list, tuple)) and value
              and all(hasattr(v, "montage") and hasattr(v, "stats") for v in value)):
            found = {str(v.montage): v.stats for v in value if isinstance(v.stats, CleanStats)}
            stats.update(found)
            rows.append((str(key), f"cleaning stats of {len(found)} montages"))
        else:
            rows.append((str(key), _format(value)))
    pixels: dict[str, tuple[int | None, int | None]] = {
        k: (v.pixels_removed, v.pixels_filled) for k, v in stats.items()}
    return pixels, tuple(rows)


def _format(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(_format(v) for v in items)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- workers ----------------------------------------------------------------------------------


def _workers(wf: WorkingFolder, reports: Mapping[str, _UnitReport]) -> tuple[WorkerQc, ...]:
    """Per worker the reliability, units and agreement of the job's workers file; units done
    and mean agreement (F1) from the consensus reports where the file has none."""
    scores: dict[str, list[float]] = {}
    for report in reports.values():
        for worker, f1 in report.scores:
            scores.setdefault(worker, []).append(f1)
    listed = _workers_file(wf)
    out = []
    for worker in sorted(set(scores) | set(listed), key=natural_key):
        entry = listed.get(worker, {})
        mine = scores.get(worker, [])
        units = number(entry.get("units", entry.get("units_done")))
        agreement = number(entry.get("agreement"))
        if agreement is None and mine:
            agreement = sum(mine) / len(mine)
        out.append(WorkerQc(worker, int(units) if units is not None else len(mine), agreement,
                            number(entry.get("reliability"))))
    return tuple(out)


def _workers_file(wf: WorkingFolder) -> dict[str, dict[str, Any]]:
    """Per worker id, the record of the workers file: a list of records with ``worker_id``
    or a mapping of worker id to record (optionally under a ``workers`` key)."""
    data = _read_json(wf.consensus_workers_path)
    if isinstance(data, dict) and "workers" in data:
        data = data["workers"]
    if isinstance(data, list):
        return {str(r.get("worker_id")): r for r in data
                if isinstance(r, dict) and "worker_id" in r}
    if isinstance(data, dict):
        return {str(k): (v if isinstance(v, dict) else {"reliability": v})
                for k, v in data.items()}
    return {}


# -- parts, stitched movie, exports -----------------------------------------------------------


def _part_numbers(job: Job | None) -> list[int]:
    """The job's parts (none when the tile grid is unknown: no position is known)."""
    return list(job.parts) if job is not None and job.has_grid else []


def _frames(folder: Path, recorded: Mapping[Path, int] | None) -> int:
    """The frames in ``folder``: as recorded per folder, or (no record) on disk."""
    if recorded is not None:
        return recorded.get(folder, 0)
    return len(list_images(folder)) if folder.is_dir() else 0


def _part_qc(wf: WorkingFolder, part: int, job: Job | None, manifest: Manifest,
             recorded: Mapping[Path, int] | None) -> PartQc:
    """The part's positions, frames and npz; ``recorded``: the movies stage's files per
    folder (:meth:`Manifest.files_per_folder`)."""
    expected: list[Position] = list(job.positions) if job is not None and job.has_grid else []
    names = {pos: position_name(pos, wf.padding) for pos in expected}
    annotated, raw, frames = [], [], []
    for pos in expected:
        n = _frames(wf.annotated_dir(part, pos), recorded)
        if n:
            annotated.append(names[pos])
            frames.append(n)
        if _frames(wf.raw_tile_dir(part, pos), recorded):
            raw.append(names[pos])
    npz = present(wf.npz_part(part), manifest.outputs("npz"))
    shapes: tuple[tuple[int, ...] | None, tuple[int, ...] | None] = (None, None)
    error = None
    if npz is not None:
        try:
            shapes = npz_shapes(npz)
        except (InputError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            error = f"cannot read {npz.name}: {exc}"
            logger.warning("QC: %s", error)
    return PartQc(
        part=part, expected_positions=tuple(names[p] for p in expected),
        annotated_positions=tuple(annotated), raw_positions=tuple(raw), frames=tuple(frames),
        npz=npz, x_shape=shapes[0], y_shape=shapes[1], npz_error=error,
    )


def _stitched_qc(wf: WorkingFolder, recorded: Set[Path] | None, executor: Executor | None
                 ) -> StitchedQc | None:
    folder = wf.stitched_frame("annotated", 0).parent
    if recorded is not None:
        paths = sorted((p for p in recorded if p.parent == folder), key=natural_key)
    else:
        paths = list_images(folder) if folder.is_dir() else []
    if not paths:
        return None
    per_frame: list[int] = []
    seen = np.zeros(0, dtype=np.int64)  # the ids so far (not a list per frame: that grows)
    for ids in run_tasks(_frame_ids, paths, executor=executor):
        if isinstance(ids, str):  # frames up to the first one that cannot be read
            logger.warning("QC: %s", ids)
            return StitchedQc(tuple(per_frame), int(seen.size), None, ids)
        per_frame.append(int(ids.size))
        seen = np.union1d(seen, ids)
    divisions = None
    lineage = _read_json(wf.stitched_lineage)
    if isinstance(lineage, dict):
        divisions = sum(1 for entry in lineage.values()
                        if isinstance(entry, dict) and entry.get("daughters"))
    return StitchedQc(tuple(per_frame), int(seen.size), divisions)


def _frame_ids(path: Path) -> NDArray[np.int64] | str:
    """The ids in a stitched label frame but 0, or why it cannot be read (a task)."""
    try:
        ids = np.unique(read_image(path))
    except InputError as exc:
        return str(exc)
    out: NDArray[np.int64] = ids[ids != 0].astype(np.int64)
    return out


#: How to load each kind of export file the page links (None: a link without a snippet).
_SNIPPETS = {
    ".npz": 'import numpy as np\ndata = np.load("{path}")\nX, y = data["X"], data["y"]',
    ".trk": None,
}


def export_links(wf: WorkingFolder, manifest: Manifest) -> tuple[ExportLink, ...]:
    """Links to the exports the manifest records (npz, stitched .npz, trk, ctc), each with a
    snippet to load it where one is known; the hook other exports add to."""
    out: list[ExportLink] = []
    for stage in ("npz", "stitch", "trk", "ctc"):
        recorded = sorted(manifest.outputs(stage) or (), key=lambda p: natural_key(str(p)))
        if stage == "ctc" and recorded:
            out.append(ExportLink(stage, wf.ctc.name + "/", wf.ctc))
            continue
        for path in recorded:
            if path.suffix in _SNIPPETS:
                template = _SNIPPETS[path.suffix]
                rel = _relative(path, wf.base)
                snippet = template.format(path=json.dumps(rel)[1:-1]) if template else None
                out.append(ExportLink(stage, path.name, path, snippet))
    out += [link for stage in ("omezarr", "geff") if manifest.outputs(stage)
            if (link := _zarr_link(wf, stage)) is not None]
    return tuple(out)


#: How a napari user opens the OME-Zarr (movie and labels) and the GEFF lineage.
_ZARR_SNIPPETS = {
    "omezarr": 'import napari\nviewer = napari.Viewer()\n'
               'viewer.open("{location}", plugin="napari-ome-zarr")  # movie + tracked labels',
    "geff": 'import geff\ngraph, meta = geff.read("{location}", backend="networkx")\n'
            '# nodes: t, y, x, area, seg_id, track_id, support, agreement',
}


def _zarr_link(wf: WorkingFolder, stage: str) -> ExportLink | None:
    """The OME-Zarr or GEFF export, from the receipt that says where it went (path or URL)."""
    receipt = _read_json(wf.export_receipt(stage))
    location = receipt.get("location") if isinstance(receipt, dict) else None
    if not isinstance(location, str) or not location:
        return None
    remote = "://" in location
    path = wf.export_receipt(stage) if remote else wf.zarr_exports / location
    shown = location if remote else _relative(path, wf.base)
    snippet = _ZARR_SNIPPETS[stage].format(location=json.dumps(shown)[1:-1])
    return ExportLink(stage, shown, path, snippet)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
