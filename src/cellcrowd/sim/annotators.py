"""Careful and careless simulated annotators: how a worker's drawing departs from the truth.

A :class:`AnnotatorStyle` says how a worker draws; :func:`draw_labels` applies it
to a ground-truth label montage, frame by frame, and :func:`paint_styled` paints
the result as an annotation PNG (:func:`cellcrowd.sim.synthetic.paint_annotation`, so
with its usual small holes and stray pixels). Every defect is drawn at random
from the style's rates and ranges, never sized to the cleaning or consensus
thresholds:

* **boundary noise**: each cell's border moves by a smooth random field of
  about ``border`` px, plus a per-cell shift drawn from ``shift``;
* **misses**: each cell of a frame is left out with probability ``miss``;
* **merges**: each pair of touching or nearly touching cells of a frame is
  drawn as one cell with probability ``merge``;
* **specks**: ``specks`` (a range) blobs of 1-25 px anywhere in a frame, frame
  edges included, with an id no cell of the montage has.

:data:`CAREFUL` (about 1 px of noise) and :data:`CARELESS` (15 % missed, 7 % of
neighbouring pairs merged, 2-3 px sloppy borders, specks) are the two styles the
consensus tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..geometry import MontageLayout

__all__ = ["CAREFUL", "CARELESS", "AnnotatorStyle", "draw_labels", "paint_styled"]


@dataclass(frozen=True)
class AnnotatorStyle:
    """How a simulated worker draws (see the module docstring)."""

    name: str
    border: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    miss: float = 0.0
    merge: float = 0.0
    specks: tuple[int, int] = (0, 0)


CAREFUL = AnnotatorStyle("careful", border=0.7, shift=(-0.5, 0.5))
CARELESS = AnnotatorStyle("careless", border=1.0, shift=(-2.0, 3.0), miss=0.15, merge=0.07,
                          specks=(0, 2))


def _field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float
           ) -> NDArray[np.float64]:
    """A smooth random field of standard deviation ``amplitude``."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0, mode="wrap")
    std = float(noise.std()) or 1.0
    out: NDArray[np.float64] = noise * (amplitude / std)
    return out


def _redraw_borders(frame: NDArray[np.int64], style: AnnotatorStyle,
                    rng: np.random.Generator) -> NDArray[np.int64]:
    """Each cell by its signed distance moved by the noise field and its own shift."""
    out = np.zeros_like(frame)
    field = _field(rng, frame.shape, style.border)
    ids = np.unique(frame[frame > 0])
    order = rng.permutation(ids.size)
    for cid in ids[order].tolist():
        mask = frame == cid
        inside = ndimage.distance_transform_edt(mask)
        outside = ndimage.distance_transform_edt(~mask)
        signed = np.where(mask, inside - 0.5, 0.5 - outside)
        drawn = signed + float(rng.uniform(*style.shift)) + field > 0
        out[drawn & (out == 0)] = cid
    return out


def _merge_neighbours(frame: NDArray[np.int64], rate: float, rng: np.random.Generator
                      ) -> NDArray[np.int64]:
    """Draw each pair of cells within 2 px of each other as one with probability ``rate``."""
    if rate <= 0:
        return frame
    ids = np.unique(frame[frame > 0]).tolist()
    target = {cid: cid for cid in ids}
    for cid in ids:
        near = ndimage.binary_dilation(frame == cid, iterations=2)
        for other in np.unique(frame[near & (frame > cid)]).tolist():
            if rng.random() < rate:
                target[other] = target[cid]
    lut = np.zeros(int(frame.max()) + 1, dtype=np.int64)
    for cid, t in target.items():
        lut[cid] = t
    merged = lut[frame]
    for cid in set(target.values()):  # close the gap between merged cells
        mask = merged == cid
        closed = ndimage.binary_closing(mask, iterations=2) & (merged == 0)
        merged[closed] = cid
    return merged


def _add_specks(frame: NDArray[np.int64], count: int, absent: int,
                rng: np.random.Generator) -> None:
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(1, 6, size=2))
        y = int(rng.integers(0, frame.shape[0] - height + 1))
        x = int(rng.integers(0, frame.shape[1] - width + 1))
        region = frame[y:y + height, x:x + width]
        region[region == 0] = absent


def draw_labels(truth: NDArray[Any], style: AnnotatorStyle, *,
                layout: MontageLayout | None = None, seed: int = 0) -> NDArray[np.int64]:
    """The label montage a worker of ``style`` draws for ``truth`` (ids kept)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(truth).astype(np.int64)
    out = np.zeros_like(labels)
    frames = (list(layout.iter_slices()) if layout is not None
              else [(slice(0, labels.shape[0]), slice(0, labels.shape[1]))])
    top = int(labels.max()) if labels.size else 0
    for sl in frames:
        frame = labels[sl].copy()
        ids = np.unique(frame[frame > 0])
        missed = ids[rng.random(ids.size) < style.miss]
        frame[np.isin(frame, missed)] = 0
        frame = _redraw_borders(_merge_neighbours(frame, style.merge, rng), style, rng)
        _add_specks(frame, int(rng.integers(style.specks[0], style.specks[1] + 1)),
                    top + 1, rng)
        out[sl] = frame
    return out


def paint_styled(truth: NDArray[Any], *, style: AnnotatorStyle,
                 layout: MontageLayout | None = None, seed: int = 0,
                 **paint: Any) -> NDArray[np.uint8]:
    """:func:`draw_labels`, painted as an annotation PNG by
    :func:`cellcrowd.sim.synthetic.paint_annotation` (``paint``: its other arguments)."""
    from .synthetic import paint_annotation

    return paint_annotation(draw_labels(truth, style, layout=layout, seed=seed),
                            layout=layout, seed=seed, **paint)
