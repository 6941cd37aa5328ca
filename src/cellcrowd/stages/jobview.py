"""The job as the stages see it: the run's folder and its geometry, read once.

The engine opens the folder once per run (:attr:`cellcrowd.pipeline.StageTable.folder`
is :func:`open_folder`): the working folder, with its padding widened to fit the
logs' counts, and the :class:`~cellcrowd.job.Job` built from the JSON logs. Stages
get it as ``ctx.job``; this module turns it into what cleaning and consensus ask for.
Nothing under :mod:`cellcrowd.stages` reads the logs itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import CellcrowdError, LogError
from ..job import Job
from ..layout import WorkingFolder
from ..pipeline.stage import OpenFolder

if TYPE_CHECKING:
    from ..geometry import MontageLayout
    from ..labels import Window

__all__ = ["merge_layout", "open_folder", "tile_windows", "working_folder"]

logger = logging.getLogger(__name__)


def open_folder(config: Config) -> OpenFolder:
    """The configured working folder and its job (None, with the reason, without logs).

    Raises
    ------
    LogError
        The logs exist but cannot be read or disagree (the message names the file).
    """
    wf = config.working_folder()
    if not wf.chopper_log.exists() or not wf.montage_log.exists():
        missing = wf.chopper_log if not wf.chopper_log.exists() else wf.montage_log
        return OpenFolder(wf, None, LogError(
            "this log is missing: copy json_logs/ from the upload (cellcrowd prepare "
            "writes it) into the working folder", path=missing))
    job = Job.load(wf)  # logs that exist but are broken stop the run (and status) here
    return OpenFolder(job.wf, job)


def working_folder(config: Config) -> WorkingFolder:
    """The configured working folder, padding widened to fit its logs' counts."""
    return open_folder(config).wf


def tile_windows(job: Job) -> Callable[[str], Window | None]:
    """Where image data lies in a montage's frames (None for every montage when old
    logs cannot tell the tile grid, or for a name that is not a montage name)."""
    from ..labels import tile_window

    grid = job.known_grid
    if grid is None:
        logger.info("cleaning without the image's edges in padded tiles (%s)", job.grid_error)
        return lambda name: None

    def window(name: str) -> Window | None:
        try:
            return tile_window(grid, name)
        except CellcrowdError:
            return None

    return window


def merge_layout(job: Job) -> MontageLayout | None:
    """The montages' layout (None when old logs cannot tell the tile size)."""
    if not job.has_grid:
        logger.info("consensus without a montage layout (%s): buffers are not checked",
                    job.grid_error)
        return None
    return job.layout
