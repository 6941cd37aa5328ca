"""The stitched movie's lineage as GEFF (Graph Exchange File Format), via ``geff``.

One directed graph ``{id}.geff`` (zarr format 2, the geff default) per stitched movie, and
``{id}_partN.geff`` per part when asked, beside the OME-Zarr
(:mod:`cellcrowd.export.omezarr`). One node per cell per frame, with properties
``t`` (frame), ``y``, ``x`` (centroid, pixels), ``area`` (pixels), ``seg_id``
(the cell's value in the labels), ``track_id`` (the same: a stitched label is
one track) and, when the consensus reports give them, ``support`` and
``agreement`` (missing otherwise). Axes: ``t`` (time, frame), ``y``, ``x``
(space, pixel). Edges join a cell's consecutive appearances (across a gap when
it is missing from some frames) and a dividing cell's last node to each
daughter's first. ``related_objects`` point at the OME-Zarr's level-0 arrays
(relative to the GEFF group): the labels (``node_prop`` = ``seg_id``) and the
image. The geff library validates the structure before writing.

The graph is built as arrays (:func:`lineage_arrays`), not as a graph object: about 25
bytes a node beyond the cell table rather than the kilobyte a ``networkx`` node with its
attributes takes, and written a chunk at a time (:func:`write_geff`), so a long movie's
graph stays small. The files are those ``geff.write`` makes of the same
``networkx.DiGraph`` (:func:`lineage_graph`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..layout import WorkingFolder
from .cells import CellTable, cell_table
from .omezarr import LABELS_NAME
from .zarrstore import ExportTarget, require

__all__ = ["GraphArrays", "export_geff", "lineage_arrays", "lineage_graph", "write_geff"]

logger = logging.getLogger(__name__)

#: A GEFF property: its values and, when some elements lack it, which (else None).
Prop = dict[str, NDArray[Any] | None]

#: Nodes per block when the per-node arrays are made a piece at a time.
BLOCK_NODES = 1 << 16


@dataclass(frozen=True)
class PerLabel:
    """A value per cell (``support``, ``agreement``), looked up for each node by its label:
    ``labels`` sorted, ``values`` (0 where ``known`` is False)."""

    labels: NDArray[np.int64]
    values: NDArray[np.float64]
    known: NDArray[np.bool_]

    @classmethod
    def of(cls, values: dict[int, float | None]) -> PerLabel:
        labels = np.array(sorted(values), dtype=np.int64)
        got = [values[int(lab)] for lab in labels.tolist()]
        return cls(labels, np.array([0.0 if v is None else v for v in got], dtype=np.float64),
                   np.array([v is not None for v in got], dtype=bool))

    def rows(self, label: NDArray[np.integer[Any]]
             ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """The nodes' values and which nodes lack one (a label without an entry too)."""
        if not self.labels.size:
            return np.zeros(label.size), np.ones(label.size, dtype=bool)
        at = np.minimum(np.searchsorted(self.labels, label), self.labels.size - 1)
        known = (self.labels[at] == label) & self.known[at]
        return np.where(known, self.values[at], 0.0), ~known

    def blocks(self, label: NDArray[np.integer[Any]]
               ) -> Iterator[tuple[NDArray[np.float64], NDArray[np.bool_]]]:
        """:meth:`rows` of the nodes ``label`` names, a block of nodes at a time."""
        return (self.rows(label[i:i + BLOCK_NODES]) for i in range(0, label.size, BLOCK_NODES))


@dataclass(frozen=True)
class GraphArrays:
    """The lineage graph as GEFF arrays, kept small: ``nodes`` nodes with ids
    ``0..nodes-1``; node properties as the table's ``columns`` and ``per_label`` values
    (only those some node has; ``lacking``: those some node lacks); edges as each node's
    next appearance (``next_node``, -1: none) and the divisions' edges (``(k, 2)``, sorted
    by their first node). The writer makes the GEFF's arrays from them a piece at a time;
    ``node_props`` and ``edge_ids`` are the arrays whole.

    Nodes are the table's rows (only the frames asked for) in order; edges are sorted by
    their first node, a division's in the order of the lineage's daughters: the arrays
    ``geff.write`` makes of the same ``networkx.DiGraph`` (:func:`lineage_graph`).
    """

    nodes: int
    columns: dict[str, NDArray[Any]]
    per_label: dict[str, PerLabel]
    next_node: NDArray[np.signedinteger[Any]]
    divisions: NDArray[np.uint64]
    lacking: frozenset[str] = frozenset()

    @property
    def node_ids(self) -> NDArray[np.uint64]:
        return np.arange(self.nodes, dtype=np.uint64)

    @property
    def edges(self) -> int:
        return int(np.count_nonzero(self.next_node >= 0)) + len(self.divisions)

    @property
    def edge_ids(self) -> NDArray[np.uint64]:
        """The ``(E, 2)`` edges, sorted by their first node."""
        return np.concatenate([np.zeros((0, 2), np.uint64), *self.edge_blocks()])

    def edge_blocks(self) -> Iterator[NDArray[np.uint64]]:
        """The edges, a block of nodes' at a time (a node is the source of one kind only: a
        cell's last node has no next appearance)."""
        first = self.divisions[:, 0]
        for start in range(0, self.nodes, BLOCK_NODES):
            stop = min(start + BLOCK_NODES, self.nodes)
            src = start + np.flatnonzero(self.next_node[start:stop] >= 0)
            lo, hi = np.searchsorted(first, [start, stop])
            block = np.empty((src.size + hi - lo, 2), dtype=np.uint64)
            # a division's edges go after the appearances whose source comes before theirs
            at = np.searchsorted(src, first[lo:hi]) + np.arange(hi - lo)
            block[at] = self.divisions[lo:hi]
            rest = np.ones(block.shape[0], dtype=bool)
            rest[at] = False
            block[rest, 0] = src
            block[rest, 1] = self.next_node[src]
            yield block

    @property
    def prop_names(self) -> list[str]:
        """The node properties, in the order written."""
        return [*self.columns, *self.per_label]

    def prop_dtype(self, name: str) -> np.dtype[Any]:
        """The type a property is written in: a column's integers as int64 (the table
        keeps them narrower), anything else as it is (a per-label value: float64)."""
        if name not in self.columns:
            return np.dtype(np.float64)
        dtype = self.columns[name].dtype
        return np.dtype(np.int64) if dtype.kind in "iu" else dtype

    def prop_blocks(self, name: str) -> Iterator[tuple[NDArray[Any], NDArray[np.bool_] | None]]:
        """A property's values in :meth:`prop_dtype` (and missing flags, for a per-label
        one), a block at a time."""
        if name in self.columns:
            values, dtype = self.columns[name], self.prop_dtype(name)
            yield from ((values[i:i + BLOCK_NODES].astype(dtype, copy=False), None)
                        for i in range(0, self.nodes, BLOCK_NODES))
        else:
            yield from self.per_label[name].blocks(self.columns["seg_id"])

    @property
    def node_props(self) -> dict[str, Prop]:
        """Every node property's ``values`` and ``missing`` (None: no node lacks it), whole."""
        props: dict[str, Prop] = {}
        for name in self.prop_names:
            blocks = list(self.prop_blocks(name))
            props[name] = {"values": np.concatenate([v for v, _ in blocks]),
                           "missing": (np.concatenate([m for _, m in blocks])
                                       if name in self.lacking else None)}
        return props


def _next_nodes(label: NDArray[np.integer[Any]], t: NDArray[np.integer[Any]]
                ) -> tuple[NDArray[np.signedinteger[Any]], dict[int, int], dict[int, int]]:
    """Each node's next appearance of its cell (-1: none), in the smallest integer that
    holds a node, and each cell's first and last node; beyond the nodes' order, the
    temporaries are a block's."""
    order = np.lexsort((t, label))  # every cell's nodes in time order, cell after cell
    nxt: NDArray[np.signedinteger[Any]] = np.full(
        label.size, -1, dtype=np.int32 if label.size < 2**31 else np.int64)
    starts = [np.zeros(1, dtype=np.int64)]  # where each cell's nodes begin in ``order``
    for i in range(0, label.size - 1, BLOCK_NODES):
        after = order[i + 1:i + 1 + BLOCK_NODES]
        here = order[i:i + after.size]
        same = label[here] == label[after]
        nxt[here[same]] = after[same]
        starts.append(i + 1 + np.flatnonzero(~same))
    first_at = np.concatenate(starts)
    last_at = np.r_[first_at[1:], order.size] - 1
    first = dict(zip(label[order[first_at]].tolist(), order[first_at].tolist(), strict=True))
    last = dict(zip(label[order[last_at]].tolist(), order[last_at].tolist(), strict=True))
    return nxt, first, last


def _divisions(table: CellTable, first: dict[int, int], last: dict[int, int]
               ) -> NDArray[np.uint64]:
    """A dividing cell's last node to each daughter's first, sorted by the first node (a
    division's in the order of its daughters)."""
    pairs = sorted(((last[lab], first[int(d)]) for lab in last
                    for d in dict.fromkeys(table.lineage.get(lab, {}).get("daughters") or [])
                    if int(d) in first), key=lambda pair: pair[0])  # (stable)
    return np.array(pairs, dtype=np.uint64).reshape(-1, 2)


def lineage_arrays(table: CellTable, frames: Collection[int] | None = None) -> GraphArrays:
    """The lineage as GEFF arrays of cell-frame nodes (only ``frames`` if given).

    >>> from cellcrowd.export.cells import CellNodes
    >>> table = CellTable(3, (4, 4), CellNodes.of([(1, 0, 1.0, 1.0, 4), (2, 2, 1.0, 1.0, 2),
    ...     (3, 2, 3.0, 3.0, 2)]), {1: {"parent": None, "daughters": [2, 3], "frames": [0]},
    ...     2: {"parent": 1, "frames": [2]}, 3: {"parent": 1, "frames": [2]}})
    >>> lineage_arrays(table).edge_ids.tolist()
    [[0, 1], [0, 2]]
    """
    n = table.nodes
    if frames is not None:  # (the whole movie: the table's own columns, not copies)
        rows = np.flatnonzero(np.isin(n.t, np.fromiter(frames, np.int64)))
        n = n.take(rows)
    if not len(n):
        return GraphArrays(0, {}, {}, np.zeros(0, np.int32), np.zeros((0, 2), np.uint64))
    label, t = n.label, n.t
    columns: dict[str, NDArray[Any]] = {"t": t, "y": n.y, "x": n.x, "area": n.area,
                                        "seg_id": label, "track_id": label}
    per_label: dict[str, PerLabel] = {}
    lacking = set()
    for key, values in (("support", table.support), ("agreement", table.agreement)):
        per = PerLabel.of(values)
        missing = [(m.all(), m.any()) for _, m in per.blocks(label)]
        if not all(none for none, _ in missing):  # some node has one
            per_label[key] = per
            if any(some for _, some in missing):
                lacking.add(key)
    nxt, first, last = _next_nodes(label, t)
    return GraphArrays(len(n), columns, per_label, nxt, _divisions(table, first, last),
                       frozenset(lacking))


def lineage_graph(table: CellTable, frames: Collection[int] | None = None) -> Any:
    """The lineage as a ``networkx.DiGraph`` of cell-frame nodes (only ``frames`` if given):
    :func:`lineage_arrays` as a graph, for analysis (a property a node lacks is left out)."""
    nx = require("networkx")
    arrays = lineage_arrays(table, frames)
    graph = nx.DiGraph()
    columns = {k: (p["values"].tolist(), p["missing"])  # type: ignore[union-attr]
               for k, p in arrays.node_props.items()}
    for i in range(arrays.nodes):
        graph.add_node(i, **{k: v[i] for k, (v, miss) in columns.items()
                             if miss is None or not miss[i]})
    graph.add_edges_from(arrays.edge_ids.tolist())
    return graph


#: ``geff``'s chunks: along the first axis only, a power of two rows of about 8 MiB.
CHUNK_BYTES = 8 * 1024 * 1024

#: The axes: node properties ``t``, ``y``, ``x`` (names, units, types).
AXES = (["t", "y", "x"], ["frame", "pixel", "pixel"], ["time", "space", "space"])


def _chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows in a chunk of an array of ``shape``: ``geff``'s rule.

    >>> _chunk_rows((10**7, 2), 8), _chunk_rows((100,), 8)
    (524288, 100)
    """
    rows = CHUNK_BYTES // max(int(np.prod(shape[1:])) * itemsize, 1)
    return max(1, min(shape[0], 1 << (rows.bit_length() - 1)))


def _write_array(group: Any, path: str, shape: tuple[int, ...], dtype: Any,
                 blocks: Iterable[NDArray[Any]]) -> None:
    """An array of ``shape`` written from consecutive ``blocks`` of its rows, in ``geff``'s
    chunks: the files ``geff`` writes from the whole array, while one chunk at a time is
    copied and encoded."""
    if shape[0] == 0:
        group[path] = np.empty(shape, dtype=dtype)
        return
    rows = _chunk_rows(shape, np.dtype(dtype).itemsize)
    array = group.create_array(path, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]))
    chunk = np.empty((rows, *shape[1:]), dtype=dtype)
    written = filled = 0
    for block in blocks:
        while len(block):
            take = min(rows - filled, len(block))
            chunk[filled:filled + take] = block[:take]
            filled, block = filled + take, block[take:]
            if filled == rows or written + filled == shape[0]:
                array[written:written + filled] = chunk[:filled]
                written, filled = written + filled, 0
    if written != shape[0]:
        raise RuntimeError(f"GEFF array {path}: {written} rows written, {shape[0]} expected")


def write_geff(store: Any, arrays: GraphArrays, omezarr_path: str) -> None:
    """Write the lineage ``arrays`` as GEFF into a zarr store (format 2), pointing at the
    OME-Zarr at ``omezarr_path`` (relative to the GEFF group, e.g. ``../exp.ome.zarr``).

    The files are those ``geff.core_io.write_arrays`` makes of the same arrays whole
    (test), but the node ids, edges and per-cell values are made a block at a time and
    each array is written a chunk at a time (``geff`` hands zarr whole arrays, which zarr
    copies and encodes all at once). ``geff`` validates the result.
    """
    geff = require("geff")
    from geff.core_io import check_for_geff, delete_geff
    from geff_spec.utils import (
        add_or_update_props_metadata,
        compute_and_add_axis_min_max,
        create_or_update_metadata,
        create_props_metadata,
        update_metadata_axes,
    )
    zarr = require("zarr")

    if check_for_geff(store):
        delete_geff(store, zarr_format=2)
    root = zarr.open_group(store, mode="a", zarr_format=2)
    n = arrays.nodes
    _write_array(root, "nodes/ids", (n,), np.uint64, (
        np.arange(i, min(i + BLOCK_NODES, n), dtype=np.uint64)
        for i in range(0, n, BLOCK_NODES)))
    _write_array(root, "edges/ids", (arrays.edges, 2), np.uint64, arrays.edge_blocks())
    group = root.require_group("nodes/props")
    dtypes: dict[str, Any] = {name: np.float64 for name in AXES[0]} if not n else {}
    for name in arrays.prop_names:
        dtypes[name] = arrays.prop_dtype(name)
    for name, dtype in dtypes.items():  # (an empty graph gets its axes, as geff gives it)
        sub = group.create_group(name)
        _write_array(sub, "values", (n,), dtype, (v for v, _ in arrays.prop_blocks(name)))
        if name in arrays.lacking:
            _write_array(sub, "missing", (n,), np.bool_,
                         (m for _, m in arrays.prop_blocks(name) if m is not None))
    root.require_group("edges/props")
    metadata = update_metadata_axes(
        create_or_update_metadata(metadata=None, is_directed=True), *AXES, None, None, None)
    metadata = add_or_update_props_metadata(metadata, [
        create_props_metadata(name, {"values": np.empty(0, dtype), "missing": None})
        for name, dtype in dtypes.items()], "node")
    metadata = add_or_update_props_metadata(metadata, [], "edge")
    axes = {name: {"values": arrays.columns.get(name, np.empty(0)), "missing": None}
            for name in AXES[0]}
    compute_and_add_axis_min_max(metadata, axes).write(store)
    geff.validate_structure(store)
    _finish_metadata(store, omezarr_path)


def _finish_metadata(store: Any, omezarr_path: str) -> None:
    """Sorted property lists, the tracklet property and the OME-Zarr arrays, in the
    metadata geff wrote."""
    spec = require("geff_spec")
    written = spec.GeffMetadata.read(store)
    metadata = written.model_copy(update={
        # geff lists properties in the order given: sorted, a rerun writes the same bytes
        "node_props_metadata": dict(sorted(written.node_props_metadata.items())),
        "edge_props_metadata": dict(sorted(written.edge_props_metadata.items())),
        "track_node_props": {"tracklet": "track_id"},
        "related_objects": [
            spec.RelatedObject(type="labels", path=f"{omezarr_path}/labels/{LABELS_NAME}/s0",
                               node_prop="seg_id"),
            spec.RelatedObject(type="image", path=f"{omezarr_path}/s0"),
        ]})
    metadata.write(store)


def export_geff(wf: WorkingFolder, target: ExportTarget | None = None, *,
                parts: bool = False, table: CellTable | None = None) -> list[str]:
    """Write ``{id}.geff`` (and ``{id}_partN.geff`` with ``parts``); return their locations.

    Raises
    ------
    InputError
        The stitched movie or its lineage is missing.
    """
    target = target or ExportTarget(str(wf.zarr_exports))
    table = table or cell_table(wf, frames=False)
    jobs: list[tuple[str, Collection[int] | None]] = [(wf.geff_name(), None)]
    if parts:
        jobs += [(wf.geff_name(part), frames) for part, frames in table.part_frames.items()]
    written = []
    for name, frames in jobs:
        arrays = lineage_arrays(table, frames)
        with target.writing(name) as store:
            write_geff(store, arrays, f"../{wf.omezarr_name}")
        logger.info("wrote %s: %d nodes, %d edges", target.url(name), arrays.nodes,
                    arrays.edges)
        written.append(target.url(name))
    return written
