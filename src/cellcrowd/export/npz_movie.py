"""The whole-movie training files: every part of each position, and the stitched movie.

``npz/{id}_full_movie.npz`` (:func:`write_full_movie_npz`) and
``npz/{id}_stitched_movie.npz`` (:func:`write_stitched_movie_npz`); their keys are
described in :mod:`cellcrowd.export.npz`, which re-exports both functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, LogError
from ..files import natural_key
from ..job import Job
from ..layout import WorkingFolder
from .npz_arrays import (
    TrainingArrays,
    build_training_arrays,
    part_folder_numbers,
    save_npz,
    select_channels,
)

__all__ = ["write_full_movie_npz", "write_stitched_movie_npz"]

logger = logging.getLogger(__name__)


def _all_parts(wf: WorkingFolder, job: Job | None) -> list[int]:
    """Every part number: from the job's montage log, else the ``movies/part{N}`` folders."""
    try:
        return list(Job.of(wf, job).parts)
    except LogError as exc:
        logger.warning("parts taken from the movies folder (%s)", exc)
    return part_folder_numbers(wf)


def write_full_movie_npz(
    wf: WorkingFolder,
    *,
    samples_to_drop: Collection[str] = (),
    channels: Sequence[int] | None = None,
    link: bool = True,
    compressed: bool = True,
    min_iou: float = 0.3,
    job: Job | None = None,
) -> Path:
    """Write ``npz/{id}_full_movie.npz``: all parts of each position, one cell one id.

    Each position's parts (``movies/part{N}/x_XX_y_YY``, every part the montage
    log promises) are put one after another. With ``link`` (the default) the
    label ids are joined across part boundaries with
    :func:`cellcrowd.stitch.link_parts`: a cell keeps its id for the whole
    movie of its position; a cell dividing across a boundary ends there and its
    daughters (like any cell that could not be linked) get new ids. Ids are
    renumbered ``1..n`` per position. Keys as in the module docstring, plus
    ``linked`` and ``part_starts``.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder.
    samples_to_drop : collection of str
        Position names (``"x_00_y_01"``) to leave out.
    channels : sequence of int, optional
        Raw channel indices to keep; default all.
    link : bool
        Join the cells' ids across parts (False: each part keeps its own ids, as
        they are in ``movies/``).
    compressed : bool
        Deflate-compressed (default) or stored members (see :func:`save_npz`).
    min_iou : float
        ``min_iou`` of :func:`cellcrowd.stitch.link_parts`.
    job : Job, optional
        The job, when already loaded for ``wf`` (else its logs are read for the parts).

    Returns
    -------
    Path
        ``wf.npz_full_movie``.

    Raises
    ------
    InputError
        A part folder is missing or unreadable (see :func:`build_training_arrays`),
        or no position is annotated in every part.
    """
    from ..stitch import link_parts

    parts = _all_parts(wf, job)
    per_part = [build_training_arrays(wf.part_dir(part), samples_to_drop=samples_to_drop,
                                      channels=channels) for part in parts]
    common = [p for p in per_part[0].positions if all(p in a.positions for a in per_part)]
    missing = sorted({p for a in per_part for p in a.positions + a.missing_positions}
                     - set(common), key=natural_key)
    if not common:
        raise InputError("no position is annotated in every part: a full movie needs them "
                         "all; set outputs.npz_full_movie = false, or annotate the missing "
                         "montages", path=wf.movies)
    starts = np.cumsum([0] + [a.X.shape[1] for a in per_part[:-1]]).astype(np.int64)
    xs, ys = [], []
    for name in common:
        index = [a.positions.index(name) for a in per_part]
        xs.append(np.concatenate([a.X[i] for a, i in zip(per_part, index, strict=True)]))
        labels = [a.y[i, ..., 0] for a, i in zip(per_part, index, strict=True)]
        if link:
            movie, report = link_parts(labels, min_iou=min_iou)
            logger.info("%s: %d cells over %d parts (%s carried over each boundary)", name,
                        int(movie.max(initial=0)), len(parts), list(report.links))
        else:
            movie = np.concatenate(labels)
        ys.append(movie.astype(np.int32)[..., None])
    arrays = TrainingArrays(np.stack(xs), np.stack(ys), common, missing)
    return save_npz(wf.npz_full_movie, arrays, part=-1, identifier=wf.identifier,
                    frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(link), "part_starts": starts})


def write_stitched_movie_npz(
    wf: WorkingFolder,
    *,
    channels: Sequence[int] | None = None,
    compressed: bool = True,
) -> Path:
    """Write ``npz/{id}_stitched_movie.npz`` from the stitched movie (``stitched/``).

    ``X`` ``(1, frames, H, W, channels)`` float32 holds the stitched raw frames,
    ``y`` ``(1, frames, H, W, 1)`` int32 the stitched labels (one id per cell for
    the whole movie, as :func:`cellcrowd.stitch.stitch_movies` linked them);
    ``lineage`` is their DeepCell lineage as JSON text and ``linked`` is True.

    Parameters
    ----------
    wf : WorkingFolder
        The working folder (the stitch stage has run).
    channels : sequence of int, optional
        Raw channel indices to keep; default all.
    compressed : bool
        Deflate-compressed (default) or stored members (see :func:`save_npz`).

    Returns
    -------
    Path
        ``wf.npz_stitched_movie``.

    Raises
    ------
    InputError
        The stitched frames or lineage are missing or unreadable, there are no
        stitched raw frames, or ``channels`` selects nothing that exists.
    """
    from ..stitch import read_stitched

    raw, labels, lineage = read_stitched(wf)
    raw_dir = wf.stitched_frame("raw", 0).parent
    if raw is None:
        raise InputError("no stitched raw frames for the stitched labels: put the raw movie "
                         "in the raw folder and run the stitch stage again", path=raw_dir)
    x = raw[..., None] if raw.ndim == 3 else raw
    if x.shape[1:3] != labels.shape[1:]:
        raise InputError(f"stitched raw frames are {x.shape[1]}x{x.shape[2]} but the label "
                         f"frames are {labels.shape[1]}x{labels.shape[2]}: run the stitch "
                         "stage again", path=raw_dir)
    x = select_channels(x, channels, raw_dir)
    arrays = TrainingArrays(x[None].astype(np.float32), labels.astype(np.int32)[None, ..., None],
                            ["stitched"], [])
    text = json.dumps({str(k): v for k, v in sorted(lineage.items())}, sort_keys=True)
    return save_npz(wf.npz_stitched_movie, arrays, part=-1, identifier=wf.identifier,
                    frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(True), "lineage": np.str_(text)})
