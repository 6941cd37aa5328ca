"""The stitched movie read one frame at a time, for exports that stream.

:func:`cellcrowd.stitch.read_stitched` returns the whole movie as arrays; the
``.trk`` and CTC exports instead walk ``stitched/annotated`` and ``stitched/raw``
frame by frame (:class:`StitchedFrames`), so their memory does not grow with the
length of the movie. The first frame of each kind is read up front: its shape and
dtype are those of the whole movie (a later frame that differs is an error).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..files import list_images, read_image
from ..layout import WorkingFolder
from ..stitch import Lineage, read_lineage

__all__ = ["StitchedFrames"]


class _Frames:
    """Image files of one movie, read one at a time; all as the first one (shape, dtype)."""

    def __init__(self, paths: list[Path], dtype: Any = None) -> None:
        self.paths = paths
        self._dtype = dtype
        self._first = self._read(paths[0])
        self.shape: tuple[int, ...] = self._first.shape
        self.dtype: np.dtype[Any] = self._first.dtype

    def _read(self, path: Path) -> NDArray[Any]:
        frame = read_image(path)
        return frame if self._dtype is None else frame.astype(self._dtype)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[NDArray[Any]]:
        for k, path in enumerate(self.paths):
            frame = self._first if k == 0 else self._read(path)
            if frame.shape != self.shape or frame.dtype != self.dtype:
                raise InputError(
                    f"this frame is {frame.shape} {frame.dtype} but the movie's first frame "
                    f"({self.paths[0].name}) is {self.shape} {self.dtype}: run the stitch "
                    "stage again", path=path)
            yield frame


class StitchedFrames:
    """The stitched movie of ``wf``: label frames (int32), raw frames and the lineage.

    Checks what :func:`cellcrowd.stitch.read_stitched` checks, reading only the
    first frame of each kind; iterate :attr:`labels` and :attr:`raw` for the frames.

    Raises
    ------
    InputError
        No stitched frames; raw and label frames differ in number or frame size;
        the lineage is missing or unreadable; ``raw_needed_for`` is given and the
        raw frames were not written (the message says what needs them).
    """

    def __init__(self, wf: WorkingFolder, *, raw_needed_for: str | None = None) -> None:
        label_dir = wf.stitched_frame("annotated", 0).parent
        label_paths = list_images(label_dir) if label_dir.is_dir() else []
        if not label_paths:
            raise InputError("no stitched frames: run the stitch stage first", path=label_dir)
        raw_dir = wf.stitched_frame("raw", 0).parent
        raw_paths = list_images(raw_dir) if raw_dir.is_dir() else []
        if raw_paths and len(raw_paths) != len(label_paths):
            raise InputError(f"{len(raw_paths)} raw frames but {len(label_paths)} label "
                             "frames: run the stitch stage again", path=raw_dir)
        if not raw_paths and raw_needed_for:
            raise InputError(f"no stitched raw frames: {raw_needed_for} needs the raw movie; "
                             "set the raw folder and run the stitch stage again",
                             path=wf.stitched)
        self.labels = _Frames(label_paths, np.int32)
        if len(self.labels.shape) != 2:
            raise InputError(f"label frames must be 2-D, got {self.labels.shape}: run the "
                             "stitch stage again", path=label_dir)
        self.raw = _Frames(raw_paths) if raw_paths else None
        if self.raw is not None and self.raw.shape[:2] != self.labels.shape:
            raise InputError(f"raw frames are {self.raw.shape} but label frames "
                             f"{self.labels.shape}: run the stitch stage again", path=raw_dir)
        self.lineage: Lineage = read_lineage(wf.stitched_lineage)

    def __len__(self) -> int:
        return len(self.labels)
