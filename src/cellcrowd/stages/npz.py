"""The ``npz`` stage: DeepCell training data, one ``.npz`` per part (and the full movie).

Library: :func:`cellcrowd.export.npz.write_parts_npz_each`,
:func:`cellcrowd.export.npz.write_full_movie_npz` (``outputs.npz_full_movie``: each
position's parts one after another, cell ids linked across part boundaries). The
stitched movie's ``.npz`` is written by the stitch stage, which runs after this one.

Incremental per part (``ctx.units``, :mod:`cellcrowd.pipeline.units`): a part's file
(unit ``part:<N>``) is written again only when a file of ``movies/part{N}``, the logs
or the file itself changed (the settings are in every key). The full movie's file
links every part, so it is rewritten whenever the stage runs.
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


def _part_key(ctx: Context, part: int) -> dict[str, Any]:
    """What a part's ``.npz`` is made from: its movie files and the logs."""
    folder = ctx.wf.part_dir(part)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return {"files": ctx.units.file_digest(files),
            "logs": ctx.units.file_digest(log_files(ctx.wf, ctx.config))}


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
        keys = {part: _part_key(ctx, part) for part in parts}
        fresh = [p for p in parts if ctx.units.fresh(f"part:{p}", keys[p], [wf.npz_part(p)])]
        todo = [p for p in parts if p not in fresh]
        ctx.set_total(len(todo))
        results = write_parts_npz_each(
            wf, todo, executor=ctx.executor, progress=ctx.item_done,
            samples_to_drop=cfg.npz.samples_to_drop, channels=channels, job=job)
        done = {r.part: r for r in results}
        for part in parts:
            result = done.get(part)
            if result is None:
                outputs.append(wf.npz_part(part))
            elif result.path is not None:
                outputs.append(result.path)
                ctx.units.done(f"part:{part}", keys[part], [result.path])
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
