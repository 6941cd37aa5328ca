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
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from itertools import pairwise
from typing import Any

from ..layout import WorkingFolder
from .cells import CellTable, cell_table
from .omezarr import LABELS_NAME
from .zarrstore import ExportTarget, require

__all__ = ["export_geff", "lineage_graph", "write_geff"]

logger = logging.getLogger(__name__)


def lineage_graph(table: CellTable, frames: Collection[int] | None = None) -> Any:
    """The lineage as a ``networkx.DiGraph`` of cell-frame nodes (only ``frames`` if given).

    >>> from cellcrowd.export.cells import CellNode
    >>> table = CellTable(3, (4, 4), [CellNode(1, 0, 1.0, 1.0, 4), CellNode(2, 2, 1.0, 1.0, 2),
    ...     CellNode(3, 2, 3.0, 3.0, 2)], {1: {"parent": None, "daughters": [2, 3],
    ...     "frames": [0]}, 2: {"parent": 1, "frames": [2]}, 3: {"parent": 1, "frames": [2]}})
    >>> sorted(lineage_graph(table).edges)
    [(0, 1), (0, 2)]
    """
    nx = require("networkx")
    graph = nx.DiGraph()
    runs: dict[int, list[int]] = defaultdict(list)
    for node in table.nodes:
        if frames is not None and node.t not in frames:
            continue
        attrs: dict[str, Any] = {"t": node.t, "y": node.y, "x": node.x, "area": node.area,
                                 "seg_id": node.label, "track_id": node.label}
        for key, values in (("support", table.support), ("agreement", table.agreement)):
            if values.get(node.label) is not None:
                attrs[key] = values[node.label]
        runs[node.label].append(graph.number_of_nodes())
        graph.add_node(graph.number_of_nodes(), **attrs)
    for ids in runs.values():
        ids.sort(key=lambda n: graph.nodes[n]["t"])
        graph.add_edges_from(pairwise(ids))
    for label, ids in runs.items():
        for daughter in table.lineage.get(label, {}).get("daughters") or []:
            if runs.get(int(daughter)):
                graph.add_edge(ids[-1], runs[int(daughter)][0])
    return graph


def write_geff(store: Any, graph: Any, omezarr_path: str) -> None:
    """Write ``graph`` as GEFF into a zarr store, pointing at the OME-Zarr at ``omezarr_path``.

    ``omezarr_path`` is relative to the GEFF group (e.g. ``../exp.ome.zarr``).
    """
    geff, spec = require("geff"), require("geff_spec")
    geff.write(graph, store, axis_names=["t", "y", "x"], axis_types=["time", "space", "space"],
               axis_units=["frame", "pixel", "pixel"], zarr_format=2, overwrite=True)
    written = spec.GeffMetadata.read(store)
    metadata = written.model_copy(update={
        # geff lists properties in set order: sorted, a rerun writes the same bytes
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
    table = table or cell_table(wf)
    jobs: list[tuple[str, Collection[int] | None]] = [(wf.geff_name(), None)]
    if parts:
        jobs += [(wf.geff_name(part), frames) for part, frames in table.part_frames.items()]
    written = []
    for name, frames in jobs:
        graph = lineage_graph(table, frames)
        with target.writing(name) as store:
            write_geff(store, graph, f"../{wf.omezarr_name}")
        logger.info("wrote %s: %d nodes, %d edges", target.url(name), graph.number_of_nodes(),
                    graph.number_of_edges())
        written.append(target.url(name))
    return written
