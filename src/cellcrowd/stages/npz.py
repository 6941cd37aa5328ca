"""The ``npz`` stage: DeepCell training data, one ``.npz`` per part (and the full movie).

Library: :func:`cellcrowd.export.npz.write_parts_npz_each`,
:func:`cellcrowd.export.npz.write_full_movie_npz` (``outputs.npz_full_movie``: each
position's parts one after another, cell ids linked across part boundaries). The
stitched movie's ``.npz`` is written by the stitch stage, which runs after this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..pipeline.stage import Context, SkippedUnit, Stage, StageOutput
from ._shared import log_files

__all__ = ["STAGE"]


def _settings(config: Config) -> dict[str, Any]:
    return {"samples_to_drop": list(config.npz.samples_to_drop),
            "channels": list(config.npz.channels), "npz_parts": config.outputs.npz_parts,
            "npz_full_movie": config.outputs.npz_full_movie}


def _enabled(config: Config) -> bool:
    return config.outputs.npz_parts or config.outputs.npz_full_movie


def _run(ctx: Context) -> StageOutput:
    """Write the parts' ``.npz`` files and, when asked, the full movie's."""
    from ..errors import InputError
    from ..export.npz import write_full_movie_npz, write_parts_npz_each

    cfg, wf = ctx.config, ctx.wf
    outputs: list[Path] = []
    skipped: list[SkippedUnit] = []
    job = ctx.job
    parts = list(job.parts)
    channels = list(cfg.npz.channels) or None
    if cfg.outputs.npz_parts:
        ctx.set_total(len(parts))
        for result in write_parts_npz_each(
                wf, parts, executor=ctx.executor, progress=ctx.item_done,
                samples_to_drop=cfg.npz.samples_to_drop, channels=channels, job=job):
            if result.path is not None:
                outputs.append(result.path)
            else:
                skipped.append(SkippedUnit("npz", f"part{result.part}", str(result.error)))
    parts_skipped = len(skipped)
    if cfg.outputs.npz_full_movie:
        try:
            outputs.append(write_full_movie_npz(
                wf, samples_to_drop=cfg.npz.samples_to_drop, channels=channels, job=job))
        except InputError as exc:
            skipped.append(SkippedUnit("npz", wf.npz_full_movie.name, str(exc)))
    return StageOutput(outputs, {"files": len(outputs), "parts_skipped": parts_skipped},
                       skipped)


#: The stage the engine runs.
STAGE = Stage("npz", ("movies",), _run, settings=_settings, files=log_files,
              enabled=_enabled, version=3)
