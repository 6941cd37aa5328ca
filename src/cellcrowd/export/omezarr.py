"""The stitched movie as OME-Zarr (NGFF 0.5, zarr format 3): raw movie, tracked labels.

Layout of ``{id}.ome.zarr`` (written with ``ome-zarr``'s writer, read with its
reader or napari's ``napari-ome-zarr`` plugin)::

    {id}.ome.zarr/            image: axes (t, c, y, x), the raw movie's dtype
      s0, s1, …               pyramid levels, y and x halved per level
      labels/tracks/          labels: axes (t, y, x), uint16, value = track id
        s0, s1, …             pyramid levels (nearest neighbour)

Every level is chunked by frame (one chunk = one frame, all channels), and the
movie is written two frames at a time: frames are read lazily (a dask array of one
delayed read per frame), so memory does not grow with the movie's length. Level
``s0`` of the labels is the stitched labels exactly. A grey raw movie has one
channel; an RGB one has three. ``image-label`` metadata carries a colour per
track and its properties: ``track_id``, ``parent`` (0: none), ``first_frame``,
``last_frame``, ``montages`` (the montages its pixels came from), and, when the
consensus reports give them, ``support`` and ``agreement``
(:mod:`cellcrowd.export.cells`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..files import read_image
from ..layout import WorkingFolder
from .cells import CellTable, cell_table, stitched_frame_paths
from .zarrstore import ExportTarget, require

__all__ = ["LABELS_NAME", "export_omezarr", "label_colour", "write_omezarr"]

logger = logging.getLogger(__name__)

#: The name of the tracked labels under ``labels/``.
LABELS_NAME = "tracks"
_MIN_LEVEL_SIZE = 32
_MAX_LEVELS = 5
#: Frames written at once. Most of the time goes to skimage's resize of the raw pyramid
#: and zarr's compression, which release the GIL: two threads write the 2048^2 x 200
#: benchmark movie in 131 s instead of 192 s one frame at a time, for about 65 MB more
#: a thread at 2048^2 (the resize's float copies), whatever the movie's length.
_THREADS = 2


def label_colour(label: int) -> list[int]:
    """A bright RGBA colour for a label, the same on every run (golden-ratio hues).

    >>> label_colour(1), label_colour(1) == label_colour(2)
    ([25, 92, 255, 255], False)
    """
    import colorsys

    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def _scale_factors(shape: tuple[int, int]) -> tuple[int, ...]:
    factors: list[int] = []
    while len(factors) + 1 < _MAX_LEVELS and min(shape) // 2 ** (len(factors) + 1) >= \
            _MIN_LEVEL_SIZE:
        factors.append(2 ** (len(factors) + 1))
    return tuple(factors)


def _raw_frame(path: Path, shape: tuple[int, int]) -> NDArray[Any]:
    """One raw frame as (1, C, H, W)."""
    frame = read_image(path)
    if frame.shape[:2] != shape or frame.ndim not in (2, 3):
        raise InputError(f"raw frame is {frame.shape}, the labels {shape}: run the stitch "
                         "stage again", path=path)
    frame = frame[..., None] if frame.ndim == 2 else frame
    return np.moveaxis(frame, -1, 0)[None]


def _label_frame(path: Path) -> NDArray[np.uint16]:
    return read_image(path).astype(np.uint16)[None]


def _lazy_movie(paths: list[Path], read: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    dask, da = require("dask"), require("dask.array")
    return da.concatenate([da.from_delayed(dask.delayed(read)(p), shape=shape, dtype=dtype)
                           for p in paths])


def _writer() -> Any:
    """``ome_zarr.writer`` (its import builds a deprecated default ``Scaler``: not ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Call to deprecated class Scaler",
                                DeprecationWarning)
        return require("ome_zarr.writer")


def write_omezarr(store: Any, raw_paths: list[Path], label_paths: list[Path],
                  table: CellTable) -> None:
    """Write the OME-Zarr of a stitched movie into a zarr store, frame by frame.

    Parameters
    ----------
    store : zarr store
        Where to write (emptied first).
    raw_paths, label_paths : list of Path
        The raw and label frames, one per frame, in order.
    table : CellTable
        The cells of ``label_paths`` (:func:`cellcrowd.export.cells.cell_table`; its
        nodes are not used).

    Raises
    ------
    InputError
        A raw frame's size differs from the labels'.
    """
    zarr, writer = require("zarr"), _writer()
    first = _raw_frame(raw_paths[0], table.shape)
    raw = _lazy_movie(raw_paths, lambda p: _raw_frame(p, table.shape), first.shape,
                      first.dtype)
    labels = _lazy_movie(label_paths, _label_frame, (1, *table.shape), np.uint16)
    factors = _scale_factors(table.shape)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    present = sorted(table.lineage)
    # A few frames at a time: each of dask's threads computes one chunk (a frame) after
    # another, pyramid included.
    with require("dask").config.set(scheduler="threads", num_workers=_THREADS):
        writer.write_image(raw, group, scale_factors=factors, axes="tcyx",
                           storage_options={"chunks": first.shape}, name="raw movie")
        writer.write_labels(
            labels, group, name=LABELS_NAME, scaler=None, scale_factors=factors, axes="tyx",
            storage_options={"chunks": (1, *table.shape)},
            label_metadata={
                "colors": [{"label-value": lab, "rgba": label_colour(lab)} for lab in present],
                "properties": [table.properties(lab) for lab in present],
            })


def export_omezarr(wf: WorkingFolder, target: ExportTarget | None = None, *,
                   table: CellTable | None = None) -> str:
    """Write ``{id}.ome.zarr`` of the stitched movie; return its location.

    Parameters
    ----------
    wf : WorkingFolder
        Holds the stitched movie (:func:`cellcrowd.stitch.stitch_movies`).
    target : ExportTarget, optional
        Where (default: ``wf.zarr_exports``).
    table : CellTable, optional
        The cells, when already read.

    Raises
    ------
    InputError
        The stitched movie, its raw frames or its lineage are missing.
    """
    target = target or ExportTarget(str(wf.zarr_exports))
    raw_paths = stitched_frame_paths(wf, "raw")
    table = table or cell_table(wf, nodes=False)
    if len(raw_paths) != table.frames:
        raise InputError(f"{len(raw_paths)} stitched raw frames for {table.frames} label "
                         "frames: OME-Zarr needs the raw movie; set the raw folder and run "
                         "the stitch stage again", path=wf.stitched)
    name = wf.omezarr_name
    with target.writing(name) as store:
        write_omezarr(store, raw_paths, stitched_frame_paths(wf, "annotated"), table)
    logger.info("wrote %s: %d frames, %d tracks", target.url(name), table.frames,
                len(table.lineage))
    return target.url(name)

