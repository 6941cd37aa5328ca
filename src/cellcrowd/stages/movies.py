"""The ``movies`` stage: label montages and raw frames -> ``movies/partN/x_XX_y_YY/...``.

Library: :func:`cellcrowd.movies.montages_to_movies`, :func:`cellcrowd.movies.raw_to_movies`
(together, in one map: :func:`cellcrowd.movies.raw_and_montages_to_movies`).

Incremental per unit (``ctx.units``, :mod:`cellcrowd.pipeline.units`): a label montage
(unit ``labels:<montage>``) is cut again only when its labels file, the logs or its
frame files changed, and a raw frame (unit ``raw:<file>``) only when it, the logs or
its tiles changed; the others' files are kept as they are.
Before any stage runs, movies made by cellcrowd 0.1.0 (parts numbered from 1) are
refused, or deleted when the stage is forced.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CellcrowdError, PipelineError
from ..pipeline.manifest import relative
from ..pipeline.stage import Context, OpenFolder, SkippedUnit, Stage, StageOutput
from ._shared import log_files, raw_and_logs

if TYPE_CHECKING:
    from ..movies import ItemResult

__all__ = ["STAGE"]

logger = logging.getLogger(__name__)


def _refuse_old_parts(folder: OpenFolder, forced: bool) -> None:
    """Refuse movies made by cellcrowd 0.1.0 (parts from 1); delete them when ``forced``."""
    from ..movies import refuse_old_parts

    if folder.job is None:
        return  # the stages that need the logs say what is wrong with them
    wf, montages = folder.wf, folder.job.count
    try:
        refuse_old_parts(wf, montages)
    except CellcrowdError as exc:
        if not forced:
            raise PipelineError(str(exc)) from None
        logger.warning("deleting %s: its parts are numbered from 1 (cellcrowd 0.1.0)",
                       wf.movies)
        shutil.rmtree(wf.movies)


class _Units:
    """The ``only`` of the movies functions: redo an item unless its unit is fresh."""

    def __init__(self, ctx: Context, kind: str) -> None:
        self.ctx, self.kind = ctx, kind
        self.logs = ctx.units.file_digest(log_files(ctx.wf, ctx.config))
        self.keys: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, source: Path, targets: tuple[Path, ...]) -> bool:
        key = {"source": self.ctx.units.file_digest([source]), "logs": self.logs,
               "targets": [relative(t, self.ctx.wf.base) for t in targets]}
        if self.ctx.units.fresh(f"{self.kind}:{name}", key, targets):
            self.ctx.item_done(1)
            return False
        self.keys[name] = key
        return True

    def record(self, items: Sequence[ItemResult]) -> None:
        """Record the items written in this run."""
        for item in items:
            if item.error is None and item.name in self.keys:
                self.ctx.units.done(f"{self.kind}:{item.name}", self.keys[item.name],
                                    item.files)


def _run(ctx: Context) -> StageOutput:
    """Cut the raw frames and the clean label montages into per-part movies."""
    from ..layout import position_name
    from ..movies import raw_and_montages_to_movies

    wf, job = ctx.wf, ctx.job
    labels = len(list(wf.labels.glob("*_labels.png"))) if wf.labels.is_dir() else 0
    ctx.set_total(labels + len(job.raw_paths))
    raw_units, label_units = _Units(ctx, "raw"), _Units(ctx, "labels")
    raw_result, annotated = raw_and_montages_to_movies(
        wf, executor=ctx.executor, progress=ctx.item_done, job=job, only_raw=raw_units,
        only_labels=label_units)
    raw_units.record(raw_result.items)
    label_units.record(annotated.items)
    outputs = [f for item in annotated.items + raw_result.items for f in item.files]
    skipped = [SkippedUnit("movies", f"part{m.part} {position_name(m.position, wf.padding)}",
                           f"left out of part {m.part}: montage {m.montage}: {m.reason}")
               for m in annotated.missing]
    skipped += [SkippedUnit("movies", e.split(":", 1)[0], e) for e in raw_result.errors]
    counts = {"annotated_frames": annotated.files_written, "raw_tiles": raw_result.files_written,
              "missing_montages": len(annotated.missing)}
    return StageOutput(outputs, counts, skipped)


#: The stage the engine runs.
STAGE = Stage("movies", ("clean",), _run, files=raw_and_logs, version=2,
              before_run=_refuse_old_parts)
