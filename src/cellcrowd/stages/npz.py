"""The ``npz`` stage: DeepCell training data, one ``.npz`` per part (and the full movie).

Library: :func:`cellcrowd.export.npz.iter_parts_npz`,
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


class _PartKeys:
    """What each part's ``.npz`` is made from (its movie files and the logs), each found
    when first asked for: before the tasks only for a part recorded by the last run (it
    may be fresh), else as its result comes in, while the workers write the others."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._keys: dict[int, dict[str, Any]] = {}
        self._logs: str | None = None

    def __call__(self, part: int) -> dict[str, Any]:
        ctx = self._ctx
        if self._logs is None:
            self._logs = ctx.units.file_digest(log_files(ctx.wf, ctx.config))
        if part not in self._keys:
            folder = ctx.wf.part_dir(part)
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            self._keys[part] = {"files": ctx.units.file_digest(files), "logs": self._logs}
        return self._keys[part]


def _write_parts(ctx: Context, channels: list[int] | None
                 ) -> tuple[list[Path], list[SkippedUnit]]:
    """The parts' ``.npz`` files (those still fresh reused) and the parts skipped."""
    from ..export.npz import iter_parts_npz

    cfg, wf, job = ctx.config, ctx.wf, ctx.job
    parts = list(job.parts)
    key = _PartKeys(ctx)
    fresh = [p for p in parts if ctx.units.recorded(f"part:{p}")
             and ctx.units.fresh(f"part:{p}", key(p), [wf.npz_part(p)])]
    todo = [p for p in parts if p not in fresh]
    ctx.set_total(len(todo))
    done = {}
    for result in iter_parts_npz(wf, todo, executor=ctx.executor, progress=ctx.item_done,
                                 samples_to_drop=cfg.npz.samples_to_drop, channels=channels,
                                 job=job):
        done[result.part] = result
        if result.path is not None:
            ctx.units.done(f"part:{result.part}", key(result.part), [result.path])
    outputs: list[Path] = []
    skipped: list[SkippedUnit] = []
    for part in parts:
        got = done.get(part)
        if got is None:
            outputs.append(wf.npz_part(part))
        elif got.path is not None:
            outputs.append(got.path)
        else:
            skipped.append(SkippedUnit("npz", f"part{part}", str(got.error)))
    return outputs, skipped


def _run(ctx: Context) -> StageOutput:
    """Write the parts' ``.npz`` files and, when asked, the full movie's."""
    from ..errors import InputError
    from ..export.npz import write_full_movie_npz

    cfg, wf = ctx.config, ctx.wf
    outputs: list[Path] = []
    skipped: list[SkippedUnit] = []
    job = ctx.job
    channels = list(cfg.npz.channels) or None
    if cfg.outputs.npz_parts:
        outputs, skipped = _write_parts(ctx, channels)
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
