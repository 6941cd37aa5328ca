"""The ``stitch`` stage: tiles -> full-size frames, parts -> one tracked movie.

Library: :func:`cellcrowd.stitch.stitch_movies`. With ``outputs.npz_full_movie`` the
stage also writes the stitched movie's ``.npz``
(:func:`cellcrowd.export.npz.write_stitched_movie_npz`), at its end, because the npz
stage runs before the movie is stitched.

Redone whole when its inputs changed (no per-unit records): linking runs across every
part. Trk, ctc, omezarr, geff and qc read the stitched movie or everything, likewise.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..pipeline.stage import Context, SkippedUnit, Stage, StageOutput
from ._shared import raw_and_logs

__all__ = ["STAGE"]


def _settings(config: Config) -> dict[str, Any]:
    on = config.outputs.npz_full_movie
    return {"npz_stitched_movie": on, "npz_channels": list(config.npz.channels) if on else []}


def _enabled(config: Config) -> bool:
    return config.outputs.stitched


def _run(ctx: Context) -> StageOutput:
    """Stitch every part and join them into one movie (and its ``.npz`` when asked)."""
    from ..errors import InputError
    from ..export.npz import write_stitched_movie_npz
    from ..layout import position_name
    from ..stitch import stitch_movies

    cfg = ctx.config
    job = ctx.job
    ctx.set_total(len(job.parts))
    result = stitch_movies(ctx.wf, executor=ctx.executor, progress=ctx.item_done, job=job)
    wf = result.wf
    outputs = [wf.stitched_frame("annotated", t) for t in range(result.frames)]
    outputs += [wf.stitched_frame("raw", t) for t in range(result.raw_frames)]
    outputs.append(wf.stitched_lineage)
    skipped = [SkippedUnit("stitch", f"part{part} {position_name(pos, wf.padding)}",
                           f"tile left out of the stitched part {part}: {reason}")
               for part, pos, reason in result.missing]
    if cfg.outputs.npz_full_movie:
        try:
            outputs.append(write_stitched_movie_npz(
                wf, channels=list(cfg.npz.channels) or None))
        except InputError as exc:
            skipped.append(SkippedUnit("stitch", wf.npz_stitched_movie.name, str(exc)))
    counts = {"frames": result.frames, "cells": result.cells, "divisions": result.divisions,
              "conflicts": len(result.conflicts)}
    return StageOutput(outputs, counts, skipped)


#: The stage the engine runs.
STAGE = Stage("stitch", ("movies",), _run, settings=_settings, files=raw_and_logs,
              enabled=_enabled, version=2)
