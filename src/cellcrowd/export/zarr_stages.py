"""The pipeline's ``omezarr`` and ``geff`` stages (see :mod:`cellcrowd.pipeline`).

Each writes its export (:func:`cellcrowd.export.omezarr.export_omezarr`,
:func:`cellcrowd.export.geff.export_geff`) to ``[outputs] export_url`` (default
``zarr/`` in the working folder) and a receipt ``zarr/{kind}_location.json``
naming where it went, which the manifest records with the store's files (for a
URL, only the receipt is local).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..layout import WorkingFolder
from .zarrstore import ExportTarget

if TYPE_CHECKING:
    from ..pipeline import StageOutput, _Context

__all__ = ["export_target", "run_geff_stage", "run_omezarr_stage", "zarr_settings"]

_SECRET = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def export_target(config: Config, wf: WorkingFolder) -> ExportTarget:
    """Where the configuration sends the OME-Zarr and GEFF exports."""
    out = config.outputs
    return ExportTarget(out.export_url or str(wf.zarr_exports), dict(out.export_storage_options))


def zarr_settings(config: Config) -> dict[str, Any]:
    """The settings the two stages depend on (secret-looking options by name only)."""
    out = config.outputs
    options = {k: ("***" if _SECRET.search(k) else v)
               for k, v in sorted(out.export_storage_options.items())}
    return {"export_url": out.export_url, "storage_options": options,
            "geff_parts": out.geff_parts}


def _output(target: ExportTarget, wf: WorkingFolder, kind: str, names: list[str],
            counts: dict[str, int]) -> StageOutput:
    from ..pipeline import StageOutput

    receipt = wf.export_receipt(kind)
    target.receipt(receipt, names[0], counts)
    files = [f for name in names for f in target.files(name)]
    return StageOutput([*files, receipt], {**counts, "stores": len(names)})


def run_omezarr_stage(ctx: _Context) -> StageOutput:
    """Write the stitched movie's OME-Zarr."""
    from .cells import cell_table
    from .omezarr import export_omezarr

    target = export_target(ctx.config, ctx.wf)
    table = cell_table(ctx.wf)
    export_omezarr(ctx.wf, target, table=table)
    return _output(target, ctx.wf, "omezarr", [ctx.wf.omezarr_name],
                   {"frames": table.frames, "tracks": len(table.lineage)})


def run_geff_stage(ctx: _Context) -> StageOutput:
    """Write the lineage's GEFF (and one per part with ``[outputs] geff_parts``)."""
    from .cells import cell_table
    from .geff import export_geff

    target = export_target(ctx.config, ctx.wf)
    table = cell_table(ctx.wf)
    parts = ctx.config.outputs.geff_parts
    export_geff(ctx.wf, target, parts=parts, table=table)
    names = [ctx.wf.geff_name()] + [ctx.wf.geff_name(p) for p in table.part_frames if parts]
    return _output(target, ctx.wf, "geff", names, {"nodes": len(table.nodes)})
