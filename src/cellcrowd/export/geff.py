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

The graph is built as arrays (:func:`lineage_arrays`, written with
``geff.core_io.write_arrays``), not as a graph object: under 100 bytes a node
rather than the kilobyte a ``networkx`` node with its attributes takes, so a long
movie's graph stays small. The files are those ``geff.write`` makes of the same
``networkx.DiGraph`` (:func:`lineage_graph`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
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


@dataclass(frozen=True)
class GraphArrays:
    """The lineage graph as GEFF arrays: ``nodes`` nodes with ids ``0..nodes-1``, node
    properties (``{"values", "missing"}``) and edges (``(E, 2)``, ``uint64``).

    Nodes are the table's rows (only the frames asked for) in order; edges are sorted by
    their first node, a division's in the order of the lineage's daughters: the arrays
    ``geff.write`` makes of the same ``networkx.DiGraph`` (:func:`lineage_graph`).
    """

    nodes: int
    node_props: dict[str, Prop]
    edge_ids: NDArray[np.uint64]

    @property
    def node_ids(self) -> NDArray[np.uint64]:
        """The node ids, made when asked (the writer writes them a chunk at a time)."""
        return np.arange(self.nodes, dtype=np.uint64)

    @property
    def edges(self) -> int:
        return int(self.edge_ids.shape[0])


def _per_label(values: dict[int, float | None], labels: NDArray[np.int64]) -> Prop | None:
    """A per-label value for every node (looked up once per label): None when no node
    has one."""
    cells, node_cell = np.unique(labels, return_inverse=True)
    got = [values.get(int(lab)) for lab in cells.tolist()]
    missing = np.array([v is None for v in got], dtype=bool)[node_cell]
    if missing.all():
        return None
    found = np.array([0.0 if v is None else v for v in got], dtype=np.float64)
    return {"values": found[node_cell], "missing": missing if missing.any() else None}


def _edges(table: CellTable, label: NDArray[np.int64], t: NDArray[np.int64]
           ) -> NDArray[np.uint64]:
    """A cell's consecutive appearances, and a dividing cell's last node to each daughter's
    first, sorted by the first node (a node is the source of one kind only: a cell's last
    node has no next appearance), built in place of the sorted array: the temporaries are
    a few bytes a node, not copies of the edges."""
    order = np.lexsort((t, label))  # every cell's nodes in time order, cell after cell
    same = label[order[1:]] == label[order[:-1]]
    # each node's next appearance (-1: none), in the smallest integer that holds a node
    nxt: NDArray[np.signedinteger[Any]] = np.full(
        label.size, -1, dtype=np.int32 if label.size < 2**31 else np.int64)
    nxt[order[:-1][same]] = order[1:][same]
    starts = np.flatnonzero(np.r_[True, ~same])
    ends = np.r_[starts[1:], order.size] - 1
    first = dict(zip(label[order[starts]].tolist(), order[starts].tolist(), strict=True))
    last = dict(zip(label[order[ends]].tolist(), order[ends].tolist(), strict=True))
    del order, same, starts, ends
    pairs = sorted(((last[lab], first[int(d)]) for lab in last
                    for d in dict.fromkeys(table.lineage.get(lab, {}).get("daughters") or [])
                    if int(d) in first), key=lambda pair: pair[0])  # (stable)
    src = np.flatnonzero(nxt >= 0)
    edges = np.empty((src.size + len(pairs), 2), dtype=np.uint64)
    # a division's edges go after the appearances whose source comes before theirs
    at = np.searchsorted(src, [p[0] for p in pairs]) + np.arange(len(pairs))
    edges[at] = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    rest = np.ones(edges.shape[0], dtype=bool)
    rest[at] = False
    edges[rest, 0] = src
    edges[rest, 1] = nxt[src]
    return edges


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
    label, t = n.label, n.t
    props: dict[str, Prop] = {}
    if len(n):
        columns: dict[str, NDArray[Any]] = {"t": t, "y": n.y, "x": n.x, "area": n.area,
                                            "seg_id": label, "track_id": label}
        props = {k: {"values": v, "missing": None} for k, v in columns.items()}
        for key, values in (("support", table.support), ("agreement", table.agreement)):
            if (prop := _per_label(values, label)) is not None:
                props[key] = prop
    edges = (_edges(table, label, t) if len(n) else np.zeros((0, 2), np.uint64))
    return GraphArrays(len(n), props, edges)


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
                 block: Callable[[int, int], NDArray[Any]]) -> None:
    """An array of ``shape`` written a chunk at a time (``block(start, stop)``: its rows),
    in ``geff``'s chunks: the files ``geff`` writes from the whole array, while only one
    chunk is copied and encoded at a time."""
    if shape[0] == 0:
        group[path] = np.empty(shape, dtype=dtype)
        return
    rows = _chunk_rows(shape, np.dtype(dtype).itemsize)
    array = group.create_array(path, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]))
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        array[start:stop] = block(start, stop)


def _rows_of(values: NDArray[Any]) -> Callable[[int, int], NDArray[Any]]:
    return lambda start, stop: values[start:stop]


def write_geff(store: Any, arrays: GraphArrays, omezarr_path: str) -> None:
    """Write the lineage ``arrays`` as GEFF into a zarr store (format 2), pointing at the
    OME-Zarr at ``omezarr_path`` (relative to the GEFF group, e.g. ``../exp.ome.zarr``).

    The files are those ``geff.core_io.write_arrays`` makes of the same arrays (test), but
    each array is written a chunk at a time: ``geff`` hands zarr whole arrays, which zarr
    copies and encodes all at once (about 60 bytes a node at the peak, for the ids and
    edges). The node ids are made a chunk at a time. ``geff`` validates the result.
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
    _write_array(root, "nodes/ids", (arrays.nodes,), np.uint64,
                 lambda start, stop: np.arange(start, stop, dtype=np.uint64))
    _write_array(root, "edges/ids", arrays.edge_ids.shape, np.uint64,
                 _rows_of(arrays.edge_ids))
    props = dict(arrays.node_props)
    if not arrays.nodes:  # geff gives an empty graph its axes as empty properties
        props = {name: {"values": np.empty(0, np.float64), "missing": None}
                 for name in AXES[0]} | props
    group = root.require_group("nodes/props")
    for name, prop in props.items():
        values, missing = prop["values"], prop["missing"]
        assert values is not None
        sub = group.create_group(name)
        _write_array(sub, "values", values.shape, values.dtype, _rows_of(values))
        if missing is not None:
            _write_array(sub, "missing", missing.shape, missing.dtype, _rows_of(missing))
    root.require_group("edges/props")
    metadata = update_metadata_axes(
        create_or_update_metadata(metadata=None, is_directed=True), *AXES,
        None, None, None)
    metadata = add_or_update_props_metadata(
        metadata, [create_props_metadata(name, prop) for name, prop in props.items()],
        "node")
    metadata = add_or_update_props_metadata(metadata, [], "edge")
    compute_and_add_axis_min_max(metadata, props).write(store)
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
