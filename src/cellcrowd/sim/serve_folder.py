"""Simulated jobs for any prepared working folder: from a label movie or earlier annotations.

``cellcrowd emulator serve FOLDER`` serves the units of ``FOLDER``'s upload CSV. The
simulated crowd needs to know what to paint:

* :func:`crowd_from_labels` (``--labels DIR``): a label movie the user gives, one
  full-size integer label frame per raw frame (natural order, e.g. a segmentation
  model's output). Each montage's labels are cut and laid out exactly as ``prepare``
  cut the raw frames, then painted by the simulated annotators.
* :func:`crowd_from_annotations` (``--annotations DIR``): the annotation PNGs of an
  earlier job (``{montage}_annotation.png``, as ``fetch`` or the notebook's
  ``save_annotations_from_csv`` wrote them), served unchanged, one judgment per unit;
  montages without one are left out of the job (and logged).

Without either, :func:`cellcrowd.sim.crowd.crowd_from_folder` paints the folder's
``truth/`` montages (synthetic data only); :func:`folder_job` picks one of the three.

``--live SECONDS`` (:func:`live_job`) serves the job still running: its units complete
over about that many seconds of wall time, in a random (seeded) order, and signed
webhooks go to ``--webhook URL`` (with retries and an occasional duplicate).
:func:`served_counts` sums up what an emulator served (printed when it stops).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..appen.report import montage_from_url
from ..errors import InputError
from ..files import list_images, read_image
from ..layout import WorkingFolder
from .crowd import (
    CrowdConfig,
    CrowdJob,
    SourceRow,
    crowd_from_folder,
    read_upload_csv,
    simulate_crowd,
)
from .emulator import Emulator
from .live import LiveJob, WallClock, WebhookSender

__all__ = ["crowd_from_annotations", "crowd_from_labels", "folder_job", "live_job",
           "served_counts"]

logger = logging.getLogger(__name__)

_UINT16_MAX = int(np.iinfo(np.uint16).max)
#: One judgment per unit, never broken: the earlier job's annotation is served as it was.
_REPLAY = CrowdConfig(workers_per_unit=(1, 1), tainted_share=0.0, broken_share=0.0,
                      reupload=False, artifacts=False)


def _rows(wf: WorkingFolder) -> list[SourceRow]:
    rows = read_upload_csv(wf.upload_csv)
    if not rows:
        raise InputError("the upload CSV has no rows: nothing to annotate",
                         path=wf.upload_csv)
    return rows


def _label_frame(path: Path, shape: tuple[int, int]) -> NDArray[np.uint16]:
    frame = read_image(path)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim != 2 or frame.dtype.kind not in "biu":
        raise InputError(
            f"not a label image ({frame.dtype}, shape {frame.shape}): give one integer "
            "label frame per raw frame, 0 for background", path=path)
    if tuple(frame.shape) != shape:
        raise InputError(
            f"label frame is {frame.shape[1]}x{frame.shape[0]} pixels but the raw frames "
            f"are {shape[1]}x{shape[0]}: give full-size label frames", path=path)
    if frame.size and (int(frame.min()) < 0 or int(frame.max()) > _UINT16_MAX):
        raise InputError(f"label values run from {frame.min()} to {frame.max()}, outside "
                         "0…65535", path=path)
    return frame.astype(np.uint16)


def crowd_from_labels(
    wf: WorkingFolder,
    labels_dir: str | Path,
    *,
    job_id: int,
    config: CrowdConfig | None = None,
    seed: int = 0,
) -> CrowdJob:
    """Simulate the crowd on a prepared folder, painting from a full-size label movie.

    Parameters
    ----------
    wf : WorkingFolder
        Made by ``cellcrowd prepare`` (upload CSV and both logs).
    labels_dir : Path
        One label frame per frame of the raw folder, in natural order: frame ``t`` of
        the movie is the ``t``-th file (counted from the chopper log's ``frame_offset``,
        as for the raw frames).
    job_id, config, seed
        As for :func:`cellcrowd.sim.crowd.simulate_crowd`.

    Raises
    ------
    InputError
        The folder has no labels for a frame of the movie, or a label frame is not a
        full-size integer image (checked when the montage is first painted).
    """
    from ..movies import read_movie_geometry

    movie = read_movie_geometry(wf)
    frames = list_images(labels_dir)
    offset = movie.chopper.frame_offset or 0
    wanted = offset + (movie.num_frames if movie.num_frames is not None
                       else movie.count * movie.montage.montage_len)
    if len(frames) < wanted:
        raise InputError(
            f"{len(frames)} label frames for a movie of {wanted} frames (as the logs say): "
            "give one label frame per raw frame", path=Path(labels_dir))
    grid, length = movie.grid, movie.montage.montage_len
    layout = movie.montage.layout(grid.tile_shape)

    def load(montage: str) -> NDArray[Any]:
        key = montage_from_url(montage)[1]
        start = offset + key.montage * length
        tiles = [grid.tile(_label_frame(path, grid.frame_shape), key.position)
                 for path in frames[start:start + movie.frames_in(key.montage)]]
        return layout.make(np.stack(tiles))

    return simulate_crowd(_rows(wf), functools.lru_cache(maxsize=4)(load), job_id=job_id,
                          layout=layout, config=config or CrowdConfig(), seed=seed,
                          title=f"cellcrowd: {wf.identifier} (labels from {labels_dir})")


def crowd_from_annotations(
    wf: WorkingFolder, annotations_dir: str | Path, *, job_id: int, seed: int = 0
) -> CrowdJob:
    """A job that serves an earlier job's annotation PNGs, one judgment per unit.

    ``annotations_dir`` holds ``{montage}_annotation.png`` files; each row of the upload
    CSV whose montage has one becomes a unit with that image as its annotation (bytes
    re-encoded, pixels unchanged). Rows without one are left out and logged.

    Raises
    ------
    InputError
        No row of the upload CSV has an annotation in ``annotations_dir``.
    """
    folder = Path(annotations_dir)
    rows: list[SourceRow] = []
    missing: list[SourceRow] = []
    for row in _rows(wf):
        name = montage_from_url(row.image_url)[0]
        (rows if (folder / f"{name}_annotation.png").is_file() else missing).append(row)
    if not rows:
        raise InputError(
            "no annotation for any row of the upload CSV: expected "
            "'{montage}_annotation.png' files (as fetch or save_annotations_from_csv write "
            "them)", path=folder)
    if missing:
        logger.warning("%d of %d montages have no annotation in %s and are left out of the "
                       "job", len(missing), len(missing) + len(rows), folder)

    def load(montage: str) -> NDArray[Any]:
        return read_image(folder / f"{montage}_annotation.png")

    def unchanged(image: NDArray[np.uint8], **_: Any) -> NDArray[np.uint8]:
        return image

    return simulate_crowd(rows, load, job_id=job_id, config=_REPLAY, seed=seed,
                          painter=unchanged,
                          title=f"cellcrowd: {wf.identifier} (annotations from {folder})")


def folder_job(wf: WorkingFolder, *, job_id: int, seed: int = 0,
               labels: str | Path | None = None,
               annotations: str | Path | None = None) -> CrowdJob:
    """The job ``emulator serve`` serves: painted from ``labels``, ``annotations`` or truth."""
    if labels is not None and annotations is not None:
        raise ValueError("give labels or annotations, not both")
    if labels is not None:
        return crowd_from_labels(wf, labels, job_id=job_id, seed=seed)
    if annotations is not None:
        return crowd_from_annotations(wf, annotations, job_id=job_id, seed=seed)
    return crowd_from_folder(wf, job_id=job_id, seed=seed)


def live_job(job: CrowdJob, *, seconds: float, seed: int = 0, webhook_url: str | None = None,
             webhook_token: str = "", duplicate_share: float = 0.1) -> LiveJob:
    """``job`` still running: its units complete over ``seconds`` of wall time from now.

    With ``webhook_url``, each unit's completion (and then the job's) is POSTed there,
    signed with ``webhook_token``; a failed delivery is retried a few times; about
    ``duplicate_share`` of the deliveries (chosen by ``seed``, at least one) are sent
    twice, as the service sometimes does.

    Raises
    ------
    ValueError
        ``seconds`` is not positive, or a webhook URL comes without a token.
    """
    sender = None
    if webhook_url is not None:
        if not webhook_token:
            raise ValueError("webhooks need the job's webhook token to sign them")
        deliveries = len({j.unit_id for j in job.judgments}) + 1  # units, then the job
        rng = np.random.default_rng(seed + 1)
        duplicated = {int(i) for i in np.flatnonzero(rng.random(deliveries) < duplicate_share)}
        duplicated = duplicated or {int(rng.integers(deliveries))}
        sender = WebhookSender(webhook_url, webhook_token, duplicated=duplicated)
    return LiveJob(job, duration=seconds, clock=WallClock(), seed=seed, webhooks=sender)


def served_counts(emulator: Emulator) -> dict[str, int]:
    """What ``emulator`` served: requests, annotations (and distinct ones), webhooks.

    Keys: ``requests``, ``annotations``, ``distinct_annotations`` (different annotation
    paths among the latest recorded requests), ``webhooks_delivered``,
    ``webhooks_duplicated``, ``webhooks_given_up`` (the last three 0 without webhooks).
    """
    paths = [r.path for r in emulator.api_requests if r.path.endswith("/annotation.png")]
    paths += [r.path for r in emulator.storage_requests if r.path.startswith("/annotations/")]
    webhooks: Counter[str] = Counter()
    for live in emulator.live.values():
        if live.webhooks is not None:
            webhooks.update(live.webhooks.counts)
    return {"requests": emulator.counts["request"], "annotations": len(paths),
            "distinct_annotations": len(set(paths)),
            "webhooks_delivered": webhooks["delivered"],
            "webhooks_duplicated": webhooks["duplicated"],
            "webhooks_given_up": webhooks["given_up"]}
