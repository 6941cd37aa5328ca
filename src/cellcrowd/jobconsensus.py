"""The clean stage's consensus over a whole job: worker reliability first, then each montage.

With ``[clean] strategy = "reliability"`` (the default) the consensus of a job runs
in two passes over the cleaned judgments of every montage with several of them:

1. **Evidence** (per montage, on the executor): cells are matched across the
   montage's annotators (:func:`cellcrowd.cellmatch.match_cells`) and each
   annotator's cells are recorded as found, missed or alone, with the IoU of
   each found cell against the others' cells.
2. **Reliability** (job-wide, :func:`cellcrowd.reliability.estimate_reliability`):
   an EM in the spirit of Dawid-Skene/STAPLE, seeded with the report's
   ``_trust``, gives each worker a reliability from its agreement with the
   others over every unit it did.
3. **Fusion** (per montage, on the executor): :func:`cellcrowd.consensus.merge_labels`
   with the reliabilities' vote weights decides which cells exist and fuses
   their pixels.

Files (names in :class:`cellcrowd.layout.WorkingFolder`)
--------------------------------------------------------
``{id}_labels/{montage}_consensus.json`` (one per merged montage)
    Everything :meth:`cellcrowd.consensus.ConsensusReport.to_dict` holds, with
    ``"montage"``, ``"labels"`` (file name), ``"judgments"`` (``unit_id``,
    ``judgment_id``, ``worker_id``, ``trust``, ``tainted``, ``labels``, and
    ``reliability``: the worker's job-wide reliability or null), ``"mean_agreement"``
    (mean F1 of the annotators with the consensus, 0..1) and ``"cells"``: one
    record per consensus cell, ``{"id": output id, "support": share of the vote
    weight of the annotators who drew it (0..1), "annotators": how many drew it,
    "agreement": mean IoU of their cells with the consensus cell, "low_support":
    true when the cell was kept on the word of too few annotators (a tie, or one
    reliable annotator of two)}``.
``{id}_labels/consensus_workers.json`` (one per job)
    ``{"version": 1, "strategy": "reliability" | "vote", "iterations": int,
    "workers": [...], "units": [...]}`` with, per worker (sorted by id),
    ``{"worker_id": str, "reliability": 0..1, "sensitivity", "false_positive",
    "shape": the estimates of :class:`cellcrowd.reliability.WorkerReliability`,
    "weight": pixel vote weight, "trust": report trust or null, "tainted": bool,
    "units": merged montages it did, "cells": cells it drew there, "agreement": its
    mean F1 with the consensus, "mean_iou": its mean IoU with the consensus}`` (the
    estimates are null with ``"vote"``), and per merged montage
    (sorted by name) ``{"montage": str, "unit_ids": [str], "judgments": int,
    "cells": consensus cells, "low_support_cells": int, "agreement": mean F1 of its
    annotators with the consensus (the ``mean_agreement`` above)}``.
``{id}_labels/clean_stats.json``
    What cleaning did per montage (see ``WorkingFolder.clean_stats_path``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .consensus import ConsensusReport, MergeResult, MergeTask, judgment_weights, merge_tasks
from .executor import Executor, run_tasks
from .files import atomic_write_text, natural_key
from .geometry import MontageLayout
from .layout import WorkingFolder
from .reliability import (
    EvidenceTask,
    Reliability,
    UnitEvidence,
    estimate_reliability,
    evidence_task,
)

__all__ = [
    "MIN_COVER",
    "JobConsensus",
    "JudgmentLabels",
    "mean_agreement",
    "merge_job",
]

logger = logging.getLogger(__name__)

Strategy = Literal["reliability", "vote"]
#: ``reuse`` of :func:`merge_job`: a montage's task, its judgments and the reliabilities
#: -> the result of an earlier merge still on disk, or None.
Reuse = Callable[[MergeTask, Sequence["JudgmentLabels"], "Reliability | None"],
                 "MergeResult | None"]
#: Cells also match when their overlap covers this share of the smaller one ("reliability").
MIN_COVER = 0.5


@dataclass(frozen=True)
class JudgmentLabels:
    """One judgment's cleaned labels and who made them."""

    unit_id: str
    judgment_id: str
    worker_id: str
    trust: float | None
    tainted: bool
    labels: Path


@dataclass(frozen=True)
class JobConsensus:
    """What :func:`merge_job` did: one result per montage (task order), the
    reliabilities (None for ``"vote"``) and the files it wrote."""

    results: list[MergeResult]
    reliability: Reliability | None
    files: list[Path]


def mean_agreement(report: ConsensusReport) -> float:
    """Mean F1 of the annotators who took part (weight > 0) against the consensus."""
    scores = [a.f1 for a in report.agreement if a.weight > 0] or [
        a.f1 for a in report.agreement]
    return sum(scores) / len(scores) if scores else 1.0


def _trusts(montages: Mapping[str, Sequence[JudgmentLabels]]
            ) -> tuple[dict[str, float | None], list[str]]:
    """Each worker's mean report trust (None if unknown) and the tainted workers."""
    seen: dict[str, list[float]] = {}
    tainted = set()
    for js in montages.values():
        for j in js:
            seen.setdefault(j.worker_id, [])
            if j.trust is not None:
                seen[j.worker_id].append(j.trust)
            if j.tainted:
                tainted.add(j.worker_id)
    trust = {w: (sum(t) / len(t) if t else None) for w, t in seen.items()}
    return trust, sorted(tainted)


def _reliability_task(name: str, js: Sequence[JudgmentLabels], dst: Path, rel: Reliability,
                      min_iou: float, min_support: float, layout: MontageLayout | None
                      ) -> MergeTask:
    weights = [0.0 if j.tainted else rel.weight(j.worker_id) for j in js]
    if not any(weights):  # every judgment tainted: they all count, as judgment_weights does
        weights = [rel.weight(j.worker_id) for j in js]
    workers = [j.worker_id for j in js]
    reliable = rel.reliable([w for w, x in zip(workers, weights, strict=True) if x > 0])
    flags = iter(reliable)
    return MergeTask(
        name, tuple(j.labels for j in js), dst, tuple(weights), min_iou, min_support, layout,
        min_cover=MIN_COVER, smooth=True, odds=tuple(rel.odds(w) for w in workers),
        prior_odds=rel.prior_odds,
        reliable=tuple(next(flags) if x > 0 else False for x in weights))


def _vote_weights(name: str, js: Sequence[JudgmentLabels]) -> tuple[float, ...] | None:
    try:
        return tuple(judgment_weights([j.trust for j in js], [j.tainted for j in js]))
    except ValueError as exc:
        logger.warning("%s: %s in the report; the judgments get equal weights", name, exc)
        return None


def merge_job(
    wf: WorkingFolder,
    montages: Mapping[str, Sequence[JudgmentLabels]],
    *,
    strategy: Strategy = "reliability",
    min_iou: float = 0.5,
    min_support: float = 0.5,
    layout: MontageLayout | None = None,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
    reuse: Reuse | None = None,
) -> JobConsensus:
    """Merge every montage's judgments into ``wf.label_path(montage)`` and write the JSON
    files of the module docstring.

    ``"reliability"`` first estimates the workers' reliability over all montages
    (one evidence pass), then merges with it; ``"vote"`` merges each montage on its
    own with the report's trust as weights (:func:`cellcrowd.consensus.merge_labels`'
    defaults). A montage that cannot be merged is reported in its result, never raised.

    ``reuse(task, judgments, reliability)``, when given, is asked about every montage's
    :class:`~cellcrowd.consensus.MergeTask` before any is merged: a result means the
    montage's labels and report file are already on disk as this task would write them
    (neither is written again), None that it must be merged.
    """
    names = sorted(montages, key=natural_key)
    rel = None
    if strategy == "reliability":
        found = run_tasks(evidence_task, [EvidenceTask(
            name, tuple(j.labels for j in montages[name]),
            tuple(j.worker_id for j in montages[name]), layout, min_iou, MIN_COVER)
            for name in names], executor=executor)
        trust, tainted = _trusts(montages)
        rel = estimate_reliability([e for e in found if isinstance(e, UnitEvidence)], trust,
                                   silent=tainted)
        logger.info("worker reliability of %d workers in %d steps", len(rel.workers),
                    rel.iterations)
        tasks = [_reliability_task(name, montages[name], wf.label_path(name), rel, min_iou,
                                   min_support, layout) for name in names]
    else:
        tasks = [MergeTask(name, tuple(j.labels for j in montages[name]), wf.label_path(name),
                           _vote_weights(name, montages[name]), min_iou, min_support, layout)
                 for name in names]
    kept = {t.montage: k for t in tasks
            if reuse is not None and (k := reuse(t, montages[t.montage], rel)) is not None}
    merged = iter(merge_tasks([t for t in tasks if t.montage not in kept], executor=executor,
                              progress=progress))
    results = [kept[t.montage] if t.montage in kept else next(merged) for t in tasks]
    files = [wf.consensus_report_path(r.montage) if r.montage in kept
             else _write_montage(wf, montages[r.montage], r, r.report, rel)
             for r in results if r.report is not None]
    files.append(_write_workers(wf, montages, results, rel, strategy))
    return JobConsensus(results, rel, files)


def _write_montage(wf: WorkingFolder, js: Sequence[JudgmentLabels], result: MergeResult,
                   report: ConsensusReport, rel: Reliability | None) -> Path:
    known = rel.workers if rel is not None else {}
    return atomic_write_text(wf.consensus_report_path(result.montage), json.dumps({
        "montage": result.montage,
        "labels": result.dst.name,
        "judgments": [{"unit_id": j.unit_id, "judgment_id": j.judgment_id,
                       "worker_id": j.worker_id, "trust": j.trust, "tainted": j.tainted,
                       "labels": j.labels.name,
                       "reliability": (known[j.worker_id].reliability
                                       if j.worker_id in known else None)}
                      for j in js],
        "mean_agreement": round(mean_agreement(report), 6),
        **report.to_dict(),
    }, indent=1, sort_keys=True) + "\n")


def _worker_rows(montages: Mapping[str, Sequence[JudgmentLabels]],
                 results: Sequence[MergeResult], rel: Reliability | None,
                 trust: Mapping[str, float | None], tainted: Sequence[str]
                 ) -> list[dict[str, Any]]:
    scores: dict[str, list[tuple[float, float, int]]] = {w: [] for w in trust}
    for r in results:
        if r.report is not None:
            for j, a in zip(montages[r.montage], r.report.agreement, strict=True):
                scores[j.worker_id].append((a.f1, a.mean_iou, a.cells))
    rows = []
    for w in sorted(scores, key=natural_key):
        est = rel.workers.get(w) if rel is not None else None
        done = scores[w]
        rows.append({
            "worker_id": w,
            "reliability": est.reliability if est else None,
            "sensitivity": est.sensitivity if est else None,
            "false_positive": est.false_positive if est else None,
            "shape": est.shape if est else None,
            "weight": est.weight if est else None,
            "trust": trust[w], "tainted": w in tainted,
            "units": len(done), "cells": sum(d[2] for d in done),
            "agreement": round(sum(d[0] for d in done) / len(done), 6) if done else None,
            "mean_iou": round(sum(d[1] for d in done) / len(done), 6) if done else None,
        })
    return rows


def _write_workers(wf: WorkingFolder, montages: Mapping[str, Sequence[JudgmentLabels]],
                   results: Sequence[MergeResult], rel: Reliability | None,
                   strategy: Strategy) -> Path:
    trust, tainted = _trusts(montages)
    units = [{
        "montage": r.montage,
        "unit_ids": sorted({j.unit_id for j in montages[r.montage]}, key=natural_key),
        "judgments": len(montages[r.montage]),
        "cells": r.report.consensus_cells,
        "low_support_cells": sum(c.low_support for c in r.report.cells),
        "agreement": round(mean_agreement(r.report), 6),
    } for r in results if r.report is not None]
    return atomic_write_text(wf.consensus_workers_path, json.dumps({
        "version": 1, "strategy": strategy,
        "iterations": rel.iterations if rel is not None else 0,
        "workers": _worker_rows(montages, results, rel, trust, tainted),
        "units": units,
    }, indent=1) + "\n")
