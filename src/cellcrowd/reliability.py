"""How reliable each worker of a job is, from their agreement with the others.

A consensus per montage sees two or three annotators at a time; a worker's
reliability needs every unit they did. Two steps:

:func:`unit_evidence`
    Per montage: the montage's annotators' cells are matched
    (:func:`cellcrowd.cellmatch.match_cells`) into groups (one per candidate
    cell); the evidence is which annotator drew each group and the IoU of every
    two annotators' cells in it. Picklable; :func:`evidence_task` runs it on files.
:func:`estimate_reliability`
    Job-wide, an EM in the spirit of Dawid-Skene and STAPLE, vectorised over
    every group of the job. Each worker has a *sensitivity* (the share of real
    cells it draws), a *false-positive* share (of the things that are no cell,
    the share it draws) and a *shape* agreement (the IoU of its cells with the
    fused cell). They start at its report ``_trust`` (the mean of the known ones
    when missing), :data:`FP_PRIOR`, and its trust; then, until they settle:

    1. *E-step.* A group drawn by most of its unit's voters is a cell; any other
       is one with the Dawid-Skene posterior from the prior log-odds 0 plus, for
       each voter, ``log(sens / fp)`` when it drew the group and
       ``log((1 - sens) / (1 - fp))`` when it did not.
    2. *M-step.* Sensitivity and false positives are those shares over every
       group of the worker's units, weighted by the posteriors; shape is the
       mean, over its cells of real groups drawn by others too, of the
       vote-weighted mean IoU with every drawing of the group (its own included,
       as the weighted pixel vote fuses them). Every estimate is shrunk towards
       its start by ``prior_cells`` pseudo-cells.

    A worker's *reliability* is ``sensitivity * (1 - false_positive) * shape``;
    its pixel vote weight is the log-odds of its shape (:func:`vote_weight`),
    and its say on whether a group is a cell are the two log-odds above
    (:attr:`WorkerReliability.odds`). Careless workers (missed and merged cells,
    sloppy borders, specks) lose on every count, and a majority of them cannot
    outvote careful ones on pixels once the careful ones' weights have grown.

Workers are identified by strings (the report's ``_worker_id``). A worker with
weight 0 (tainted: failed quality control later) takes no part in the votes but
still gets a reliability.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .cellmatch import compact, match_cells, pair_ious
from .consensus import flatten_labels, read_labels
from .errors import CellcrowdError
from .geometry import MontageLayout

__all__ = [
    "FP_PRIOR",
    "MIN_WEIGHT",
    "EvidenceTask",
    "Reliability",
    "UnitEvidence",
    "WorkerReliability",
    "estimate_reliability",
    "evidence_task",
    "unit_evidence",
    "vote_weight",
]

logger = logging.getLogger(__name__)

#: Smallest pixel vote weight of a worker who takes part (shape agreement 1/2 or less).
MIN_WEIGHT = 0.05
#: Prior share of the things that are no cell a worker draws: neutral, learnt from the job.
FP_PRIOR = 0.5
_LIMIT = 0.999


@dataclass(frozen=True)
class UnitEvidence:
    """What one montage's annotators drew, group by group.

    Attributes
    ----------
    montage : str
    workers : tuple of str
        The worker of each annotator (input order).
    drew : ndarray of bool, shape (groups, annotators)
        Who drew each group.
    iou : ndarray of float, shape (groups, annotators, annotators)
        IoU of every two annotators' cells in each group (0 when one drew none).
    """

    montage: str
    workers: tuple[str, ...]
    drew: NDArray[np.bool_]
    iou: NDArray[np.float64]


def unit_evidence(
    montage: str, label_images: Sequence[NDArray[np.generic]], workers: Sequence[str], *,
    layout: MontageLayout | None = None, min_iou: float = 0.5, min_cover: float | None = 0.5,
) -> UnitEvidence:
    """Match one montage's annotators' cells and record who drew what (see module docstring).

    Raises
    ------
    ValueError
        If ``workers`` does not name one worker per image.
    GeometryError
        If an image does not have the layout's size.
    """
    if len(workers) != len(label_images):
        raise ValueError(f"{montage}: got {len(workers)} workers for {len(label_images)} "
                         "label images: pass one each")
    cells = [compact(flatten_labels(np.asarray(im), layout, i))
             for i, im in enumerate(label_images)]
    group_of, support = match_cells(cells, [1.0] * len(cells), min_iou, min_cover)
    drew = np.zeros((support.size, len(cells)), dtype=bool)
    for k, g in enumerate(group_of):
        drew[g[1:], k] = True
    return UnitEvidence(montage, tuple(str(w) for w in workers), drew,
                        pair_ious(cells, group_of, support.size))


@dataclass(frozen=True)
class EvidenceTask:
    """Arguments of :func:`evidence_task` (picklable)."""

    montage: str
    srcs: tuple[Path, ...]
    workers: tuple[str, ...]
    layout: MontageLayout | None = None
    min_iou: float = 0.5
    min_cover: float | None = 0.5


def evidence_task(task: EvidenceTask) -> UnitEvidence | str:
    """:func:`unit_evidence` of cleaned label files; an error message instead of raising."""
    try:
        images = [read_labels(p) for p in task.srcs]
        return unit_evidence(task.montage, images, task.workers, layout=task.layout,
                             min_iou=task.min_iou, min_cover=task.min_cover)
    except (CellcrowdError, ValueError, TypeError, OSError) as exc:
        logger.warning("no reliability evidence from %s: %s", task.montage, exc)
        return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class WorkerReliability:
    """One worker's estimates (see the module docstring).

    Attributes
    ----------
    worker_id : str
    reliability : float
        ``sensitivity * (1 - false_positive) * shape``, 0..1: the one number to rank by.
    sensitivity : float
        Share of the real cells of its units it drew.
    false_positive : float
        Share of the drawn things that are no cell (in its units) it drew.
    shape : float
        Mean IoU of its cells with the others' cells of the same cell.
    weight : float
        Its pixel vote weight ``log(shape / (1 - shape))`` (0 when silent).
    trust : float or None
        The report's trust.
    units, cells : int
        Merged montages it did, and cells it drew there.
    """

    worker_id: str
    reliability: float
    sensitivity: float
    false_positive: float
    shape: float
    weight: float
    trust: float | None
    units: int
    cells: int

    @property
    def odds(self) -> tuple[float, float]:
        """Log-odds that a thing is a cell when this worker drew it, and when it did not."""
        s, f = self.sensitivity, self.false_positive
        return math.log(s / f), math.log((1 - s) / (1 - f))


@dataclass(frozen=True)
class Reliability:
    """The outcome of :func:`estimate_reliability`: every worker, and the prior log-odds
    that a thing somebody drew is a cell."""

    workers: dict[str, WorkerReliability]
    prior_odds: float
    iterations: int
    converged: bool

    def weight(self, worker: str) -> float:
        """The worker's pixel vote weight (:data:`MIN_WEIGHT` for an unknown worker)."""
        known = self.workers.get(worker)
        return known.weight if known is not None else MIN_WEIGHT

    def reliable(self, workers: Sequence[str]) -> tuple[bool, ...]:
        """Which of one unit's workers are reliable: as reliable as the best of them."""
        scores = [self.workers[w].reliability if w in self.workers else 0.0
                  for w in workers]
        best = max(scores, default=0.0)
        return tuple(score >= best for score in scores)

    def odds(self, worker: str) -> tuple[float, float]:
        """:attr:`WorkerReliability.odds` (no say, ``(0, 0)``, for an unknown worker)."""
        known = self.workers.get(worker)
        return known.odds if known is not None else (0.0, 0.0)


def vote_weight(shape: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pixel vote weight ``log(q / (1 - q))`` of a shape agreement ``q``, at least
    :data:`MIN_WEIGHT` (the log-odds of a symmetric annotator, as in Dawid-Skene).

    >>> vote_weight(np.array([0.5, 0.9])).round(3).tolist()
    [0.05, 2.197]
    """
    q = np.clip(shape, 1 - _LIMIT, _LIMIT)
    return np.maximum(np.log(q / (1 - q)), MIN_WEIGHT)


@dataclass(frozen=True)
class _Stacked:
    """Every group of the job in one array set, units padded to the most annotators."""

    worker: NDArray[np.int64]  # (G, A) worker index, -1 for an empty slot
    drew: NDArray[np.bool_]  # (G, A)
    iou: NDArray[np.float64]  # (G, A, A), diagonal 0
    voting: NDArray[np.bool_]  # (G, A): the slot's worker takes part in votes


def _stack(evidence: Sequence[UnitEvidence], index: Mapping[str, int],
           silent: NDArray[np.bool_]) -> _Stacked:
    width = max((len(e.workers) for e in evidence), default=1)
    total = sum(e.drew.shape[0] for e in evidence)
    worker = np.full((total, width), -1, dtype=np.int64)
    drew = np.zeros((total, width), dtype=bool)
    iou = np.zeros((total, width, width))
    row = 0
    for e in evidence:
        g, a = e.drew.shape
        worker[row:row + g, :a] = [index[w] for w in e.workers]
        drew[row:row + g, :a] = e.drew
        iou[row:row + g, :a, :a] = e.iou
        row += g
    idx = np.arange(width)
    iou[:, idx, idx] = 0.0
    voting = (worker >= 0) & ~silent[np.maximum(worker, 0)]
    return _Stacked(worker, drew, iou, voting)


@dataclass
class _Params:
    sens: NDArray[np.float64]
    fp: NDArray[np.float64]
    shape: NDArray[np.float64]
    prior: float


def _posterior(s: _Stacked, p: _Params) -> NDArray[np.float64]:
    """E-step: the probability that each group is a cell (1 when most voters drew it)."""
    w = np.maximum(s.worker, 0)
    drew_lo = np.log(p.sens / p.fp)[w]
    missed_lo = np.log((1 - p.sens) / (1 - p.fp))[w]
    score = math.log(p.prior / (1 - p.prior)) + np.where(
        s.voting, np.where(s.drew, drew_lo, missed_lo), 0.0).sum(axis=1)
    heads = (s.drew & s.voting).sum(axis=1)
    majority = heads > 0.5 * s.voting.sum(axis=1)  # a cell, as the merge keeps it
    out: NDArray[np.float64] = np.where(majority, 1.0, 1 / (1 + np.exp(-np.clip(score, -50, 50))))
    return out


def _maximise(s: _Stacked, real: NDArray[np.float64], p: _Params, seed: NDArray[np.float64],
              prior_cells: float) -> _Params:
    """M-step: sensitivity, false positives, shape and the prior from the posteriors."""
    slot = s.worker >= 0
    w = np.maximum(s.worker, 0)[slot]
    drew = s.drew[slot]
    pr = np.broadcast_to(real[:, None], s.drew.shape)[slot]
    n = seed.size

    def share(hit: NDArray[np.float64], of: NDArray[np.float64], mean: NDArray[np.float64]
              ) -> NDArray[np.float64]:
        num = prior_cells * mean + np.bincount(w, weights=hit, minlength=n)
        out: NDArray[np.float64] = np.clip(
            num / (prior_cells + np.bincount(w, weights=of, minlength=n)), 1 - _LIMIT, _LIMIT)
        return out

    sens = share(pr * drew, pr, seed)
    fp = share((1 - pr) * drew, 1 - pr, np.full(n, FP_PRIOR))
    drew_vote = np.where(s.drew & s.voting, vote_weight(p.shape)[np.maximum(s.worker, 0)], 0.0)
    # IoU with the group's fused shape, approximated by the vote-weighted mean IoU with
    # every drawing (its own included, IoU 1), as the weighted pixel vote would fuse it.
    den = drew_vote.sum(axis=1)[:, None]
    num = (s.iou * drew_vote[:, None, :]).sum(axis=2) + drew_vote  # diagonal (self): 1
    both = s.drew & (real >= 0.5)[:, None] & (den > drew_vote)
    iou = np.where(both, num / np.where(den > 0, den, 1.0), 0.0)
    shape = share(iou[slot] * both[slot], both[slot].astype(float), seed)
    return _Params(sens, fp, shape, p.prior)


def _priors(workers: list[str], trust: Mapping[str, float | None]) -> NDArray[np.float64]:
    known = [float(t) for w in workers if (t := trust.get(w)) is not None and math.isfinite(t)]
    fallback = sum(known) / len(known) if known else 0.8
    values = np.array([fallback if (t := trust.get(w)) is None or not math.isfinite(t)
                       else float(t) for w in workers], dtype=np.float64)
    out: NDArray[np.float64] = np.clip(values, 1 - _LIMIT, _LIMIT)
    return out


def estimate_reliability(
    evidence: Sequence[UnitEvidence],
    trust: Mapping[str, float | None] | None = None,
    *,
    silent: Sequence[str] = (),
    prior_cells: float = 5.0,
    max_iterations: int = 100,
    tolerance: float = 1e-4,
) -> Reliability:
    """Estimate every worker's reliability over the whole job (see the module docstring).

    Parameters
    ----------
    evidence : sequence of UnitEvidence
        One per montage with several annotators.
    trust : mapping of str to float or None, optional
        Each worker's report trust (the seed and the prior); default 0.8 each.
    silent : sequence of str
        Workers who take no part in the votes (tainted), still estimated.
    prior_cells : float
        Strength of the trust prior, in cells.
    max_iterations, tolerance : int, float
        Stop after this many steps, or once no estimate moves by more than ``tolerance``.

    Returns
    -------
    Reliability
    """
    trust = trust or {}
    workers = sorted({w for e in evidence for w in e.workers})
    index = {w: i for i, w in enumerate(workers)}
    quiet = np.array([w in set(silent) for w in workers], dtype=bool)
    seed = _priors(workers, trust)
    stacked = _stack(evidence, index, quiet)
    params = _Params(seed.copy(), np.full(seed.size, FP_PRIOR), seed.copy(), 0.5)
    converged, step = not workers, 0
    while not converged and step < max_iterations:
        step += 1
        new = _maximise(stacked, _posterior(stacked, params), params, seed, prior_cells)
        moved = max(float(np.abs(getattr(new, k) - getattr(params, k)).max())
                    for k in ("sens", "fp", "shape"))
        converged, params = moved <= tolerance, new
    if not converged:
        logger.warning("worker reliability did not settle in %d steps", max_iterations)
    return Reliability(_workers(evidence, workers, params, quiet, trust),
                       math.log(params.prior / (1 - params.prior)), step, converged)


def _workers(evidence: Sequence[UnitEvidence], workers: list[str], p: _Params,
             quiet: NDArray[np.bool_], trust: Mapping[str, float | None]
             ) -> dict[str, WorkerReliability]:
    index = {w: i for i, w in enumerate(workers)}
    units = np.zeros(len(workers), dtype=np.int64)
    cells = np.zeros(len(workers), dtype=np.int64)
    for e in evidence:
        for k, w in enumerate(e.workers):
            units[index[w]] += 1
            cells[index[w]] += int(e.drew[:, k].sum())
    weights = np.where(quiet, 0.0, vote_weight(p.shape))
    score = p.sens * (1 - p.fp) * p.shape
    return {w: WorkerReliability(
        w, round(float(score[i]), 6), round(float(p.sens[i]), 6), round(float(p.fp[i]), 6),
        round(float(p.shape[i]), 6), round(float(weights[i]), 6), trust.get(w),
        int(units[i]), int(cells[i])) for i, w in enumerate(workers)}
