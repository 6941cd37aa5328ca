"""The ``stitch`` stage: tiles -> full-size frames, parts -> one tracked movie.

Library: :func:`cellcrowd.stitch.stitch_movies`. With ``outputs.npz_full_movie`` the
stage also writes the stitched movie's ``.npz``
(:func:`cellcrowd.export.npz.write_stitched_movie_npz`), at its end, because the npz
stage runs before the movie is stitched.

Incremental per part (``ctx.units``, :mod:`cellcrowd.pipeline.units`): a part's
stitched tiles depend only on its ``movies/part{N}/*/annotated`` frames (and the logs),
so each part stitched is kept in ``.cellcrowd/stitch/part{N}.stitched`` (an ``.npz``
archive, :mod:`cellcrowd.stitch.parts`; not named ``.npz``, so the QC page does not
list it among the exports), recorded as the unit ``part{N}`` keyed by the SHA-256 of
those files; a rerun loads the unchanged parts and stitches only the others. Linking
the parts, writing the frames and the lineage are redone whole (ids run across parts),
into the same bytes. Trk, ctc, omezarr, geff and qc read the stitched movie or
everything, and are redone whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from ..pipeline.stage import Context, SkippedUnit, Stage, StageOutput
from ._shared import log_files, raw_and_logs

__all__ = ["STAGE"]


def _settings(config: Config) -> dict[str, Any]:
    on = config.outputs.npz_full_movie
    return {"npz_stitched_movie": on, "npz_channels": list(config.npz.channels) if on else []}


def _enabled(config: Config) -> bool:
    return config.outputs.stitched


class _UnitStore:
    """The :class:`~cellcrowd.stitch.parts.PartStore` of the stage: one unit per part."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.logs = ctx.units.file_digest(log_files(ctx.wf, ctx.config))

    def path(self, part: int) -> Path:
        return self.ctx.wf.stitch_part_store(part)

    def _key(self, inputs: Sequence[Path]) -> dict[str, Any]:
        present = [p for p in inputs if p.is_file()]
        return {"inputs": self.ctx.units.file_digest(present), "logs": self.logs,
                "expected": len(inputs)}

    def fresh(self, part: int, inputs: Sequence[Path]) -> bool:
        return self.ctx.units.fresh(f"part{part}", self._key(inputs), [self.path(part)])

    def saved(self, part: int, inputs: Sequence[Path]) -> None:
        self.ctx.units.done(f"part{part}", self._key(inputs), [self.path(part)])


def _run(ctx: Context) -> StageOutput:
    """Stitch every part and join them into one movie (and its ``.npz`` when asked)."""
    from ..errors import InputError
    from ..export.npz import write_stitched_movie_npz
    from ..layout import position_name
    from ..stitch import stitch_movies

    cfg = ctx.config
    job = ctx.job
    ctx.set_total(len(job.parts))
    result = stitch_movies(ctx.wf, executor=ctx.executor, progress=ctx.item_done, job=job,
                           store=_UnitStore(ctx))
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
              enabled=_enabled, version=3)
