"""Checks for label images, in the spirit of ``numpy.testing``.

Crowd annotations, cleaning and stitching all renumber cells, so the question
a test (or a user checking a harvest against ground truth) asks is whether two
label images hold *the same cells*, whatever their ids.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["assert_same_up_to_relabel", "relabel_mismatch", "same_up_to_relabel"]


def relabel_mismatch(truth: NDArray[np.integer], labels: NDArray[np.integer]) -> str | None:
    """Why ``labels`` is not ``truth`` with its ids renamed one-to-one, or None if it is.

    Background (0) must stay background; every other id must map to exactly one
    id and back.

    >>> a = np.array([[0, 1, 1], [2, 2, 0]])
    >>> relabel_mismatch(a, np.where(a == 1, 7, a)) is None
    True
    >>> relabel_mismatch(a, np.where(a == 2, 1, a))
    'two true cells share an id'
    """
    if truth.shape != labels.shape:
        return f"shapes differ: {truth.shape} and {labels.shape}"
    pairs = np.unique(np.stack([truth.ravel().astype(np.int64),
                                labels.ravel().astype(np.int64)]), axis=1)
    if not np.array_equal(pairs[0] == 0, pairs[1] == 0):
        return "background differs"
    if np.unique(pairs[0]).size != pairs.shape[1]:
        return "a true cell got two ids"
    if np.unique(pairs[1]).size != pairs.shape[1]:
        return "two true cells share an id"
    return None


def same_up_to_relabel(truth: NDArray[np.integer], labels: NDArray[np.integer]) -> bool:
    """True when ``labels`` is ``truth`` with ids renamed one-to-one (0 stays 0)."""
    return relabel_mismatch(truth, labels) is None


def assert_same_up_to_relabel(
    truth: NDArray[np.integer], labels: NDArray[np.integer], where: str = ""
) -> None:
    """Raise ``AssertionError`` (naming ``where``) unless the two hold the same cells."""
    problem = relabel_mismatch(truth, labels)
    if problem is not None:
        raise AssertionError(f"{where}: {problem}" if where else problem)
