"""The one check of label images (integer cell ids, 0 = background) and the 16-bit limit.

Label images are written as 16-bit PNGs, so ids above :data:`UINT16_MAX` do not fit;
cleaning works on 32-bit ids (:data:`INT32_MAX`). :func:`check_label_image` checks an
array's dtype, dimensions and id range with one message style (what it is, the file,
the bad dtype, shape or values, and what to do); :func:`fits_uint16` says whether ids
fit a 16-bit image.

Examples
--------
>>> import numpy as np
>>> check_label_image(np.array([[0, 3]], np.int64), what="montage").tolist()
[[0, 3]]
>>> check_label_image(np.array([[-1, 0]]), what="montage")
Traceback (most recent call last):
...
cellcrowd.labelcheck.LabelImageError: montage must hold ids in 0..65535, got -1..0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from .errors import AnnotationError

__all__ = ["INT32_MAX", "UINT16_MAX", "LabelImageError", "check_label_image", "fits_uint16"]

#: The largest id a 16-bit label image (PNG) holds.
UINT16_MAX: Final[int] = int(np.iinfo(np.uint16).max)
#: The largest id cleaning works with (int32).
INT32_MAX: Final[int] = int(np.iinfo(np.int32).max)


class LabelImageError(AnnotationError, TypeError):
    """An array is not the label image asked for: not integer, wrong dimensions, or ids
    outside the allowed range.

    An :class:`~cellcrowd.errors.AnnotationError` (so an ``InputError`` and a
    ``ValueError``, with ``.path`` when a file is named) and also a ``TypeError``, as
    the wrong-dtype errors of the functions that check label arrays always were.
    """


def fits_uint16(array: NDArray[Any]) -> bool:
    """Whether every id of ``array`` lies in ``0..65535`` (an empty array fits).

    >>> fits_uint16(np.array([0, 65535])), fits_uint16(np.array([-1])), fits_uint16(np.array([]))
    (True, False, True)
    """
    return array.size == 0 or (int(array.min()) >= 0 and int(array.max()) <= UINT16_MAX)


def check_label_image(
    image: Any,
    *,
    ndim: int | None = 2,
    what: str = "label image",
    path: str | Path | None = None,
    max_id: int | None = UINT16_MAX,
    allow_bool: bool = False,
    hint: str = "",
) -> NDArray[Any]:
    """``image`` as an ndarray, after checking it is a label image; raise otherwise.

    Parameters
    ----------
    image : array_like
        The label image (or stack of them).
    ndim : int, optional
        The dimensions it must have (None: any).
    what : str
        What it is, to start the messages with (``"truth labels"``).
    path : Path, optional
        The file it was read from (named in the error).
    max_id : int, optional
        The largest id allowed (:data:`UINT16_MAX` by default; None: no limit). Negative
        ids are always refused.
    allow_bool : bool
        Accept a boolean mask (one cell) as labels.
    hint : str
        What to do, appended to every message (``": clean the annotation first"``).

    Raises
    ------
    LabelImageError
        The dtype is not integer, the dimensions are not ``ndim``, or an id is negative
        or above ``max_id``; the message names ``what``, the file, and the bad value.
    """
    array: NDArray[Any] = np.asarray(image)
    kinds = "biu" if allow_bool else "iu"
    if array.dtype.kind not in kinds:
        raise LabelImageError(f"{what} must be an integer label image (cell ids, 0 = "
                              f"background), got dtype {array.dtype}{hint}", path=path)
    if ndim is not None and array.ndim != ndim:
        raise LabelImageError(f"{what} must be a {ndim}-D label image, got shape "
                              f"{array.shape}{hint}", path=path)
    if array.size and array.dtype.kind != "b":
        low, high = int(array.min()), int(array.max())
        if low < 0 or (max_id is not None and high > max_id):
            allowed = f"ids in 0..{max_id}" if max_id is not None else "no negative ids"
            raise LabelImageError(f"{what} must hold {allowed}, got {low}..{high}{hint}",
                                  path=path)
    return array
