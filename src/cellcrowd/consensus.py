"""Several annotators' label montages of one unit -> one consensus label montage.

A job's full report holds every judgment, and several crowd workers may
annotate the same montage (FORMATS.md section 6). Binary-mask aggregators
(majority vote, STAPLE) do not know about instance ids, so cells are first
matched across annotators, then each matched cell's pixels are fused by a
trust-weighted vote.

:func:`merge_labels`
    Arrays in, consensus array and :class:`ConsensusReport` out.
:func:`merge_label_files`
    Cleaned uint16 label PNGs in, one uint16 PNG out (written atomically).
:func:`merge_task` / :func:`merge_tasks`
    The picklable per-montage function for executors, and a runner for many.
:func:`judgment_weights`
    Weights from the report's worker ``trust`` and ``tainted`` columns.

The rules (all sums are over annotators with a positive weight; ``W`` is their
total weight):

1. **Order.** Annotators are ranked by decreasing weight, equal weights by a
   hash of their labels renumbered by first appearance; an annotator's cells
   are ranked by first appearance. These ranks only break ties (below), and
   they do not depend on the order of the inputs nor on the id values each
   annotator used, so neither does the result.
2. **Matching.** Every pair of annotators is matched by Hungarian assignment
   (maximum total IoU) over pairs of cells with an IoU of at least
   ``min_iou``. IoUs are computed over the whole montage (ids are
   montage-wide: a cell spans several frames). The matched pairs are then
   joined into consensus cells, highest IoU first, skipping a join that would
   put two cells of one annotator together. So a cell drawn 1 px too large
   and one drawn 1 px too small end up together when both match a third
   annotator's cell, even if they do not match each other.
3. **Support.** The support of a consensus cell is the summed weight of its
   members' annotators. A cell is kept when its support is more than
   ``min_support * W``; otherwise it is dropped and every member is reported
   (:class:`DroppedCell`).
4. **Pixels.** A pixel belongs to a kept consensus cell when the summed weight
   of the members that put it in their matched cell is more than
   ``min_support * support``. A pixel claimed by several cells goes to the one
   with the larger vote; ties go to the cell whose first member ranks first
   (rule 1). Rule 2's joins are taken in order of IoU, ties by rank.
   Comparisons ignore rounding below ``1e-9 * W``.
5. **Ids.** The output is numbered ``1..n`` in order of each cell's first
   pixel: raster order of the montage, or, when a ``layout`` is given, frame
   order then raster order within the frame.

Options (used by the job-wide consensus, :mod:`cellcrowd.jobconsensus`):
``min_cover`` also matches two cells when their overlap covers that share of the
smaller one (:mod:`cellcrowd.cellmatch`); ``odds`` keeps a cell whose drawers'
Dawid-Skene log-odds outweigh the others' (:mod:`cellcrowd.reliability`), and
then a cell most annotators drew is kept whatever their weights; ``reliable``
keeps, with two annotators, the lone cells of a reliable one; ``smooth`` settles
near ties of the pixel vote by the neighbourhood (:mod:`cellcrowd.cellfuse`).
The report lists every output cell with its support and agreement.

With ``min_support = 0.5`` and equal weights that is a strict majority: a cell
seen by 2 of 3 annotators is kept, one seen by 1 of 3 (or 1 of 2) is dropped;
a pixel is in when most of the cell's annotators put it there. With a single
annotator every cell is kept as it is.

Why no per-frame matching: the same id in several frames of one montage is the
same cell, so matching whole-montage masks is both correct and stronger (a
cell is matched by all its frames at once). The vote is per pixel, so fusing
per frame or over the whole montage gives the same result; a ``layout`` only
checks the size, clears anything painted in the buffers between frames and
orders the output ids by frame.

Weights: callers should pass each judgment's worker trust as its weight and
give tainted workers (who later failed quality control) weight 0, which
:func:`judgment_weights` does. An annotator of weight 0 takes no part in the
merge; it is still scored against the consensus.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .agreement import (
    AnnotatorAgreement,
    CellRecord,
    ConsensusReport,
    DroppedCell,
    annotator_agreement,
)
from .cellfuse import fuse_pixels
from .cellmatch import Cells, compact, match_cells, overlap_iou
from .errors import AnnotationError, CellcrowdError, GeometryError
from .executor import Executor, run_tasks
from .files import read_image, write_image
from .geometry import MontageLayout
from .labelcheck import check_label_image, fits_uint16

__all__ = [
    "AnnotatorAgreement",
    "CellRecord",
    "ConsensusReport",
    "DroppedCell",
    "MergeResult",
    "MergeTask",
    "flatten_labels",
    "judgment_weights",
    "merge_label_files",
    "merge_labels",
    "merge_task",
    "merge_tasks",
    "read_labels",
]

logger = logging.getLogger(__name__)

_REL_TOL = 1e-9


# -- validation ------------------------------------------------------------------------------


def _check_images(label_images: Sequence[NDArray[np.generic]]) -> list[NDArray[np.generic]]:
    images = [np.asarray(image) for image in label_images]
    if not images:
        raise ValueError("no label images to merge: pass at least one annotator's labels")
    for i, image in enumerate(images):
        check_label_image(image, what=f"label image {i}", max_id=None,
                          hint=": decode and clean annotations first (cellcrowd.labels)")
        if image.shape != images[0].shape:
            raise ValueError(
                f"label image {i} has shape {image.shape} but label image 0 has shape "
                f"{images[0].shape}: all judgments of one montage have its size"
            )
    return images


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ValueError(f"got {len(values)} weights for {count} label images: pass one each")
    bad = [w for w in values if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"weights must be finite and >= 0, got {bad[0]!r}")
    if not any(values):
        raise ValueError(
            "every weight is 0, so no annotator counts: pass equal weights (or use "
            "judgment_weights, which falls back to them)"
        )
    return values


def _check_params(min_iou: float, min_support: float, min_cover: float | None = None) -> None:
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be above 0 and at most 1, got {min_iou!r}")
    if min_cover is not None and not 0 < min_cover <= 1:
        raise ValueError(f"min_cover must be above 0 and at most 1, got {min_cover!r}")
    if not 0 <= min_support < 1:
        raise ValueError(f"min_support must be at least 0 and below 1, got {min_support!r}")


# -- building blocks -------------------------------------------------------------------------


def _dropped(order: list[int], cells: list[Cells], group_of: list[NDArray[np.int64]],
             share: NDArray[np.float64], kept: NDArray[np.bool_], present: NDArray[np.bool_]
             ) -> tuple[tuple[DroppedCell, ...], tuple[int, ...]]:
    """Every member of a consensus cell missing from the output, by annotator and id,
    and how many annotators found each (the members of its group)."""
    members = np.zeros(share.size, dtype=np.int64)
    for g in group_of:
        members += np.bincount(g[1:], minlength=share.size)
    dropped = []
    for i, c, g in zip(order, cells, group_of, strict=True):
        for cid in (np.flatnonzero(~present[g[1:]]) + 1).tolist():
            group = int(g[cid])
            dropped.append((DroppedCell(i, int(c.ids[cid - 1]), int(c.areas[cid - 1]),
                                        float(share[group]),
                                        "overruled" if kept[group] else "support"),
                            int(members[group])))
    dropped.sort()
    return tuple(d for d, _ in dropped), tuple(n for _, n in dropped)


def _likely(group_of: list[NDArray[np.int64]], odds: list[tuple[float, float]], groups: int,
            prior_odds: float) -> NDArray[np.bool_]:
    """Groups whose log-odds of being a cell (prior plus each annotator's word) is >= 0."""
    score = np.full(groups, float(prior_odds))
    for g, (drew, missed) in zip(group_of, odds, strict=True):
        member = np.zeros(groups, dtype=bool)
        member[g[1:]] = True
        score += np.where(member, drew, missed)
    out: NDArray[np.bool_] = score >= 0
    return out


def _cell_records(cells: list[Cells], group_of: list[NDArray[np.int64]],
                  share: NDArray[np.float64], consensus: Cells) -> tuple[CellRecord, ...]:
    """Support, number of annotators and their mean IoU with it, for each output cell."""
    group = consensus.ids - 1  # the group of output id k at [k - 1]
    members = np.zeros(share.size, dtype=np.int64)
    iou_sum = np.zeros(share.size)
    for c, g in zip(cells, group_of, strict=True):
        members += np.bincount(g[1:], minlength=share.size)
        rows, cols, iou = overlap_iou(c, consensus)
        same = g[rows] == group[cols - 1]
        iou_sum += np.bincount(group[cols[same] - 1], weights=iou[same], minlength=share.size)
    return tuple(
        CellRecord(k + 1, round(float(share[gi]), 6), int(members[gi]),
                   round(float(iou_sum[gi] / max(members[gi], 1)), 6),
                   bool(2 * members[gi] <= len(cells)))
        for k, gi in enumerate(group.tolist()))


def flatten_labels(image: NDArray[np.generic], layout: MontageLayout | None, index: int = 0
                   ) -> NDArray[np.generic]:
    """A label montage as one flat array of its frames' pixels (buffers left out)."""
    if layout is None:
        return image.ravel()
    if image.shape != layout.montage_shape:
        raise GeometryError(
            f"label image {index} is {image.shape[0]}x{image.shape[1]} pixels, but the layout's "
            f"montages are {layout.montage_shape[0]}x{layout.montage_shape[1]}: check that the "
            "labels and the montage log belong to the same job"
        )
    return layout.read(image).ravel()


# -- the merge -------------------------------------------------------------------------------


def merge_labels(
    label_images: Sequence[NDArray[np.generic]],
    *,
    weights: Sequence[float] | None = None,
    min_iou: float = 0.5,
    min_support: float = 0.5,
    layout: MontageLayout | None = None,
    min_cover: float | None = None,
    smooth: bool = False,
    odds: Sequence[tuple[float, float]] | None = None,
    prior_odds: float = 0.0,
    reliable: Sequence[bool] | None = None,
) -> tuple[NDArray[np.int32], ConsensusReport]:
    """Merge several annotators' label montages of one unit into one (trust-weighted vote).

    The rules (order, matching, support, pixel vote, ids) are those of the
    module docstring (:mod:`cellcrowd.consensus`), in short: cells are matched
    across annotators by whole-montage IoU (Hungarian, at least ``min_iou``),
    a matched cell is kept when the weight of the annotators who found it is
    more than ``min_support`` of the total, and a pixel is in it when more than
    ``min_support`` of that weight put it there. The result does not depend on
    the order of the inputs nor on their id values.

    Parameters
    ----------
    label_images : sequence of ndarray of int, shape (H, W)
        One cleaned label montage per annotator (0 background; ids are the
        annotator's own, one id per cell across the montage's frames). Not modified.
    weights : sequence of float, optional
        One weight >= 0 per annotator (worker trust; 0 for tainted workers, see
        :func:`judgment_weights`); not all 0. Default: equal weights.
    min_iou : float
        Smallest matching score (IoU) for two cells to be the same cell, in (0, 1].
    min_support : float
        Fraction of weight a cell and each of its pixels must exceed, in [0, 1).
    layout : MontageLayout, optional
        The montage layout: sizes are checked, pixels in buffers are ignored and
        output ids follow frame order.
    min_cover : float, optional
        Also match two cells when their overlap covers at least this share of the
        smaller one (small and edge cells; :mod:`cellcrowd.cellmatch`), in (0, 1].
    smooth : bool
        Decide contested pixels by their neighbourhood's vote (:mod:`cellcrowd.cellfuse`).
    odds : sequence of (float, float), optional
        One per annotator: the log-odds that a cell is real when the annotator drew
        it, and when it did not (a Dawid-Skene model, :mod:`cellcrowd.reliability`).
        Given, a matched cell is kept when more than ``min_support`` of the
        annotators who take part drew it (each counts once: the weights then only
        fuse pixels), or when ``prior_odds`` plus the odds of every annotator who
        takes part is at least 0: a reliable annotator can keep a cell the
        majority missed (reported as low support).
    prior_odds : float
        The log-odds that a cell somebody drew is real, before the annotators' word.
    reliable : sequence of bool, optional
        One per annotator. When exactly two annotators take part, a cell only one
        of them drew is also kept when that one is reliable (low support).

    Returns
    -------
    labels : ndarray of int32, shape (H, W)
        The consensus, ids ``1..n``.
    report : ConsensusReport

    Raises
    ------
    ValueError
        No images, images of different shapes or not 2-D, negative ids, a wrong
        number of weights or odds, negative or non-finite weights, all
        weights 0, or ``min_iou`` / ``min_support`` / ``min_cover`` out of range.
    TypeError
        If an image does not hold integers.
    GeometryError
        If the images do not have the layout's size.

    Examples
    --------
    Three annotators; the second misses the right cell and paints one pixel too
    many, the third leaves one pixel out:

    >>> a = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
    >>> b = np.array([[5, 5, 0, 0], [5, 5, 5, 0]])
    >>> c = np.array([[3, 3, 0, 4], [3, 0, 0, 4]])
    >>> labels, report = merge_labels([a, b, c])
    >>> labels
    array([[1, 1, 0, 2],
           [1, 1, 0, 2]], dtype=int32)
    >>> report.consensus_cells, [round(g.f1, 2) for g in report.agreement]
    (2, [1.0, 0.67, 1.0])
    """
    images = _check_images(label_images)
    weight_list = _check_weights(weights, len(images))
    _check_params(min_iou, min_support, min_cover)
    for name, given in (("odds", odds), ("reliable flags", reliable)):
        if given is not None and len(given) != len(images):
            raise ValueError(f"got {len(given)} {name} for {len(images)} label images: pass "
                             "one each")
    all_cells = [compact(flatten_labels(image, layout, i)) for i, image in enumerate(images)]
    active = [i for i, w in enumerate(weight_list) if w > 0]
    order = sorted(active, key=lambda i: (-weight_list[i], all_cells[i].key()))
    cells = [all_cells[i] for i in order]
    weights_in_order = [weight_list[i] for i in order]
    total = float(sum(weights_in_order))
    tol = _REL_TOL * total

    group_of, support = match_cells(cells, weights_in_order, min_iou, min_cover)
    if odds is None:
        kept = support > min_support * total + tol
    else:  # a majority of heads, or the odds: weights (shape quality) do not decide this
        heads = sum(np.bincount(g[1:], minlength=support.size) for g in group_of)
        kept = (heads > min_support * len(order)) | _likely(
            group_of, [odds[i] for i in order], support.size, prior_odds)
    if reliable is not None and len(order) == 2:  # one reliable annotator of two
        for k, g in zip(order, group_of, strict=True):
            kept[g[1:]] |= bool(reliable[k])
    frames = (layout.length, *layout.frame_shape) if layout else (1, *images[0].shape)
    winner = fuse_pixels(cells, weights_in_order, group_of, support, kept, min_support, tol,
                         frames=frames, smooth=smooth)
    consensus = compact(winner + 1)
    present = np.zeros(support.size, dtype=bool)
    present[consensus.ids - 1] = True
    dropped, finders = _dropped(order, cells, group_of, support / total, kept, present)
    flat = consensus.compact.reshape(frames)
    out = (layout.make(flat) if layout is not None else flat[0]).astype(np.int32)
    report = ConsensusReport(
        annotators=len(images),
        weights=tuple(weight_list),
        cells_per_annotator=tuple(c.count for c in all_cells),
        consensus_cells=consensus.count,
        dropped=dropped,
        agreement=tuple(annotator_agreement(i, weight_list[i], c, consensus)
                        for i, c in enumerate(all_cells)),
        ignored=tuple(i for i, w in enumerate(weight_list) if w == 0),
        method="single" if len(active) == 1 else "vote",
        min_iou=float(min_iou),
        min_support=float(min_support),
        cells=_cell_records(cells, group_of, support / total, consensus),
        finders=finders,
    )
    if dropped:
        logger.debug("consensus of %d annotators: %d cells, %d input cells dropped",
                     len(active), consensus.count, len(dropped))
    return out, report


# -- weights ---------------------------------------------------------------------------------


def judgment_weights(trusts: Sequence[float | None], tainted: Sequence[bool]) -> list[float]:
    """Weights for :func:`merge_labels` from the report's ``_trust`` and ``_tainted`` columns.

    A judgment's weight is its worker's trust; a tainted worker (failed quality
    control later) gets 0; a missing trust (``None``) counts as the mean of the
    known trusts of untainted workers (1.0 if there is none). If every weight
    comes out 0, the untainted judgments (or, if all are tainted, all of them)
    get equal weights, with a logged warning.

    Raises
    ------
    ValueError
        If the two sequences differ in length, or a trust is negative or not finite.

    Examples
    --------
    >>> judgment_weights([0.9, 0.6, None], [False, True, False])
    [0.9, 0.0, 0.9]
    >>> judgment_weights([0.0, 0.8], [False, True])
    [1.0, 0.0]
    """
    if len(trusts) != len(tainted):
        raise ValueError(f"got {len(trusts)} trust scores but {len(tainted)} tainted flags: "
                         "pass one of each per judgment")
    for t in trusts:
        if t is not None and (not math.isfinite(t) or t < 0):
            raise ValueError(f"trust scores must be finite and >= 0, got {t!r}")
    clean = [bool(x) for x in tainted]
    known = [float(t) for t, bad in zip(trusts, clean, strict=True) if t is not None and not bad]
    fallback = sum(known) / len(known) if known else 1.0
    weights = [0.0 if bad else (fallback if t is None else float(t))
               for t, bad in zip(trusts, clean, strict=True)]
    if weights and not any(weights):
        everyone = all(clean)
        logger.warning(
            "every judgment has weight 0 (%s): using equal weights for %s",
            "all workers tainted" if everyone else "trust 0",
            "all of them" if everyone else "the untainted ones",
        )
        weights = [1.0 if everyone or not bad else 0.0 for bad in clean]
    return weights


# -- files and tasks -------------------------------------------------------------------------


def read_labels(path: str | Path) -> NDArray[np.generic]:
    """A cleaned label image (2-D integer ids).

    Raises
    ------
    AnnotationError
        If the file holds no 2-D integer image (the message names the file).
    """
    image = read_image(path)
    if image.ndim != 2 or image.dtype == np.bool_ or not np.issubdtype(image.dtype, np.integer):
        raise AnnotationError(
            f"expected a cleaned label image (one integer id per pixel), got shape "
            f"{image.shape} and dtype {image.dtype}: clean the annotation first "
            "(cellcrowd.labels.clean_annotation_file)",
            path=path,
        )
    return image


def merge_label_files(
    srcs: Sequence[str | Path],
    dst: str | Path,
    *,
    weights: Sequence[float] | None = None,
    min_iou: float = 0.5,
    min_support: float = 0.5,
    layout: MontageLayout | None = None,
    min_cover: float | None = None,
    smooth: bool = False,
    odds: Sequence[tuple[float, float]] | None = None,
    prior_odds: float = 0.0,
    reliable: Sequence[bool] | None = None,
) -> ConsensusReport:
    """Merge cleaned label files of one montage (see :func:`merge_labels`) into ``dst``.

    ``dst`` is written atomically as a uint16 PNG (``.tif`` also works); the
    sources are never touched.

    Raises
    ------
    ValueError
        If ``dst`` is one of ``srcs``, or as :func:`merge_labels`.
    InputError
        If a source cannot be read (:class:`~cellcrowd.errors.AnnotationError` if it is
        not a label image, :class:`~cellcrowd.errors.GeometryError` if its size differs
        from the first source's); messages name the file.
    """
    paths = [Path(s) for s in srcs]
    dst = Path(dst)
    if any(p.resolve() == dst.resolve() for p in paths):
        raise ValueError(
            f"the consensus must not overwrite one of its sources ({dst}): write it elsewhere "
            "(WorkingFolder.label_path)"
        )
    images = [read_labels(p) for p in paths]
    for p, image in zip(paths, images, strict=True):
        if image.shape != images[0].shape:
            raise GeometryError(
                f"is {image.shape[0]}x{image.shape[1]} pixels but {paths[0].name} is "
                f"{images[0].shape[0]}x{images[0].shape[1]}: judgments of one montage must "
                "have its size (is a file of another montage mixed in?)",
                path=p,
            )
    labels, report = merge_labels(images, weights=weights, min_iou=min_iou,
                                  min_support=min_support, layout=layout,
                                  min_cover=min_cover, smooth=smooth, odds=odds,
                                  prior_odds=prior_odds, reliable=reliable)
    write_image(dst, labels.astype(np.uint16) if fits_uint16(labels) else labels)
    logger.debug("%d judgments -> %s: %d cells, %d dropped", len(paths), dst.name,
                 report.consensus_cells, len(report.dropped))
    return report


@dataclass(frozen=True)
class MergeTask:
    """Arguments of :func:`merge_task` (picklable)."""

    montage: str
    srcs: tuple[Path, ...]
    dst: Path
    weights: tuple[float, ...] | None = None
    min_iou: float = 0.5
    min_support: float = 0.5
    layout: MontageLayout | None = None
    min_cover: float | None = None
    smooth: bool = False
    odds: tuple[tuple[float, float], ...] | None = None
    prior_odds: float = 0.0
    reliable: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class MergeResult:
    """Outcome of one :class:`MergeTask`: the report, or the error that stopped it."""

    montage: str
    dst: Path
    report: ConsensusReport | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def merge_task(task: MergeTask) -> MergeResult:
    """Merge one montage's judgments, recording (never raising) a bad input or file error."""
    try:
        report = merge_label_files(task.srcs, task.dst, weights=task.weights,
                                   min_iou=task.min_iou, min_support=task.min_support,
                                   layout=task.layout, min_cover=task.min_cover,
                                   smooth=task.smooth, odds=task.odds,
                                   prior_odds=task.prior_odds, reliable=task.reliable)
    except (CellcrowdError, ValueError, TypeError, OSError) as exc:
        logger.warning("skipping %s: %s", task.montage, exc)
        return MergeResult(task.montage, Path(task.dst), None, f"{type(exc).__name__}: {exc}")
    return MergeResult(task.montage, Path(task.dst), report)


def merge_tasks(
    tasks: Iterable[MergeTask],
    *,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[MergeResult]:
    """Run :func:`merge_task` over ``tasks`` (serially, or on ``executor``), in task order."""
    results = list(run_tasks(merge_task, tasks, executor=executor, progress=progress))
    failed = sum(not r.ok for r in results)
    if failed:
        logger.warning("%d of %d montages could not be merged", failed, len(results))
    return results
