"""Tests of cellcrowd.labelcheck: the one label-image check and the 16-bit limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellcrowd.errors import AnnotationError, InputError
from cellcrowd.labelcheck import (
    UINT16_MAX,
    LabelImageError,
    check_label_image,
    fits_uint16,
)


def test_a_good_label_image_comes_back_as_an_array() -> None:
    out = check_label_image([[0, 1], [2, UINT16_MAX]])
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [[0, 1], [2, 65535]]
    assert check_label_image(np.zeros((2, 3, 4), np.uint8), ndim=3).shape == (2, 3, 4)
    assert check_label_image(np.ones((2, 2), bool), allow_bool=True).dtype == np.bool_
    assert check_label_image(np.array([2**40]), ndim=None, max_id=None).tolist() == [2**40]


@pytest.mark.parametrize(
    ("array", "options", "match"),
    [
        (np.zeros((2, 2), np.float32), {},
         r"^movie\.tif: frame 3 must be an integer label image .*got dtype float32: fix it$"),
        (np.zeros((2, 2), bool), {}, "got dtype bool"),
        (np.zeros((1, 2, 2), np.uint16), {},
         r"frame 3 must be a 2-D label image, got shape \(1, 2, 2\): fix it$"),
        (np.array([[-3, 0]]), {}, r"frame 3 must hold ids in 0\.\.65535, got -3\.\.0"),
        (np.array([[0, 70000]]), {}, r"ids in 0\.\.65535, got 0\.\.70000"),
        (np.array([[0, 9]]), {"max_id": 8}, r"ids in 0\.\.8, got 0\.\.9"),
        (np.array([[-1, 9]]), {"max_id": None}, r"no negative ids, got -1\.\.9"),
    ],
    ids=["float", "bool", "3d", "negative", "over-16-bit", "max-id", "no-limit-negative"],
)
def test_bad_label_images_are_named_with_the_bad_value(
    array: np.ndarray, options: dict[str, object], match: str
) -> None:
    with pytest.raises(LabelImageError, match=match) as info:
        check_label_image(array, what="frame 3", path="movie.tif", hint=": fix it",
                          **options)  # type: ignore[arg-type]
    # One error for callers that expected any of the older ones.
    assert isinstance(info.value, AnnotationError)
    assert isinstance(info.value, InputError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)
    assert info.value.path == Path("movie.tif")


def test_fits_uint16() -> None:
    assert fits_uint16(np.array([0, UINT16_MAX]))
    assert fits_uint16(np.zeros(0, np.int64))
    assert not fits_uint16(np.array([UINT16_MAX + 1]))
    assert not fits_uint16(np.array([-1, 3]))
