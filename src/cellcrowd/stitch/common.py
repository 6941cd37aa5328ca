"""What the stitching modules share: label checks, the lineage type, division search."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..match import Overlap

__all__ = ["Lineage", "check_fraction", "check_labels", "dividing_cells"]

#: A DeepCell lineage: ``{label: {"label", "frames", "daughters", "capped", "frame_div",
#: "parent"}}``.
Lineage = dict[int, dict[str, Any]]


def check_labels(array: NDArray[Any], ndim: int, what: str) -> NDArray[Any]:
    """``array`` as an integer array of ``ndim`` dimensions without negative labels.

    Raises TypeError (not integers) or ValueError (wrong dimensions, negative labels).
    """
    array = np.asarray(array)
    if array.dtype.kind not in "ui":
        raise TypeError(f"{what} must hold integer labels, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {array.shape}")
    if array.size and array.dtype.kind == "i" and int(array.min()) < 0:
        raise ValueError(f"{what} holds negative labels (min {array.min()}); 0 is background")
    return array



def dividing_cells(ov: Overlap, *, min_inside: float, min_share: float
                   ) -> dict[int, list[int]]:
    """Cells of the first frame holding two or more cells of the next (compact indices).

    A cell of the next frame is held when at least ``min_inside`` of it lies in
    the cell and it covers at least ``min_share`` of the cell. Returns
    ``{first label: sorted next labels}``.
    """
    inside = ov.inter / np.maximum(ov.area_b[ov.b], 1)
    share = ov.inter / np.maximum(ov.area_a[ov.a], 1)
    ok = (inside >= min_inside) & (share >= min_share)
    children: dict[int, list[int]] = {}
    for a, b in zip(ov.a[ok], ov.b[ok], strict=True):
        children.setdefault(int(a), []).append(int(b))
    return {a: sorted(bs) for a, bs in children.items() if len(bs) >= 2}




def check_fraction(name: str, value: float) -> None:
    """Raise ValueError unless ``0 < value <= 1`` (``name`` says which parameter)."""
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
