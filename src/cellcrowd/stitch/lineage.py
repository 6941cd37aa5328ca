"""The lineage of a tracked label movie, and the lineage file.

A DeepCell lineage (``label, frames, daughters, capped, frame_div, parent``)
from label persistence, the divisions found at part boundaries and the divisions
inside parts (a cell seen last in frame ``t`` whose last position holds two or
more cells first seen in ``t + 1``). ``frame_div`` is the first frame in which
the daughters exist (the parent's last frame + 1), as DeepCell's tracker records
it; ``capped`` is true for a cell that divides.

:func:`lineage_from_labels` takes a whole movie; :class:`LineageBuilder` the same
a few frames at a time. :func:`read_lineage` reads ``stitched/lineage.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fastremap
import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, LineageError
from ..match import compact_ids, overlap
from .common import Lineage, check_fraction, check_labels, dividing_cells

__all__ = [
    "FramePresence", "LineageBuilder", "frames_per_label", "lineage_from_labels",
    "read_lineage",
]


def frames_per_label(movie: NDArray[Any]) -> dict[int, list[int]]:
    """Frames (sorted) in which every label of a ``(T, H, W)`` movie is present.

    >>> frames_per_label(np.array([[[0, 3]], [[0, 0]], [[3, 5]]]))
    {3: [0, 2], 5: [2]}
    """
    present = FramePresence()
    for t in range(movie.shape[0]):
        present.add(t, movie[t])
    return dict(present.items())


class FramePresence(Mapping[int, list[int]]):
    """Label -> the frames (sorted) it is in, recorded one frame at a time (:meth:`add`,
    frames in increasing order); what :func:`frames_per_label` gives for a whole movie.

    Kept as runs of consecutive frames, which is one run or a few per cell: the record
    grows with the cells, not with the movie's length (a list per label held an entry
    per cell per frame: 5.8 MB at 2048^2 x 400). Each label's list is made when asked.

    >>> present = FramePresence()
    >>> for t, frame in enumerate([[0, 3], [0, 0], [3, 5], [3, 5]]):
    ...     present.add(t, np.array(frame))
    >>> present[3], present.runs(3), 5 in present, 4 in present
    ([0, 2, 3], [(0, 0), (2, 3)], True, False)
    """

    def __init__(self) -> None:
        self._runs: dict[int, list[int]] = {}  # label -> [first, last, first, last, ...]
        self._last_frame = -1

    def add(self, t: int, frame: NDArray[Any]) -> None:
        """Record frame ``t``'s labels (0 is background)."""
        if t <= self._last_frame:
            raise ValueError(f"frame {t} comes after frame {self._last_frame}: add frames "
                             "in increasing order")
        self._last_frame = t
        for label in np.unique(frame):
            if label:
                runs = self._runs.setdefault(int(label), [])
                if runs and runs[-1] == t - 1:
                    runs[-1] = t
                else:
                    runs += [t, t]

    def runs(self, label: int) -> list[tuple[int, int]]:
        """The label's runs of consecutive frames, (first, last) each."""
        flat = self._runs[label]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def __getitem__(self, label: int) -> list[int]:
        return [t for first, last in self.runs(label) for t in range(first, last + 1)]

    def __contains__(self, label: object) -> bool:
        return label in self._runs

    def __iter__(self) -> Iterator[int]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


def lineage_from_labels(
    movie: NDArray[Any],
    parents: dict[int, int] | None = None,
    *,
    min_inside: float = 0.5,
    min_share: float = 0.2,
) -> Lineage:
    """A DeepCell lineage of a tracked label movie, finding divisions inside it.

    Parameters
    ----------
    movie : (T, H, W) int array
        Tracked labels: one id per cell for as long as it lives.
    parents : dict, optional
        Known divisions, daughter -> parent (e.g. :attr:`LinkReport.parents`).
        Each daughter must first appear right after its parent's last frame.
    min_inside, min_share : float
        A cell last seen in frame ``t`` divides into the cells first seen in
        ``t + 1`` (two or more) that each lie at least ``min_inside`` inside its
        last position and cover at least ``min_share`` of it.

    Returns
    -------
    dict
        ``{label: {"label", "frames", "daughters", "capped", "frame_div", "parent"}}``;
        ``frame_div`` is the daughters' first frame (``None`` without division),
        ``capped`` is true for a cell that divides, ``parent`` is ``None`` for a root.

    Raises
    ------
    TypeError
        ``movie`` does not hold integers.
    ValueError
        ``movie`` is not 3-D or holds negative labels.
    LineageError
        A given division names a label not in the movie, or its daughter does
        not start right after its parent ends.

    Examples
    --------
    >>> movie = np.array([[[1, 1, 1, 1]], [[2, 2, 3, 3]]])
    >>> lineage = lineage_from_labels(movie)
    >>> lineage[1]["daughters"], lineage[1]["frame_div"], lineage[2]["parent"]
    ([2, 3], 1, 1)
    """
    movie = check_labels(movie, 3, "movie")
    check_fraction("min_inside", min_inside)
    check_fraction("min_share", min_share)
    builder = LineageBuilder(min_inside=min_inside, min_share=min_share)
    builder.add(movie, parents or {})
    return builder.finish()


class LineageBuilder:
    """:func:`lineage_from_labels` fed a few frames at a time (holding one frame between).

    ``add`` takes the next frames (movie ids) and the known divisions so far
    (daughter -> parent; each daughter must be given no later than the frames
    holding its first appearance); ``finish`` checks the known divisions and
    returns the lineage. A division inside the movie is looked for between every
    frame ``t`` and ``t + 1``: the cells of ``t`` missing from ``t + 1`` (whether
    they end at ``t`` is only known at the end) against the cells first seen in
    ``t + 1`` that are not known daughters. Each candidate (parent, daughters) is
    decided per parent, so candidates found with parents that turn out to live
    on are simply dropped in ``finish``.
    """

    def __init__(self, *, min_inside: float, min_share: float) -> None:
        self.min_inside, self.min_share = min_inside, min_share
        self.frames: dict[int, list[int]] = {}
        self.known: dict[int, int] = {}
        self.candidates: list[tuple[int, int, list[int]]] = []  # (t, parent, daughters)
        self.last: NDArray[Any] | None = None
        self.last_labels: NDArray[Any] = np.zeros(0, dtype=np.int64)
        self.count = 0

    def add(self, movie: NDArray[Any], parents: dict[int, int]) -> None:
        """Take the next ``(T, H, W)`` frames (movie ids, not checked) and known divisions."""
        self.known.update(parents)
        for frame in movie:
            t = self.count
            labels = np.asarray(fastremap.unique(frame))  # sorted, hashed
            labels = labels[labels != 0]
            starters = []
            for label in labels.tolist():
                if label not in self.frames:
                    if t > 0 and label not in self.known:
                        starters.append(label)
                    self.frames[label] = []
                self.frames[label].append(t)
            if self.last is not None and starters:
                enders = np.setdiff1d(self.last_labels, labels)
                if enders.size:
                    self._divisions(t - 1, self.last, enders, frame, starters)
            self.last, self.last_labels = frame, labels
            self.count += 1
        if self.last is not None:
            self.last = self.last.copy()  # not a view that would keep ``movie`` alive

    def _divisions(self, t: int, before_frame: NDArray[Any], enders: NDArray[Any],
                   after_frame: NDArray[Any], starters: list[int]) -> None:
        # Only pixels of an ender or a starter count: elsewhere both are background, so
        # the areas and overlaps of the cells over these pixels are those over the frame.
        in_before, in_after = np.isin(before_frame, enders), np.isin(after_frame, starters)
        where = np.flatnonzero(in_before | in_after)
        before = np.where(in_before.ravel()[where], before_frame.ravel()[where], 0)
        after = np.where(in_after.ravel()[where], after_frame.ravel()[where], 0)
        ua, ia = compact_ids(before)
        ub, ib = compact_ids(after)
        found = dividing_cells(overlap(ia, ib, ua.size, ub.size),
                               min_inside=self.min_inside, min_share=self.min_share)
        for a, bs in found.items():
            self.candidates.append((t, int(ua[a]), [int(ub[b]) for b in bs]))

    def finish(self) -> Lineage:
        """The lineage of every frame added; LineageError for a bad known division."""
        frames, known = self.frames, dict(self.known)
        for daughter, parent in known.items():
            for label in (daughter, parent):
                if label not in frames:
                    raise LineageError(
                        f"division {parent} -> {daughter}: label {label} is not in the movie",
                        label=label, rule="division labels exist")
            if frames[daughter][0] != frames[parent][-1] + 1:
                raise LineageError(
                    f"division {parent} -> {daughter}: the parent's last frame is "
                    f"{frames[parent][-1]} but the daughter's first is {frames[daughter][0]}; "
                    "a daughter must start in the frame after its parent ends",
                    label=daughter, rule="daughters start after the parent")
        has_daughters = set(known.values())
        for t, parent, daughters in self.candidates:
            if frames[parent][-1] == t and parent not in has_daughters:
                for daughter in daughters:
                    known[daughter] = parent
        return _build_lineage(frames, known)


def _build_lineage(frames: dict[int, list[int]], parents: dict[int, int]) -> Lineage:
    daughters: dict[int, list[int]] = {}
    for d, p in parents.items():
        daughters.setdefault(p, []).append(d)
    lineage: Lineage = {}
    for label in sorted(frames):
        kids = sorted(daughters.get(label, []))
        lineage[label] = {
            "label": label,
            "frames": list(frames[label]),
            "daughters": kids,
            "capped": bool(kids),
            "frame_div": frames[label][-1] + 1 if kids else None,
            "parent": parents.get(label),
        }
    return lineage


def _without_frames(entry: dict[str, Any]) -> dict[str, Any]:
    entry.pop("frames", None)
    return entry


def _shared_ints() -> Callable[[str], int]:
    """A ``parse_int`` for ``json.loads`` giving one object per distinct value. A
    lineage's frame numbers repeat once per cell, and Python makes a new 28-byte object
    for every integer above 256 it parses: at 2048^2 x 400 frames the parsed lineage took
    14.1 MB this way, 6.8 MB with the frames shared (3.9 MB at 200 frames either way)."""
    known: dict[str, int] = {}

    def parse(text: str) -> int:
        value = known.get(text)
        if value is None:
            value = known[text] = int(text)
        return value

    return parse


def read_lineage(path: str | Path, *, frames: bool = True) -> Lineage:
    """Read a lineage JSON file (``{"<label>": {...}}``) with integer keys.

    With ``frames=False`` each cell's ``"frames"`` list is dropped as it is parsed: the
    lists hold an entry per cell per frame, as many as a long movie has cell-frames,
    and what needs only parents and daughters need not hold them.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_int=_shared_ints(),
                          object_hook=None if frames else _without_frames)
    except FileNotFoundError:
        raise InputError("lineage not found: run the stitch stage first", path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, got {type(data).__name__}", path=path)
    try:
        return {int(k): v for k, v in data.items()}
    except ValueError:
        raise InputError("lineage keys must be cell labels (integers)", path=path) from None
