"""The ``omezarr`` stage: the stitched movie (image, tracked labels) as OME-Zarr.

Library: :func:`cellcrowd.export.omezarr.export_omezarr`; where it goes: :mod:`._zarr`.
"""

from __future__ import annotations

from ..config import Config
from ..pipeline.stage import Context, Stage, StageOutput
from ._zarr import UPSTREAM, export_target, stage_output, zarr_settings

__all__ = ["STAGE"]


def _enabled(config: Config) -> bool:
    return config.outputs.wants("omezarr")


def _run(ctx: Context) -> StageOutput:
    """Write the stitched movie's OME-Zarr."""
    from ..export.cells import cell_table
    from ..export.omezarr import export_omezarr

    target = export_target(ctx.config, ctx.wf)
    table = cell_table(ctx.wf, job=ctx.known_job, nodes=False,  # (only the GEFF needs them)
                       executor=ctx.executor)
    export_omezarr(ctx.wf, target, table=table)
    return stage_output(target, ctx.wf, "omezarr", [ctx.wf.omezarr_name],
                        {"frames": table.frames, "tracks": len(table.lineage)})


#: The stage the engine runs.
STAGE = Stage("omezarr", UPSTREAM, _run, settings=zarr_settings, enabled=_enabled)
