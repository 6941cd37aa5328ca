"""Annotation images -> cell ids: the colours of one crowd annotation decoded.

:func:`decode_annotation` (also importable from :mod:`cellcrowd.labels`) turns
a PNG array (ids in the red channel, one colour per cell, or grey ids) into
``int32`` ids.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import fastremap
import numpy as np
from numpy.typing import NDArray

from .errors import AnnotationError
from .labelcheck import INT32_MAX, check_label_image

__all__ = ["Encoding", "decode_annotation", "rank_ids"]

logger = logging.getLogger(__name__)

Encoding = Literal["auto", "red", "rgb"]


def _check_colour_dtype(image: NDArray[np.generic]) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise AnnotationError(
            f"a colour annotation must be 8- or 16-bit (uint8/uint16), got dtype {image.dtype}"
        )


def _decode_grey(image: NDArray[np.generic]) -> NDArray[np.int32]:
    checked = check_label_image(image, what="a grey annotation", max_id=INT32_MAX,
                                hint=": save label images as uint8/uint16 PNG or integer TIFF")
    return checked.astype(np.int32)


def decode_annotation(
    image: NDArray[np.generic], *, encoding: Encoding = "auto"
) -> NDArray[np.int32]:
    """Turn an annotation image into cell ids (0 = background).

    Accepted images:

    * ``(H, W)`` integer: the ids themselves (``encoding`` is not used);
    * ``(H, W, 2)`` uint8/uint16: grey ids and alpha;
    * ``(H, W, 3)`` or ``(H, W, 4)`` uint8/uint16: RGB(A).

    Pixels whose alpha is 0 are background. Encodings of colour images:

    ``"red"``
        The id is the red channel (the original tool); green and blue are ignored.
    ``"rgb"``
        Every distinct non-black colour is one cell; ids ``1..n`` follow the
        sorted packed colour value ``R·2^16 + G·2^8 + B`` (deterministic).
    ``"auto"``
        ``"red"`` when green and blue are 0 on every painted pixel (alpha not 0
        and colour not black), else ``"rgb"``.

    Parameters
    ----------
    image : ndarray
        The annotation as read from its PNG.
    encoding : {"auto", "red", "rgb"}
        How colours map to ids.

    Returns
    -------
    ndarray of int32, shape (H, W)

    Raises
    ------
    AnnotationError
        For an unsupported shape, dtype, encoding or out-of-range grey ids.

    Examples
    --------
    >>> rgba = np.zeros((2, 3, 4), np.uint8)
    >>> rgba[0, :2] = [9, 200, 30, 255]
    >>> rgba[1, 2] = [50, 0, 70, 255]
    >>> decode_annotation(rgba).tolist()
    [[1, 1, 0], [0, 0, 2]]
    >>> rgba[..., 1:3] = 0
    >>> decode_annotation(rgba).tolist()
    [[9, 9, 0], [0, 0, 50]]
    """
    if encoding not in ("auto", "red", "rgb"):
        raise AnnotationError(f"encoding must be 'auto', 'red' or 'rgb', got {encoding!r}")
    image = np.asarray(image)
    if image.ndim == 2:
        return _decode_grey(image)
    if image.ndim != 3 or image.shape[2] not in (2, 3, 4):
        raise AnnotationError(
            f"an annotation must be (H, W) grey, (H, W, 2) grey+alpha, or (H, W, 3|4) "
            f"RGB(A), got shape {image.shape}"
        )
    _check_colour_dtype(image)
    if image.dtype == np.uint8 and image.shape[2] == 4 and image.flags.c_contiguous:
        return _decode_rgba8(image, encoding)
    return _decode_colours(image, encoding)


def _decode_rgba8(image: NDArray[np.generic], encoding: Encoding) -> NDArray[np.int32]:
    """A C-contiguous uint8 RGBA image decoded through its distinct pixels: each pixel's
    four bytes read as one word, the words numbered by a hash (``fastremap.renumber``),
    the few distinct words decoded as a one-row image and looked up (two passes)."""
    index, numbers = fastremap.renumber(image.view(np.uint32)[..., 0], preserve_zero=False,
                                        in_place=False)
    words = np.fromiter(numbers.keys(), np.uint32, count=len(numbers))
    ids = _decode_colours(words.view(np.uint8).reshape(1, -1, 4), encoding)[0]
    lut = np.zeros(len(numbers) + 1, np.int32)
    lut[np.fromiter(numbers.values(), np.int64, count=len(numbers))] = ids
    out: NDArray[np.int32] = np.take(lut, index)
    return out


def _decode_colours(image: NDArray[np.generic], encoding: Encoding) -> NDArray[np.int32]:
    """:func:`decode_annotation` of a checked ``(H, W, 2|3|4)`` colour image."""
    if image.shape[2] == 2:  # grey ids and alpha
        grey: NDArray[np.int32] = np.where(image[..., 1] != 0, image[..., 0], 0).astype(np.int32)
        return grey
    alpha = image[..., 3] if image.shape[2] == 4 else None
    packed = _pack_colours(image, alpha)
    shift = 8 * image.dtype.itemsize
    if encoding == "auto":  # green or blue on a painted pixel?
        green_blue = packed & packed.dtype.type((1 << 2 * shift) - 1)
        encoding = "red" if not green_blue.any() else "rgb"
        logger.debug("annotation colours decoded as %r", encoding)
    if encoding == "red":
        red: NDArray[np.int32] = (packed >> packed.dtype.type(2 * shift)).astype(np.int32)
        return red
    # the packed colours are 0 exactly where nothing is painted: 0 stays 0
    ids: NDArray[np.int32] = rank_ids(packed)[0].view(np.int32)  # ids < 2**31
    return ids


def _pack_colours(
    image: NDArray[np.generic], alpha: NDArray[np.generic] | None
) -> NDArray[np.unsignedinteger]:
    """``R·2^2s + G·2^s + B`` per pixel (``s`` the channel's bits), 0 where alpha is 0."""
    shift = 8 * image.dtype.itemsize
    wide = np.uint32 if image.dtype == np.uint8 else np.uint64
    packed: NDArray[Any] = image[..., 0].astype(wide)
    packed <<= wide(2 * shift)
    green: NDArray[Any] = image[..., 1].astype(wide)
    green <<= wide(shift)
    packed |= green
    packed |= image[..., 2]
    if alpha is not None:
        np.copyto(packed, 0, where=alpha == 0)
    return packed


def rank_ids(
    values: NDArray[Any], *, keep_zero: bool = True
) -> tuple[NDArray[np.uint32], int]:
    """Ids ``1..n`` following the sorted distinct ``values`` (0 stays 0 with ``keep_zero``).

    Hash-based (``fastremap.renumber``) with a lookup table over the ``n``
    distinct values: no sort over the pixels. Values must not be negative.

    Returns
    -------
    ids : ndarray of uint32, the shape of ``values``
    n : int
        Distinct non-zero values (all distinct values without ``keep_zero``).

    Examples
    --------
    >>> ids, n = rank_ids(np.array([0, 7, 7, 300, 3]))
    >>> ids.tolist(), n
    ([0, 2, 2, 3, 1], 3)
    """
    values = np.ascontiguousarray(values)
    if values.size == 0:
        return np.zeros(values.shape, np.uint32), 0
    renumbered, remap = fastremap.renumber(values, preserve_zero=keep_zero, in_place=False)
    mapping: dict[Any, int] = {key: int(new) for key, new in remap.items()}
    if keep_zero:
        mapping.pop(0, None)
    order = np.fromiter((mapping[v] for v in sorted(mapping)), dtype=np.int64,
                        count=len(mapping))
    lut = np.zeros(len(mapping) + 1, dtype=np.uint32)
    lut[order] = np.arange(1, len(mapping) + 1)
    ids: NDArray[np.uint32] = np.take(lut, renumbered)  # faster than lut[renumbered]
    return ids, len(mapping)
