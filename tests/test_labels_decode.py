"""Hash-based colour decoding and relabelling equal the sort-based originals."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from cellcrowd.labels import decode_annotation, rank_ids, relabel_sequential


def sorted_decode(image: NDArray[np.generic]) -> NDArray[np.int32]:
    """The reference: one id per distinct painted colour, in sorted packed order (np.unique)."""
    rgb = image[..., :3].astype(np.uint64)
    visible = np.ones(image.shape[:2], bool) if image.shape[2] == 3 else image[..., 3] != 0
    painted = visible & rgb.any(axis=2)
    if not rgb[..., 1:][painted].any():
        return np.where(visible, image[..., 0], 0).astype(np.int32)
    shift = 8 * image.dtype.itemsize
    packed = (rgb[..., 0] << (2 * shift)) | (rgb[..., 1] << shift) | rgb[..., 2]
    out = np.zeros(image.shape[:2], np.int32)
    _, inverse = np.unique(packed[painted], return_inverse=True)
    out[painted] = inverse.reshape(-1) + 1
    return out


def random_annotation(seed: int, dtype: type, channels: int) -> NDArray[np.generic]:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    edge = np.array([[0, 0, 1], [top, top, top], [top, 0, 0], [0, top, 0], [0, 0, top],
                     [1, 0, 0], [0, 0, 0]])
    palette = np.concatenate([edge, rng.integers(0, top + 1, size=(rng.integers(1, 300), 3))])
    shape = tuple(rng.integers(1, 60, size=2))
    image = palette[rng.integers(0, len(palette), size=shape)].astype(dtype)
    if channels == 4:
        alpha = rng.choice(np.array([0, 1, top]), size=shape, p=[0.3, 0.1, 0.6])
        image = np.concatenate([image, alpha[..., None].astype(dtype)], axis=2)
    return image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [3, 4])
def test_decode_equals_the_sorting_reference(dtype: type, channels: int) -> None:
    for seed in range(25):
        image = random_annotation(seed, dtype, channels)
        got = decode_annotation(image)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, sorted_decode(image))
        flipped = image[:, ::-1]  # not contiguous: RGBA is not read as one word per pixel
        np.testing.assert_array_equal(decode_annotation(flipped), sorted_decode(flipped))


def test_decode_red_only_and_blank_images() -> None:
    rng = np.random.default_rng(7)
    image = np.zeros((30, 40, 4), np.uint8)
    image[..., 0] = rng.integers(0, 256, size=(30, 40))
    image[..., 3] = rng.choice(np.array([0, 255]), size=(30, 40))
    np.testing.assert_array_equal(decode_annotation(image), sorted_decode(image))
    assert not decode_annotation(np.zeros((5, 6, 3), np.uint16)).any()
    assert decode_annotation(np.zeros((0, 6, 4), np.uint8)).shape == (0, 6)


def test_rank_ids_matches_unique() -> None:
    rng = np.random.default_rng(11)
    for seed in range(20):
        values = rng.choice(rng.integers(0, 2**40, size=rng.integers(1, 50)),
                            size=rng.integers(1, 500)).astype(np.uint64)
        if seed % 2:
            values[rng.integers(0, values.size, size=3)] = 0
        uniq, inverse = np.unique(values, return_inverse=True)
        ids, n = rank_ids(values, keep_zero=False)
        np.testing.assert_array_equal(ids, inverse.reshape(-1) + 1)
        assert n == uniq.size
        ids, n = rank_ids(values)
        offset = 0 if uniq[0] == 0 else 1
        np.testing.assert_array_equal(ids, inverse.reshape(-1) + offset)
        assert n == uniq.size - (1 - offset)


def test_relabel_sequential_keeps_dtype_and_order() -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice(np.array([0, 5, 70000, 9, 123456]), size=(20, 30)).astype(np.int64)
    got = relabel_sequential(labels)
    uniq, inverse = np.unique(labels, return_inverse=True)
    assert got.dtype == labels.dtype
    np.testing.assert_array_equal(got, inverse.reshape(labels.shape) + (uniq[0] != 0))
