"""Tiles back into full frames, parts back into one movie, and the lineage of its cells.

Across tiles (:func:`stitch_tiles`)
    The annotated tiles of one part were painted independently, so the same
    cell has unrelated ids in different tiles; inside one tile its id is the
    same in every frame of the part (one montage). Cells cut by a tile border
    appear in two (or four) tiles. For every pair of neighbouring tiles the
    labels of both are compared on the pixels the two tiles share, summed over
    all frames of the part; pairs with an IoU of at least ``min_iou`` are
    matched 1:1 (Hungarian assignment). Matches are merged into physical cells
    by union-find in order of decreasing IoU; a match that would put two
    different ids *of the same tile* into one cell is refused and reported as a
    :class:`StitchConflict` (the cells stay separate). Each frame pixel then
    takes the cell of the tile whose core owns it (:meth:`TileGrid.core_window`).

Across parts (:func:`link_parts`)
    Part ``N + 1`` starts right after part ``N``. Each cell of part ``N``'s
    last frame is linked to a cell of part ``N + 1``'s first frame by IoU
    (Hungarian assignment, ``min_iou``); a link is not made when either cell
    reaches ``min_iou`` with another cell too (ambiguous, reported). A cell that
    holds two or more cells of the next frame (each at least ``min_inside`` of
    its area inside it and covering at least ``min_share`` of the cell) divides
    into them instead. A linked cell keeps one id for the whole movie; ids are
    renumbered globally.

Lineage (:func:`lineage_from_labels`)
    A DeepCell lineage (``label, frames, daughters, capped, frame_div,
    parent``) from label persistence, the divisions found at part boundaries
    and the divisions inside parts (a cell seen last in frame ``t`` whose last
    position holds two or more cells first seen in ``t + 1``). ``frame_div`` is
    the first frame in which the daughters exist (the parent's last frame + 1),
    as DeepCell's tracker records it; ``capped`` is true for a cell that divides.

Working folder (:func:`stitch_movies`)
    Reads ``movies/part{N}/x_XX_y_YY/annotated`` for every part, stitches and
    links them, and writes ``stitched/annotated`` (uint16 PNG),
    ``stitched/raw`` (TIFF copies of the raw frames) and
    ``stitched/lineage.json``. :func:`read_stitched` reads them back. It streams:
    each part's task writes its stitched frames to a file one at a time
    (:func:`match_tiles`, :mod:`~cellcrowd.stitch.parts`); each part is then read
    back a frame at a time, linked to the last frame of the part before (the same
    linking step as :func:`link_parts`) and written, and the lineage is built
    frame by frame (the same search as :func:`lineage_from_labels`), so neither a
    whole part nor the whole label movie is ever in memory.

Modules: :mod:`~cellcrowd.stitch.tiles`, :mod:`~cellcrowd.stitch.link`,
:mod:`~cellcrowd.stitch.lineage`, :mod:`~cellcrowd.stitch.folder` (the working
folder), :mod:`~cellcrowd.stitch.parts` (stitched parts on disk) and
:mod:`~cellcrowd.stitch.common`; every public name is importable from
``cellcrowd.stitch``. The matching primitives are in :mod:`cellcrowd.match`.
"""

from __future__ import annotations

from .common import Lineage
from .folder import MAX_CELLS, StitchMoviesResult, read_stitched, stitch_movies
from .lineage import (
    FramePresence,
    LineageBuilder,
    frames_per_label,
    lineage_from_labels,
    read_lineage,
)
from .link import AmbiguousLink, LinkReport, PartLinker, link_parts
from .tiles import (
    StitchConflict,
    StitchReport,
    TileChangedError,
    TileReader,
    TileStitch,
    match_tiles,
    stitch_tiles,
)

__all__ = [
    "MAX_CELLS",
    "AmbiguousLink",
    "FramePresence",
    "Lineage",
    "LineageBuilder",
    "LinkReport",
    "PartLinker",
    "StitchConflict",
    "StitchMoviesResult",
    "StitchReport",
    "TileChangedError",
    "TileReader",
    "TileStitch",
    "frames_per_label",
    "lineage_from_labels",
    "link_parts",
    "match_tiles",
    "read_lineage",
    "read_stitched",
    "stitch_movies",
    "stitch_tiles",
]
