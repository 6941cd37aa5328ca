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
from collections.abc import Collection
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
    """The lineage graph as GEFF arrays: node ids ``0..n-1`` (``uint64``), node
    properties (``{"values", "missing"}``) and edges (``(E, 2)``, ``uint64``).

    Nodes are the table's rows (only the frames asked for) in order; edges are sorted by
    their first node, a division's in the order of the lineage's daughters: the arrays
    ``geff.write`` makes of the same ``networkx.DiGraph`` (:func:`lineage_graph`).
    """

    node_ids: NDArray[np.uint64]
    node_props: dict[str, Prop]
    edge_ids: NDArray[np.uint64]

    @property
    def nodes(self) -> int:
        return int(self.node_ids.size)

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
    first, sorted by the first node (each node is the source of one kind only)."""
    order = np.lexsort((t, label))  # every cell's nodes in time order, cell after cell
    cell = label[order]
    same = cell[1:] == cell[:-1]
    del cell
    src, dst = [order[:-1][same]], [order[1:][same]]
    starts = np.flatnonzero(np.r_[True, ~same])
    ends = np.r_[starts[1:], order.size] - 1
    first = dict(zip(label[order[starts]].tolist(), order[starts].tolist(), strict=True))
    last = dict(zip(label[order[ends]].tolist(), order[ends].tolist(), strict=True))
    pairs = [(last[lab], first[int(d)]) for lab in last
             for d in dict.fromkeys(table.lineage.get(lab, {}).get("daughters") or [])
             if int(d) in first]
    if pairs:
        src.append(np.array([p[0] for p in pairs], dtype=np.int64))
        dst.append(np.array([p[1] for p in pairs], dtype=np.int64))
    edges = np.stack([np.concatenate(src), np.concatenate(dst)], axis=1).astype(
        np.int64, copy=False)
    del src, dst
    # node numbers are never negative: the uint64 view holds the same numbers
    return edges[np.argsort(edges[:, 0], kind="stable")].view(np.uint64)


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
    return GraphArrays(np.arange(len(n), dtype=np.uint64), props, edges)


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


def write_geff(store: Any, arrays: GraphArrays, omezarr_path: str) -> None:
    """Write the lineage ``arrays`` as GEFF into a zarr store, pointing at the OME-Zarr at
    ``omezarr_path`` (relative to the GEFF group, e.g. ``../exp.ome.zarr``)."""
    require("geff")
    from geff.core_io import write_arrays
    from geff_spec.utils import create_or_update_metadata, update_metadata_axes

    metadata = update_metadata_axes(
        create_or_update_metadata(metadata=None, is_directed=True), ["t", "y", "x"],
        ["frame", "pixel", "pixel"], ["time", "space", "space"], None, None, None)
    props: Any = dict(arrays.node_props)  # geff's PropDictNpArray: the same two keys
    write_arrays(store, arrays.node_ids, props, arrays.edge_ids, {}, metadata, zarr_format=2,
                 overwrite=True)
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
