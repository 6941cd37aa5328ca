"""A quality-control report a person can look at: ``qc/index.html`` plus overlay images.

:func:`collect_qc` looks at whatever a working folder holds (every stage is
optional) and returns a :class:`QcSummary` with the numbers:

* which stages are done, partly done or missing, and what to run next;
* per montage: raw montage / annotation / cleaned labels present, cells in the
  cleaned labels, cells per frame (min and max over the montage's real frames,
  cut with :class:`~cellcrowd.geometry.MontageLayout` from the montage log) and,
  when a run summary provides :class:`~cellcrowd.labels.CleanStats`, the pixels
  cleaning removed and filled;
* per part: tile positions present and missing in ``movies/``, the ``.npz`` file
  and the shapes of its ``X`` and ``y`` (read back from the file);
* broken links and download failures of a job (when a job id is given and the
  CSVs exist);
* the stitched movie: cells per frame, as a table with text bars.

:func:`write_qc_report` writes it as one self-contained HTML page (no
JavaScript, every value from a file escaped, relative links) and, for an evenly
spaced sample of montages, an overlay PNG: the raw montage contrast-stretched
to 8 bits with the cleaned label outlines drawn in a fixed palette, side by side
with the downloaded annotation when there is one (each painted id filled in the
colour of the cleaned cell it mostly became; pixels cleaning removed in white).
Output is deterministic: no timestamps unless passed in the run summary, so a
rerun gives byte-identical files.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import find_boundaries

from .errors import InputError, redact
from .files import (
    atomic_write_text,
    list_images,
    natural_key,
    read_image,
    remove_file,
    write_image,
)
from .geometry import Position, TileGrid, montage_frame_range, num_montages
from .labels import CleanStats, decode_annotation
from .layout import MontageKey, WorkingFolder, parse_montage_name, part_numbers, position_name
from .logs import ChopperLog, MontageLog, read_logs

__all__ = [
    "PALETTE",
    "CsvTable",
    "MontageQc",
    "PartQc",
    "QcSummary",
    "StageQc",
    "StitchedQc",
    "cells_per_frame",
    "collect_qc",
    "fill_overlay",
    "outline_overlay",
    "render_html",
    "stretch_to_uint8",
    "write_qc_report",
]

logger = logging.getLogger(__name__)

#: Colours of label outlines/fills, by ``(id - 1) % len(PALETTE)``: bright on grey.
PALETTE: NDArray[np.uint8] = np.array(
    [[255, 64, 64], [64, 200, 255], [80, 255, 80], [255, 220, 0], [255, 100, 255],
     [0, 255, 200], [255, 150, 40], [160, 130, 255], [190, 255, 110], [255, 130, 170],
     [40, 150, 255], [230, 230, 230]],
    dtype=np.uint8,
)
#: Colour of annotation pixels that cleaning removed (right panel of an overlay).
REMOVED_COLOUR = (255, 255, 255)
#: White columns between the two panels of an overlay.
PANEL_GAP = 8
#: Rows shown per table of CSV rows (the counts are always complete).
MAX_TABLE_ROWS = 500
_SPARK = "▁▂▃▄▅▆▇█"
_BAR_WIDTH = 30
_DIM = 0.8
_SHOW_WIDTH = 900  # px: overlays narrower than this are shown enlarged (2x-4x)


# -- the numbers --------------------------------------------------------------------------


@dataclass(frozen=True)
class StageQc:
    """One stage: ``status`` is ``"done"``, ``"partial"`` or ``"missing"``."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class MontageQc:
    """One montage: which files exist and what its cleaned labels hold.

    Numbers are None when the file they come from is missing (or, for the
    cleaning stats, when no run summary gave them).
    """

    name: str
    part: int
    position: str
    raw_path: Path | None = None
    annotation_path: Path | None = None
    labels_path: Path | None = None
    cells: int | None = None
    min_cells_per_frame: int | None = None
    max_cells_per_frame: int | None = None
    pixels_removed: int | None = None
    pixels_filled: int | None = None
    error: str | None = None

    @property
    def raw(self) -> bool:
        """The raw montage (for upload) exists."""
        return self.raw_path is not None

    @property
    def annotation(self) -> bool:
        """A downloaded annotation exists."""
        return self.annotation_path is not None

    @property
    def labels(self) -> bool:
        """Cleaned labels exist."""
        return self.labels_path is not None


@dataclass(frozen=True)
class PartQc:
    """One part of ``movies/``: positions present and the part's ``.npz``."""

    part: int
    expected_positions: tuple[str, ...]
    annotated_positions: tuple[str, ...]
    raw_positions: tuple[str, ...]
    frames: tuple[int, ...]
    npz: Path | None = None
    x_shape: tuple[int, ...] | None = None
    y_shape: tuple[int, ...] | None = None
    npz_error: str | None = None

    @property
    def missing_positions(self) -> tuple[str, ...]:
        """Expected positions without annotated frames."""
        have = set(self.annotated_positions)
        return tuple(p for p in self.expected_positions if p not in have)


@dataclass(frozen=True)
class CsvTable:
    """Rows of a CSV the pipeline wrote (broken links, download failures)."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    error: str | None = None


@dataclass(frozen=True)
class StitchedQc:
    """The stitched movie: cells per frame, distinct cells, divisions (if a lineage exists)."""

    cells_per_frame: tuple[int, ...]
    cells: int
    divisions: int | None = None
    error: str | None = None

    @property
    def frames(self) -> int:
        return len(self.cells_per_frame)


@dataclass(frozen=True)
class QcSummary:
    """Everything :func:`collect_qc` found; :meth:`lines` gives a short text version."""

    wf: WorkingFolder
    job_id: int | None
    stages: tuple[StageQc, ...]
    montages: tuple[MontageQc, ...]
    parts: tuple[PartQc, ...]
    broken_links: CsvTable | None
    failures: CsvTable | None
    stitched: StitchedQc | None
    overlays: tuple[str, ...]
    run: tuple[tuple[str, str], ...]
    missing: tuple[str, ...]
    grid: str | None = None

    def totals(self) -> dict[str, int]:
        """Flat counts (files present, cells, failures) for printing or comparing."""
        return {
            "montages": len(self.montages),
            "raw_montages": sum(m.raw for m in self.montages),
            "annotations": sum(m.annotation for m in self.montages),
            "labels": sum(m.labels for m in self.montages),
            "cells": sum(m.cells or 0 for m in self.montages),
            "parts": len(self.parts),
            "npz_files": sum(p.npz is not None for p in self.parts),
            "broken_links": len(_montages_in(self.broken_links)),
            "download_failures": len(self.failures.rows) if self.failures else 0,
            "stitched_frames": self.stitched.frames if self.stitched else 0,
        }

    def stage(self, name: str) -> StageQc:
        """The stage called ``name`` (KeyError if there is none)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def lines(self) -> list[str]:
        """A few plain-text lines (stages, then what is missing) for a terminal."""
        out = [f"{s.name}: {s.status} ({s.detail})" for s in self.stages]
        out += [f"missing: {m}" for m in self.missing]
        return out


def _montages_in(table: CsvTable | None) -> list[str]:
    if table is None or "montage" not in table.columns:
        return [] if table is None else [r[0] for r in table.rows]
    index = table.columns.index("montage")
    return sorted({r[index] for r in table.rows}, key=natural_key)


# -- array helpers --------------------------------------------------------------------------


def cells_per_frame(labels: NDArray[np.generic]) -> NDArray[np.int64]:
    """Distinct non-zero ids in each frame of a ``(T, H, W)`` label stack.

    Examples
    --------
    >>> stack = np.array([[[0, 3], [3, 5]], [[0, 0], [0, 0]], [[7, 7], [7, 7]]])
    >>> cells_per_frame(stack).tolist()
    [2, 0, 1]
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype == np.bool_ or labels.dtype.kind not in "ui":
        raise ValueError(
            f"labels must be an integer (T, H, W) stack, got shape {labels.shape} and dtype "
            f"{labels.dtype}"
        )
    frames = labels.shape[0]
    flat = labels.reshape(frames, -1)
    mask = flat != 0
    ids = flat[mask].astype(np.int64)
    if ids.size == 0:
        return np.zeros(frames, dtype=np.int64)
    stride = int(ids.max()) + 1
    which = np.broadcast_to(np.arange(frames, dtype=np.int64)[:, None], flat.shape)[mask]
    unique = np.unique(which * stride + ids)
    return np.bincount(unique // stride, minlength=frames).astype(np.int64)


def stretch_to_uint8(
    image: NDArray[np.generic], *, percentiles: tuple[float, float] = (1.0, 99.5)
) -> NDArray[np.uint8]:
    """Contrast-stretch a grey image to 8 bits between two percentiles of its values.

    Examples
    --------
    >>> stretch_to_uint8(np.array([[0, 50], [100, 100]], np.uint16), percentiles=(0, 100))
    array([[  0, 128],
           [255, 255]], dtype=uint8)
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype == np.bool_ or image.dtype.kind not in "uif":
        raise ValueError(
            f"image must be a 2-D grey image, got shape {image.shape} and dtype {image.dtype}"
        )
    low_p, high_p = percentiles
    if not 0 <= low_p < high_p <= 100:
        raise ValueError(f"percentiles must rise within 0..100, got {percentiles!r}")
    if image.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    low, high = (float(v) for v in np.percentile(image.astype(np.float64), [low_p, high_p]))
    if high <= low:
        high = low + 1.0
    scaled = np.clip((image.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.uint8)


def _colours(labels: NDArray[np.generic], palette: NDArray[np.uint8]) -> NDArray[np.uint8]:
    index = (np.maximum(labels.astype(np.int64), 1) - 1) % palette.shape[0]
    out: NDArray[np.uint8] = palette[index]
    return out


def _check_pair(image: NDArray[np.generic], labels: NDArray[np.generic],
                palette: NDArray[np.uint8]) -> None:
    if labels.ndim != 2 or labels.dtype == np.bool_ or labels.dtype.kind not in "ui":
        raise ValueError(
            f"labels must be a 2-D integer image, got shape {labels.shape} and dtype "
            f"{labels.dtype}"
        )
    if image.shape != labels.shape:
        raise ValueError(
            f"image is {image.shape} but labels are {labels.shape}: they must be the same size"
        )
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] == 0:
        raise ValueError(f"palette must be (n, 3) RGB colours, got shape {palette.shape}")


def outline_overlay(
    image: NDArray[np.generic],
    labels: NDArray[np.generic],
    *,
    palette: NDArray[np.uint8] = PALETTE,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> NDArray[np.uint8]:
    """The grey image stretched to 8 bits, with each cell's outline in its palette colour.

    Outlines are the cells' own edge pixels (:func:`skimage.segmentation.find_boundaries`,
    ``mode="inner"``); cell ``i`` gets ``palette[(i - 1) % len(palette)]``.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> labels = np.zeros((5, 5), np.uint16)
    >>> labels[1:4, 1:4] = 1
    >>> rgb = outline_overlay(np.zeros((5, 5)), labels)
    >>> (rgb[..., 0] == PALETTE[0, 0]).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    image, labels, palette = np.asarray(image), np.asarray(labels), np.asarray(palette)
    _check_pair(image, labels, palette)
    grey = stretch_to_uint8(image, percentiles=percentiles)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edges = np.asarray(
        find_boundaries(labels, mode="inner")  # type: ignore[no-untyped-call]
    ) & (labels != 0)
    rgb[edges] = _colours(labels[edges], palette)
    return rgb


def fill_overlay(
    image: NDArray[np.generic],
    labels: NDArray[np.generic],
    *,
    palette: NDArray[np.uint8] = PALETTE,
    alpha: float = 0.6,
    dim: float = 1.0,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> NDArray[np.uint8]:
    """The grey image stretched to 8 bits, each cell filled with its palette colour.

    ``grey`` is the stretched image times ``dim``; cell pixels are
    ``alpha * colour + (1 - alpha) * grey``, the background is ``grey``.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> out = fill_overlay(np.zeros((1, 2)), np.array([[0, 2]]), alpha=1.0)
    >>> out[0, 0].tolist(), out[0, 1].tolist() == PALETTE[1].tolist()
    ([0, 0, 0], True)
    """
    image, labels, palette = np.asarray(image), np.asarray(labels), np.asarray(palette)
    _check_pair(image, labels, palette)
    if not (0 <= alpha <= 1 and 0 <= dim <= 1):
        raise ValueError(f"alpha and dim must lie in 0..1, got {alpha!r} and {dim!r}")
    grey = stretch_to_uint8(image, percentiles=percentiles).astype(np.float64) * dim
    rgb = np.repeat(grey[..., None], 3, axis=2)
    cells = labels != 0
    rgb[cells] = alpha * _colours(labels[cells], palette) + (1 - alpha) * rgb[cells]
    return np.rint(rgb).astype(np.uint8)


# -- what the folder holds ------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """What the logs say; any part may be unknown."""

    grid: TileGrid | None = None
    montage_log: MontageLog | None = None
    count: int | None = None
    num_frames: int | None = None
    error: str | None = None

    def frames_in(self, montage: int) -> int | None:
        if self.montage_log is None:
            return None
        length = self.montage_log.montage_len
        if self.num_frames is None or montage * length >= self.num_frames:
            return length
        return len(montage_frame_range(montage, length, self.num_frames))


def _read_geometry(wf: WorkingFolder) -> tuple[WorkingFolder, _Geometry]:
    if not wf.chopper_log.is_file() and not wf.montage_log.is_file():
        return wf, _Geometry(error="no JSON logs")
    try:
        chopper, mlog = read_logs(wf.chopper_log, wf.montage_log)
    except InputError as exc:
        return wf, _Geometry(error=str(exc))
    grid, error = _grid(wf, chopper)
    num_frames = chopper.num_images
    if num_frames is None and wf.raw.is_dir():
        available = len(list_images(wf.raw)) - (chopper.frame_offset or 0)
        num_frames = min(available, mlog.montages_in_pos * mlog.montage_len) or None
    if num_frames is not None and num_montages(num_frames, mlog.montage_len) != (
            mlog.montages_in_pos):
        num_frames = None  # the logs disagree; movies.py says so in detail
    wf = wf.with_counts(
        num_x=mlog.num_x_segments, num_y=mlog.num_y_segments,
        frames=num_frames if num_frames is not None else mlog.montages_in_pos * mlog.montage_len,
        montages=mlog.montages_in_pos)
    return wf, _Geometry(grid, mlog, mlog.montages_in_pos, num_frames, error)


def _grid(wf: WorkingFolder, chopper: ChopperLog) -> tuple[TileGrid | None, str | None]:
    shape = None
    if chopper.original_y is None or chopper.original_x is None:
        raw = list_images(wf.raw) if wf.raw.is_dir() else []
        if raw:
            try:
                first = read_image(raw[0])
                shape = (int(first.shape[0]), int(first.shape[1]))
            except InputError as exc:
                return None, str(exc)
    try:
        return chopper.tile_grid(shape, source=str(wf.chopper_log)), None
    except InputError as exc:
        return None, str(exc)


def _found(folder: Path) -> dict[tuple[int, int, int], Path]:
    """Montage images in ``folder`` by (x, y, montage); names that do not parse are ignored."""
    found: dict[tuple[int, int, int], Path] = {}
    if not folder.is_dir():
        return found
    for path in list_images(folder):
        try:
            key = parse_montage_name(path.name)
        except InputError:
            logger.debug("%s: not a montage name; not in the QC report", path)
            continue
        found.setdefault((key.x, key.y, key.montage), path)
    return found


def _clean_stats_by_key(stats: Mapping[str, CleanStats]) -> dict[object, CleanStats]:
    out: dict[object, CleanStats] = {}
    for name, value in stats.items():
        try:
            key = parse_montage_name(name)
            out[(key.x, key.y, key.montage)] = value
        except InputError:
            out[name] = value
    return out


def _label_numbers(
    path: Path, geo: _Geometry, montage: int
) -> tuple[int, int | None, int | None]:
    image = read_image(path)
    if image.ndim != 2 or image.dtype == np.bool_ or image.dtype.kind not in "ui":
        raise InputError(f"not a label image (shape {image.shape}, {image.dtype})", path=path)
    ids = np.unique(image)
    cells = int(ids.size - (1 if ids.size and ids[0] == 0 else 0))
    if geo.montage_log is None:
        return cells, None, None
    layout = geo.montage_log.layout_for_montage(image.shape, source=str(path))
    real = geo.frames_in(montage) or layout.length
    per_frame = cells_per_frame(layout.read(image, source=str(path))[:real])
    return cells, int(per_frame.min()), int(per_frame.max())


def _montage_qc(
    wf: WorkingFolder,
    triple: tuple[int, int, int],
    files: tuple[Path | None, Path | None, Path | None],
    geo: _Geometry,
    stats: Mapping[object, CleanStats],
) -> MontageQc:
    x, y, m = triple
    key = MontageKey(wf.identifier, x, y, m)
    name = wf.montage_name(key)
    raw, annotation, labels = files
    numbers: tuple[int | None, int | None, int | None] = (None, None, None)
    error = None
    if labels is not None:
        try:
            numbers = _label_numbers(labels, geo, m)
        except (InputError, OSError) as exc:
            error = str(exc)
            logger.warning("QC: %s", exc)
    clean = stats.get(triple, stats.get(name))
    return MontageQc(
        name=name, part=key.part, position=position_name(Position(x, y), wf.padding),
        raw_path=raw, annotation_path=annotation, labels_path=labels,
        cells=numbers[0], min_cells_per_frame=numbers[1], max_cells_per_frame=numbers[2],
        pixels_removed=clean.pixels_removed if clean else None,
        pixels_filled=clean.pixels_filled if clean else None,
        error=error,
    )


def _npz_shapes(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of ``X`` and ``y`` in an ``.npz``, read from the array headers (no full load)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("X", "y") if k not in data.files]
    if missing:
        raise InputError(f"no {' or '.join(missing)} array in this .npz", path=path)
    shapes = []
    with zipfile.ZipFile(path) as archive:
        for key in ("X", "y"):
            with archive.open(f"{key}.npy") as fh:
                version = np.lib.format.read_magic(fh)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, _ = reader(fh)
                shapes.append(tuple(int(v) for v in shape))
    return shapes[0], shapes[1]


def _part_numbers(wf: WorkingFolder, geo: _Geometry) -> list[int]:
    parts = set(part_numbers(geo.count)) if geo.count else set()
    return sorted(parts | set(wf.part_folders()))


def _has_frames(folder: Path) -> int:
    return len(list_images(folder)) if folder.is_dir() else 0


def _part_qc(wf: WorkingFolder, part: int, geo: _Geometry) -> PartQc:
    from .export.npz import position_dirs

    found = position_dirs(wf.part_dir(part)) if wf.part_dir(part).is_dir() else {}
    expected = list(geo.grid.positions) if geo.grid is not None else []
    every = sorted(set(expected) | set(found))
    names = {pos: position_name(pos, wf.padding) for pos in every}
    annotated, raw, frames = [], [], []
    for pos in every:
        n = _has_frames(wf.annotated_dir(part, pos))
        if n:
            annotated.append(names[pos])
            frames.append(n)
        if _has_frames(wf.raw_tile_dir(part, pos)):
            raw.append(names[pos])
    npz = wf.npz_part(part)
    shapes: tuple[tuple[int, ...] | None, tuple[int, ...] | None] = (None, None)
    error = None
    if npz.is_file():
        try:
            shapes = _npz_shapes(npz)
        except (InputError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            error = f"cannot read {npz.name}: {exc}"
            logger.warning("QC: %s", error)
    return PartQc(
        part=part,
        expected_positions=tuple(names[p] for p in (expected or every)),
        annotated_positions=tuple(annotated), raw_positions=tuple(raw), frames=tuple(frames),
        npz=npz if npz.is_file() else None, x_shape=shapes[0], y_shape=shapes[1],
        npz_error=error,
    )


def _read_csv(path: Path) -> CsvTable | None:
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        reader = csv.reader(io.StringIO(text))
        rows = [tuple(redact(cell) for cell in row) for row in reader if row]
    except (OSError, csv.Error) as exc:
        return CsvTable(path, (), (), f"cannot read {path.name}: {exc}")
    if not rows:
        return CsvTable(path, (), ())
    return CsvTable(path, rows[0], tuple(rows[1:]))


def _broken_links(wf: WorkingFolder, job_id: int) -> CsvTable | None:
    """The broken-link rows, reduced to montage, image URL and number of judgments."""
    for report_type in ("full", "aggregated", "json"):
        table = _read_csv(wf.broken_links_csv(job_id, report_type))
        if table is not None:
            break
    else:
        return None
    if table.error or "image_url" not in table.columns:
        note = table.error or f"{table.path.name} has no image_url column"
        return CsvTable(table.path, (), (), note)
    url_at = table.columns.index("image_url")
    counts: dict[str, list[str]] = {}
    for row in table.rows:
        url = row[url_at] if url_at < len(row) else ""
        try:
            montage = wf.montage_name(replace(parse_montage_name(url),
                                              identifier=wf.identifier))
        except InputError:
            montage = url
        counts.setdefault(montage, [url, "0"])
        counts[montage][1] = str(int(counts[montage][1]) + 1)
    rows = tuple((m, n, url) for m, (url, n) in sorted(counts.items(),
                                                      key=lambda kv: natural_key(kv[0])))
    return CsvTable(table.path, ("montage", "judgments", "image_url"), rows)


def _stitched_qc(wf: WorkingFolder) -> StitchedQc | None:
    folder = wf.stitched_frame("annotated", 0).parent
    paths = list_images(folder) if folder.is_dir() else []
    if not paths:
        return None
    per_frame: list[int] = []
    seen: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
    try:
        for path in paths:
            frame = read_image(path)
            ids = np.unique(frame)
            ids = ids[ids != 0].astype(np.int64)
            per_frame.append(int(ids.size))
            seen = np.union1d(seen, ids)
    except InputError as exc:
        logger.warning("QC: %s", exc)
        return StitchedQc(tuple(per_frame), int(seen.size), None, str(exc))
    divisions = None
    if wf.stitched_lineage.is_file():
        try:
            lineage = json.loads(wf.stitched_lineage.read_text(encoding="utf-8"))
            divisions = sum(1 for entry in lineage.values()
                            if isinstance(entry, dict) and entry.get("daughters"))
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("QC: cannot read %s: %s", wf.stitched_lineage, exc)
    return StitchedQc(tuple(per_frame), int(seen.size), divisions)


def _format(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(_format(v) for v in items)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _split_summary(
    summary: Mapping[str, object] | None,
) -> tuple[dict[str, CleanStats], tuple[tuple[str, str], ...]]:
    """Per-montage CleanStats found in a run summary, and everything else as text rows.

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
    return stats, tuple(rows)


def _evenly_spaced(names: Sequence[str], count: int) -> tuple[str, ...]:
    if count <= 0 or not names:
        return ()
    if count >= len(names):
        return tuple(names)
    index = np.unique(np.rint(np.linspace(0, len(names) - 1, count)).astype(int))
    return tuple(names[i] for i in index)


def _status(have: int, want: int) -> str:
    if have == 0:
        return "missing"
    return "done" if have >= want else "partial"


def collect_qc(
    wf: WorkingFolder,
    *,
    summary: Mapping[str, object] | None = None,
    job_id: int | None = None,
    max_overlays: int = 12,
) -> QcSummary:
    """Look at a working folder and gather the numbers of the QC report.

    Every stage is optional: what is not there is listed in ``missing``.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder (its padding is widened to fit the logs).
    summary : mapping, optional
        Numbers of a run to show (e.g. a time stamp, counts); ``CleanStats`` per
        montage (a mapping of montage name to ``CleanStats``, or a list of
        :class:`~cellcrowd.labels.CleanResult`) fill the removed/filled columns.
    job_id : int, optional
        The job whose broken-link and download-failure CSVs to read.
    max_overlays : int
        How many montages (evenly spaced over the sorted list) get an overlay image.

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
    if max_overlays < 0:
        raise ValueError(f"max_overlays must be 0 or more, got {max_overlays!r}")
    wf, geo = _read_geometry(wf)
    clean_stats, run = _split_summary(summary)
    stats = _clean_stats_by_key(clean_stats)
    folders = (_found(wf.montages), _found(wf.annotations), _found(wf.labels))
    expected: set[tuple[int, int, int]] = set()
    if geo.grid is not None and geo.count is not None:
        expected = {(p.x, p.y, m) for p in geo.grid.positions for m in range(geo.count)}
    triples = sorted(expected.union(*folders), key=lambda t: (t[2], t[0], t[1]))
    montages = tuple(
        _montage_qc(wf, t, (folders[0].get(t), folders[1].get(t), folders[2].get(t)), geo,
                    stats)
        for t in triples)
    parts = tuple(_part_qc(wf, part, geo) for part in _part_numbers(wf, geo))
    broken = _broken_links(wf, job_id) if job_id is not None else None
    failures = _read_csv(wf.failures_csv(job_id)) if job_id is not None else None
    stitched = _stitched_qc(wf)
    with_labels = sorted((m.name for m in montages if m.labels), key=natural_key)
    candidates = with_labels or sorted((m.name for m in montages if m.annotation),
                                       key=natural_key)
    grid_text = None
    if geo.grid is not None and geo.montage_log is not None:
        grid_text = (f"{geo.grid.num_x}x{geo.grid.num_y} tiles of "
                     f"{geo.grid.tile_shape[0]}x{geo.grid.tile_shape[1]} px, "
                     f"{geo.count} montages of {geo.montage_log.montage_len} frames per tile")
    stages, missing = _assess(wf, geo, montages, parts, stitched, job_id, broken, failures)
    return QcSummary(
        wf=wf, job_id=job_id, stages=tuple(stages), montages=montages, parts=parts,
        broken_links=broken, failures=failures, stitched=stitched,
        overlays=_evenly_spaced(candidates, max_overlays), run=run, missing=tuple(missing),
        grid=grid_text,
    )


def _some(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _assess(
    wf: WorkingFolder,
    geo: _Geometry,
    montages: Sequence[MontageQc],
    parts: Sequence[PartQc],
    stitched: StitchedQc | None,
    job_id: int | None,
    broken: CsvTable | None,
    failures: CsvTable | None,
) -> tuple[list[StageQc], list[str]]:
    stages: list[StageQc] = []
    missing: list[str] = []

    def add(name: str, have: int, want: int, detail: str, hint: str) -> None:
        status = _status(have, want)
        stages.append(StageQc(name, status, detail))
        if status != "done":
            missing.append(f"{name}: {detail}; {hint}")

    if geo.montage_log is None:
        add("logs", 0, 1, geo.error or "no JSON logs",
            f"run `cellcrowd prepare`, or copy the json_logs folder into {wf.base}")
    else:
        detail = "both logs read" + (f"; {geo.error}" if geo.error else "")
        add("logs", 0 if geo.error else 1, 1, detail, "fix the chopper log")
    want = len(montages)
    for name, attr, what, hint in (
        ("montages", "raw", "raw montages", "run `cellcrowd prepare`"),
        ("annotations", "annotation", "downloaded annotations",
         "run `cellcrowd report` and `cellcrowd fetch`"),
        ("labels", "labels", "cleaned label montages", "run `cellcrowd clean`"),
    ):
        have = sum(bool(getattr(m, attr)) for m in montages)
        add(name, have, max(want, 1), f"{have} of {want} {what}", hint)
        if 0 < have < want:
            lacking = [m.name for m in montages if not getattr(m, attr)]
            missing.append(f"{len(lacking)} montage(s) without {what}: {_some(lacking)}")
    bad = [m.name for m in montages if m.error]
    if bad:
        missing.append(f"{len(bad)} label montage(s) could not be read: {_some(bad)}")
    slots = sum(len(p.expected_positions) for p in parts)
    for name, attr in (("movies (annotated)", "annotated_positions"),
                       ("movies (raw)", "raw_positions")):
        have = sum(len(getattr(p, attr)) for p in parts)
        add(name, have, max(slots, 1), f"{have} of {slots} part positions in movies/",
            "run `cellcrowd movies`")
    have_npz = sum(p.npz is not None for p in parts)
    add("npz", have_npz, max(len(parts), 1), f"{have_npz} of {len(parts)} part .npz files",
        "run `cellcrowd npz`")
    for part in parts:
        if part.npz_error:
            missing.append(f"part {part.part}: {part.npz_error}")
    frames = stitched.frames if stitched else 0
    add("stitched", frames, 1, f"{frames} stitched frames", "run `cellcrowd stitch`")
    if stitched is not None and stitched.error:
        missing.append(f"stitched movie: {stitched.error}")
    for name, path in (("trk", wf.trk), ("ctc", wf.ctc)):
        present = int(path.is_file() or (path.is_dir() and any(path.iterdir())))
        stages.append(StageQc(name, "done" if present else "missing",
                              f"{path.name} {'written' if present else 'not written'}"))
    if job_id is None:
        missing.append("broken links and download failures not checked: no job id given")
    else:
        links = len(_montages_in(broken))
        failed = len(failures.rows) if failures else 0
        files = [t.path.name for t in (broken, failures) if t is not None]
        found = f"from {', '.join(files)}" if files else (
            "no broken-link or download-failure CSV: nothing recorded, or the report and "
            "fetch stages have not run")
        stages.append(StageQc("job", "done" if not links and not failed else "partial",
                              f"job {job_id}: {links} montage(s) with broken links, "
                              f"{failed} failed download(s); {found}"))
        if links or failed:
            missing.append(f"job {job_id}: {links} montage(s) with broken links (re-upload "
                           f"them), {failed} failed download(s) (run `cellcrowd fetch` again)")
        for table in (broken, failures):
            if table is not None and table.error:
                missing.append(table.error)
    return stages, missing


# -- overlays ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Overlay:
    """One overlay image as written (or why it could not be)."""

    montage: str
    path: Path | None
    size: tuple[int, int] | None  # (width, height) of the PNG
    panels: tuple[str, ...]
    notes: tuple[str, ...]


def _grey(image: NDArray[np.generic]) -> NDArray[np.generic]:
    if image.ndim == 3:
        if image.shape[2] >= 3:
            grey: NDArray[np.generic] = image[..., :3].astype(np.float64).mean(axis=2)
            return grey
        return image[..., 0]
    return image


def _overlay_image(
    montage: MontageQc,
) -> tuple[NDArray[np.uint8] | None, tuple[str, ...], tuple[str, ...]]:
    """The overlay of one montage (None if nothing could be read), its panels, and notes."""
    notes: list[str] = []
    labels = annotation = None
    if montage.labels_path is not None:
        try:
            labels = np.asarray(read_image(montage.labels_path))
            if labels.ndim != 2 or labels.dtype.kind not in "ui":
                notes.append(f"{montage.labels_path.name} is not a label image")
                labels = None
        except InputError as exc:
            notes.append(str(exc))
    if montage.annotation_path is not None:
        try:
            annotation = decode_annotation(read_image(montage.annotation_path))
        except InputError as exc:
            notes.append(str(exc))
    shape = labels.shape if labels is not None else (
        annotation.shape if annotation is not None else None)
    if shape is None:
        return None, (), tuple(notes)
    raw: NDArray[np.generic] = np.zeros(shape, dtype=np.uint16)
    if montage.raw_path is not None:
        try:
            read = _grey(read_image(montage.raw_path))
            if read.shape == shape:
                raw = read
            else:
                notes.append(f"raw montage is {read.shape}, labels are {shape}: raw not shown")
        except InputError as exc:
            notes.append(str(exc))
    else:
        notes.append("no raw montage: black background")
    panels: list[NDArray[np.uint8]] = []
    names: list[str] = []
    if labels is not None:
        panels.append(outline_overlay(raw, labels))
        names.append("raw montage with the outlines of the cleaned labels")
    if annotation is not None:
        if annotation.shape == shape:
            panels.append(_annotation_panel(raw, annotation, labels))
            names.append("the downloaded annotation, cells filled in the colour of the "
                         "cleaned cell they became; white: painted pixels cleaning removed")
        else:
            notes.append(f"annotation is {annotation.shape}, labels are {shape}: not shown")
    gap = np.full((shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [gap, panel]
    return np.concatenate(pieces, axis=1), tuple(names), tuple(notes)


def _match_ids(
    annotation: NDArray[np.generic], labels: NDArray[np.generic]
) -> NDArray[np.int64]:
    """Each annotation pixel's id replaced by the cleaned id its annotation id overlaps most.

    Annotation ids overlapping no cleaned cell become 0.
    """
    ann = annotation.astype(np.int64).ravel()
    lab = labels.astype(np.int64).ravel()
    both = (ann != 0) & (lab != 0)
    if not both.any():
        return np.zeros(annotation.shape, dtype=np.int64)
    stride = int(lab.max()) + 1
    pairs, counts = np.unique(ann[both] * stride + lab[both], return_counts=True)
    ann_of, lab_of = np.divmod(pairs, stride)
    # For each annotation id, the pair with the largest count (ties: the smaller cleaned id).
    order = np.lexsort((lab_of, -counts, ann_of))
    first = np.ones(order.size, dtype=bool)
    first[1:] = ann_of[order[1:]] != ann_of[order[:-1]]
    lookup = np.zeros(int(ann.max()) + 1, dtype=np.int64)
    lookup[ann_of[order[first]]] = lab_of[order[first]]
    out: NDArray[np.int64] = lookup[annotation.astype(np.int64)]
    return out


def _annotation_panel(
    raw: NDArray[np.generic], annotation: NDArray[np.generic],
    labels: NDArray[np.generic] | None,
) -> NDArray[np.uint8]:
    # Dimmed, so that pure white only marks pixels cleaning removed.
    if labels is None:
        return fill_overlay(raw, annotation, dim=_DIM)
    panel = fill_overlay(raw, _match_ids(annotation, labels), dim=_DIM)
    panel[(annotation != 0) & (labels == 0)] = REMOVED_COLOUR
    return panel


def _write_overlays(wf: WorkingFolder, qc: QcSummary) -> list[_Overlay]:
    by_name = {m.name: m for m in qc.montages}
    written: list[_Overlay] = []
    for name in qc.overlays:
        image, panels, notes = _overlay_image(by_name[name])
        if image is None:
            written.append(_Overlay(name, None, None, panels, notes))
            continue
        path = write_image(wf.qc_overlay(name), image)
        written.append(_Overlay(name, path, (image.shape[1], image.shape[0]), panels, notes))
    keep = {o.path for o in written if o.path is not None}
    for old in list_images(wf.qc) if wf.qc.is_dir() else []:
        if old.name.endswith("_overlay.png") and old not in keep:
            logger.info("QC: removing the old overlay %s", old.name)
            remove_file(old)
    return written


# -- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.none { color: #999; text-align: center; }
.done { color: #1a7f37; font-weight: bold; }
.partial { color: #b36b00; font-weight: bold; }
.missing { color: #c62828; font-weight: bold; }
.bar { font-family: monospace; color: #3465a4; white-space: pre; }
.spark { font-size: 1.4em; letter-spacing: 1px; color: #3465a4; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ccc;
             image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #444; }
nav a { margin-right: 1em; }
.note { color: #666; font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if value is None:
        return '<td class="none">—</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="n">{int(value)}</td>'
    if isinstance(value, tuple):
        return f"<td>{_e(value)}</td>"
    return f"<td>{_e(value)}</td>"


def _table(table_id: str, header: Sequence[str], rows: Iterable[Sequence[object]],
           *, limit: int | None = None) -> str:
    rows = list(rows)
    shown = rows if limit is None else rows[:limit]
    out = [f'<table id="{_e(table_id)}">',
           "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    out += ["<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in shown]
    out.append("</tbody></table>")
    if len(shown) < len(rows):
        out.append(f'<p class="note">{len(rows) - len(shown)} more rows not shown.</p>')
    return "\n".join(out)


def _frames_text(frames: Sequence[int]) -> str | None:
    if not frames:
        return None
    low, high = min(frames), max(frames)
    return str(low) if low == high else f"{low}–{high}"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}-section">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def _stages_html(qc: QcSummary) -> str:
    rows = "\n".join(
        f'<tr><td>{_e(s.name)}</td><td class="{_e(s.status)}">{_e(s.status)}</td>'
        f"<td>{_e(s.detail)}</td></tr>" for s in qc.stages)
    table = ('<table id="stages"><thead><tr><th>stage</th><th>status</th><th>details</th>'
             f"</tr></thead><tbody>\n{rows}\n</tbody></table>")
    if qc.missing:
        items = "\n".join(f"<li>{_e(m)}</li>" for m in qc.missing)
        missing = f'<h3>Missing or incomplete</h3>\n<ul id="missing">\n{items}\n</ul>'
    else:
        missing = '<p id="missing">Nothing is missing.</p>'
    return table + "\n" + missing


def _montages_html(qc: QcSummary) -> str:
    if not qc.montages:
        return "<p>No montages: no logs and no montage images in this folder.</p>"
    header = ("montage", "part", "position", "raw montage", "annotation", "cleaned labels",
              "cells", "min cells/frame", "max cells/frame", "pixels removed", "pixels filled",
              "problem")
    rows = [(m.name, m.part, m.position, m.raw, m.annotation, m.labels, m.cells,
             m.min_cells_per_frame, m.max_cells_per_frame, m.pixels_removed, m.pixels_filled,
             m.error) for m in qc.montages]
    note = ('<p class="note">Cells count the distinct ids in the cleaned labels; cells per '
            "frame cover the montage's real frames (a last, partial montage has blank cells). "
            "Pixels removed/filled come from the cleaning stats of a run summary.</p>")
    return note + "\n" + _table("montages", header, rows)


def _overlays_html(qc: QcSummary, overlays: Sequence[_Overlay]) -> str:
    if not overlays:
        if any(m.labels or m.annotation for m in qc.montages):
            return "<p>No overlays were asked for (max_overlays is 0).</p>"
        return "<p>No overlays: no montage has cleaned labels or an annotation yet.</p>"
    out = []
    for i, o in enumerate(overlays):
        notes = "".join(f'<br><span class="note">{_e(n)}</span>' for n in o.notes)
        if o.path is None or o.size is None:
            out.append(f'<figure id="overlay-{i}"><figcaption>{_e(o.montage)}: no overlay'
                       f"{notes}</figcaption></figure>")
            continue
        src = _e(quote(o.path.name))
        zoom = max(1, min(4, _SHOW_WIDTH // max(o.size[0], 1)))  # small montages shown larger
        panels = "; ".join(f"{side}: {p}" for side, p in zip(("left", "right"), o.panels,
                                                              strict=False))
        out.append(
            f'<figure id="overlay-{i}"><a href="{src}"><img src="{src}" '
            f'width="{o.size[0] * zoom}" height="{o.size[1] * zoom}" '
            f'alt="{_e(o.montage)} overlay"></a>'
            f"<figcaption><strong>{_e(o.montage)}</strong> — {_e(panels)}{notes}"
            "</figcaption></figure>")
    return "\n".join(out)


def _parts_html(qc: QcSummary) -> str:
    if not qc.parts:
        return "<p>No parts: no logs and no <code>movies/</code> folder.</p>"
    header = ("part", "expected positions", "annotated positions", "raw positions",
              "missing positions", "annotated frames per position", "npz", "X shape",
              "y shape", "problem")
    rows = [(p.part, len(p.expected_positions), len(p.annotated_positions),
             len(p.raw_positions), ", ".join(p.missing_positions) or "none",
             _frames_text(p.frames), p.npz.name if p.npz else None, p.x_shape, p.y_shape,
             p.npz_error) for p in qc.parts]
    return _table("parts", header, rows)


def _job_html(qc: QcSummary) -> str:
    if qc.job_id is None:
        return "<p>No job id given: broken links and download failures were not checked.</p>"
    out = []
    for table_id, title, table, none in (
        ("broken-links", "Broken links", qc.broken_links,
         "No broken-link CSV (no broken links left, or the report stage has not run)."),
        ("failures", "Download failures", qc.failures,
         "No download-failure CSV (nothing failed, or the fetch stage has not run)."),
    ):
        out.append(f"<h3>{_e(title)}</h3>")
        if table is None:
            out.append(f"<p>{_e(none)}</p>")
        elif table.error:
            out.append(f'<p class="missing">{_e(table.error)}</p>')
        else:
            out.append(f"<p>{len(table.rows)} row(s) in <code>{_e(table.path.name)}</code>.</p>")
            out.append(_table(table_id, table.columns, table.rows, limit=MAX_TABLE_ROWS))
    return "\n".join(out)


def _sparkline(values: Sequence[int]) -> str:
    top = max(values, default=0)
    if top == 0:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[round(v / top * (len(_SPARK) - 1))] for v in values)


def _stitched_html(qc: QcSummary) -> str:
    s = qc.stitched
    if s is None:
        return "<p>No stitched movie yet.</p>"
    counts = s.cells_per_frame
    top = max(counts, default=0)
    lineage = f", {s.divisions} division(s) in the lineage" if s.divisions is not None else ""
    out = [f"<p>{s.frames} frames, {s.cells} distinct cells{_e(lineage)}; cells per frame "
           f"from {min(counts, default=0)} to {top}.</p>",
           f'<p class="spark" id="sparkline">{_e(_sparkline(counts))}</p>']
    if s.error:
        out.append(f'<p class="missing">{_e(s.error)}</p>')
    rows = "\n".join(
        f'<tr><td class="n">{t}</td><td class="n">{c}</td><td class="bar">'
        f"{'█' * (round(c / top * _BAR_WIDTH) if top else 0)}</td></tr>"
        for t, c in enumerate(counts))
    out.append('<table id="stitched"><thead><tr><th>frame</th><th>cells</th><th></th></tr>'
               f"</thead><tbody>\n{rows}\n</tbody></table>")
    return "\n".join(out)


def render_html(qc: QcSummary, overlays: Sequence[_Overlay] = ()) -> str:
    """The report page (self-contained, no JavaScript; every value escaped)."""
    wf = qc.wf
    # No absolute path: the page lives in the working folder, and a rerun elsewhere
    # (a copy, another machine) must give the same bytes.
    facts = [("identifier", wf.identifier)]
    if qc.grid:
        facts.append(("geometry", qc.grid))
    if qc.job_id is not None:
        facts.append(("job", str(qc.job_id)))
    facts_html = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    sections = [
        ("stages", "Stages", _stages_html(qc)),
        ("montages", "Montages", _montages_html(qc)),
        ("overlays", "Overlays", _overlays_html(qc, overlays)),
        ("parts", "Parts (movies and npz)", _parts_html(qc)),
        ("job", "Broken links and download failures", _job_html(qc)),
        ("stitched", "Stitched movie", _stitched_html(qc)),
    ]
    if qc.run:
        sections.insert(1, ("run", "Run summary", _table("run", ("item", "value"), qc.run)))
    nav = " ".join(f'<a href="#{a}-section">{_e(t)}</a>' for a, t, _ in sections)
    body = "\n".join(_section(a, t, b) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>cellcrowd QC: {_e(wf.identifier)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<h1>cellcrowd QC report: {_e(wf.identifier)}</h1>\n"
        f'<table id="facts">{facts_html}</table>\n<nav>{nav}</nav>\n{body}\n'
        "</body>\n</html>\n"
    )


def write_qc_report(
    wf: WorkingFolder,
    *,
    summary: Mapping[str, object] | None = None,
    max_overlays: int = 12,
    job_id: int | None = None,
    qc: QcSummary | None = None,
) -> Path:
    """Write ``qc/index.html`` and the overlay PNGs of an evenly spaced sample of montages.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder (any stages done; what is missing is listed).
    summary : mapping, optional
        Numbers of a run to show, see :func:`collect_qc` (a time stamp belongs
        here: the page itself holds none, so reruns are byte-identical).
    max_overlays : int
        Montages that get an overlay image ``qc/{montage}_overlay.png``.
    job_id : int, optional
        The job whose broken-link and download-failure CSVs are shown.
    qc : QcSummary, optional
        A summary already made by :func:`collect_qc` (then ``summary`` and
        ``job_id`` must not be given; its overlay choice is used).

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
    wf = qc.wf
    overlays = _write_overlays(wf, qc)
    path = atomic_write_text(wf.qc_index, render_html(qc, overlays))
    logger.info("QC report written to %s (%d overlay(s); %d thing(s) missing)",
                path, sum(o.path is not None for o in overlays), len(qc.missing))
    return path
