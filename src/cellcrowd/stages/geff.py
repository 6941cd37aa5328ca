"""The ``geff`` stage: the stitched movie's lineage as a GEFF graph.

Library: :func:`cellcrowd.export.geff.export_geff` (one more per part with
``[outputs] geff_parts``); where it goes: :mod:`._zarr`.
"""

from __future__ import annotations

from ..config import Config
from ..pipeline.stage import Context, Stage, StageOutput
from ._zarr import UPSTREAM, export_target, stage_output, zarr_settings

__all__ = ["STAGE"]


def _enabled(config: Config) -> bool:
    return config.outputs.wants("geff")


def _run(ctx: Context) -> StageOutput:
    """Write the lineage's GEFF (and one per part with ``[outputs] geff_parts``)."""
    from ..export.cells import cell_table
    from ..export.geff import export_geff

    target = export_target(ctx.config, ctx.wf)
    table = cell_table(ctx.wf, job=ctx.known_job, frames=False,  # edges need no frame lists
                       executor=ctx.executor)
    parts = ctx.config.outputs.geff_parts
    export_geff(ctx.wf, target, parts=parts, table=table)
    names = [ctx.wf.geff_name()] + [ctx.wf.geff_name(p) for p in table.part_frames if parts]
    return stage_output(target, ctx.wf, "geff", names, {"nodes": len(table.nodes)})


#: The stage the engine runs.
STAGE = Stage("geff", UPSTREAM, _run, settings=zarr_settings, enabled=_enabled)
