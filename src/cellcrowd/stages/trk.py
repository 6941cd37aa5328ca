"""The ``trk`` stage: the stitched movie as a DeepCell ``.trk``.

Library: :func:`cellcrowd.export.trk.export_trk`.
"""

from __future__ import annotations

from ..config import Config
from ..pipeline.stage import Context, Stage, StageOutput

__all__ = ["STAGE"]


def _enabled(config: Config) -> bool:
    return config.outputs.trk


def _run(ctx: Context) -> StageOutput:
    from ..export.trk import export_trk

    return StageOutput([export_trk(ctx.wf)], {"files": 1})


#: The stage the engine runs.
STAGE = Stage("trk", ("stitch",), _run, enabled=_enabled)
