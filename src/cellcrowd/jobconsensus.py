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
    ``{"worker_id": str, "reliability": 0..1, "weight": vote weight, "trust":
    report trust or null, "tainted": bool, "units": units it did among the merged
    montages, "cells": cells it drew there, "agreement": its mean F1 with the
    consensus, "mean_iou": its mean IoU with the consensus}``, and per merged montage
    (sorted by name) ``{"montage": str, "unit_ids": [str], "judgments": int,
    "cells": consensus cells, "low_support_cells": int, "agreement": mean F1 of its
    annotators with the consensus (the ``mean_agreement`` above)}``.
``{id}_labels/clean_stats.json``
    What cleaning did per montage (see ``WorkingFolder.clean_stats_path``).
"""
