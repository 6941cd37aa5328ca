"""The ``ctc`` stage: the stitched movie as Cell Tracking Challenge folders.

Library: :func:`cellcrowd.export.ctc.export_ctc`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..pipeline.stage import Context, Stage, StageOutput

__all__ = ["STAGE"]


def _enabled(config: Config) -> bool:
    return config.outputs.ctc


def _files_under(result: Any) -> list[Path]:
    """The files an export returned: a file, every file under a folder, or a list."""
    if isinstance(result, Path):
        return sorted(p for p in result.rglob("*") if p.is_file()) if result.is_dir() else [
            result]
    return [Path(p) for p in result]


def _run(ctx: Context) -> StageOutput:
    from ..export.ctc import export_ctc

    outputs = _files_under(export_ctc(ctx.wf))
    return StageOutput(outputs, {"files": len(outputs)})


#: The stage the engine runs.
STAGE = Stage("ctc", ("stitch",), _run, enabled=_enabled)
