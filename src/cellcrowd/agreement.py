"""What a consensus reports: dropped cells, each output cell, each annotator's agreement.

:func:`cellcrowd.consensus.merge_labels` returns a :class:`ConsensusReport`; the
clean stage writes it as JSON next to the labels (:mod:`cellcrowd.jobconsensus`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from .cellmatch import Cells, overlap_iou
from .match import assign

__all__ = [
    "AGREEMENT_IOU",
    "AnnotatorAgreement",
    "CellRecord",
    "ConsensusReport",
    "DroppedCell",
    "annotator_agreement",
]

#: IoU at which a cell counts as found again, for the F1 agreement score.
AGREEMENT_IOU = 0.5


class DroppedCell(NamedTuple):
    """A cell of one annotator that is not in the consensus.

    Attributes
    ----------
    annotator : int
        Index of the annotator in the input.
    label : int
        The cell's id in that annotator's labels.
    pixels : int
        The cell's size in that annotator's labels.
    support : float
        Summed weight of the annotators who found the cell, as a fraction of the total.
    reason : str
        ``"support"`` (too few annotators found it) or ``"overruled"`` (enough did,
        but other cells won every one of its pixels).
    """

    annotator: int
    label: int
    pixels: int
    support: float
    reason: str = "support"


@dataclass(frozen=True)
class AnnotatorAgreement:
    """How well one annotator agrees with the consensus.

    The annotator's cells and the consensus cells are paired by Hungarian
    assignment maximising the total IoU (pairs that overlap at all).

    Attributes
    ----------
    annotator : int
        Index of the annotator in the input.
    weight : float
        The weight it was given (0: ignored by the merge).
    cells : int
        Its number of cells.
    matched : int
        Pairs with IoU at least :data:`AGREEMENT_IOU` (0.5).
    precision, recall, f1 : float
        ``matched / cells``, ``matched / consensus cells`` and their harmonic mean
        (1.0 when both are empty).
    mean_iou : float
        Mean over the annotator's cells of the IoU with its paired consensus cell
        (0 for unpaired cells; 1.0 when both are empty, 0.0 when only it is).
    """

    annotator: int
    weight: float
    cells: int
    matched: int
    precision: float
    recall: float
    f1: float
    mean_iou: float


class CellRecord(NamedTuple):
    """One consensus cell: who drew it and how well they agree.

    Attributes
    ----------
    id : int
        Its id in the output.
    support : float
        Summed weight of the annotators who drew it, as a fraction of the total.
    annotators : int
        How many annotators drew it.
    agreement : float
        Mean IoU of their cells with the consensus cell.
    low_support : bool
        Kept although at most half of the annotators drew it (a tie of weights, or
        the word of one reliable annotator of two): worth a person's eye.
    """

    id: int
    support: float
    annotators: int
    agreement: float
    low_support: bool


@dataclass(frozen=True)
class ConsensusReport:
    """What :func:`merge_labels` did.

    Attributes
    ----------
    annotators : int
        Number of inputs.
    weights : tuple of float
        The weight of each input (equal weights when none were given).
    cells_per_annotator : tuple of int
        Cells in each input.
    consensus_cells : int
        Cells in the output.
    dropped : tuple of DroppedCell
        Every input cell left out of the consensus, sorted by annotator and id
        (cells of weight-0 annotators are not listed: see ``ignored``).
    agreement : tuple of AnnotatorAgreement
        One per input, in input order.
    ignored : tuple of int
        Inputs of weight 0 (no part in the merge).
    method : {"single", "vote"}
        ``"single"`` when only one annotator had a positive weight (its labels are
        returned, renumbered), ``"vote"`` otherwise.
    min_iou, min_support : float
        The parameters used.
    cells : tuple of CellRecord
        One per output cell, by id.
    finders : tuple of int
        How many annotators found each dropped cell, in the order of ``dropped``
        (not in :meth:`to_dict`, whose JSON stays as it was).
    """

    annotators: int
    weights: tuple[float, ...]
    cells_per_annotator: tuple[int, ...]
    consensus_cells: int
    dropped: tuple[DroppedCell, ...]
    agreement: tuple[AnnotatorAgreement, ...]
    ignored: tuple[int, ...] = ()
    method: Literal["single", "vote"] = "vote"
    min_iou: float = 0.5
    min_support: float = 0.5
    cells: tuple[CellRecord, ...] = ()
    finders: tuple[int, ...] = ()

    @property
    def single(self) -> bool:
        """True when only one annotator contributed."""
        return self.method == "single"

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, ready for :func:`json.dumps`."""
        return {
            "annotators": self.annotators,
            "weights": list(self.weights),
            "cells_per_annotator": list(self.cells_per_annotator),
            "consensus_cells": self.consensus_cells,
            "dropped": [d._asdict() for d in self.dropped],
            "agreement": [vars(a).copy() for a in self.agreement],
            "ignored": list(self.ignored),
            "method": self.method,
            "min_iou": self.min_iou,
            "min_support": self.min_support,
            "cells": [c._asdict() for c in self.cells],
        }


def annotator_agreement(index: int, weight: float, cells: Cells, consensus: Cells
                        ) -> AnnotatorAgreement:
    """How well one annotator's cells agree with the consensus (see :class:`AnnotatorAgreement`)."""
    n, m = cells.count, consensus.count
    rows, cols, iou = overlap_iou(cells, consensus)
    _, _, paired = assign(rows, cols, iou, np.nextafter(0.0, 1.0))
    matched = int(np.count_nonzero(paired >= AGREEMENT_IOU))
    if n == 0 and m == 0:
        return AnnotatorAgreement(index, weight, 0, 0, 1.0, 1.0, 1.0, 1.0)
    return AnnotatorAgreement(
        index, weight, n, matched,
        precision=matched / n if n else 0.0,
        recall=matched / m if m else 0.0,
        f1=2 * matched / (n + m),
        mean_iou=float(paired.sum()) / n if n else 0.0,
    )
