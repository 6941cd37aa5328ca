"""The job's geometry as the stages see it: the one place they read the JSON logs.

Every stage (and the engine, through :attr:`cellcrowd.pipeline.StageTable.folder`)
asks this module for the working folder with its padding, the montage log, the
part numbers, where image data lies in a montage's frames, and the montages'
layout. Nothing else under :mod:`cellcrowd.stages` reads the logs, so one object
built once from the logs can take this module's place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import CellcrowdError
from ..layout import WorkingFolder, part_numbers
from ..logs import read_logs, read_montage_log

if TYPE_CHECKING:
    from ..geometry import MontageLayout
    from ..labels import Window
    from ..logs import MontageLog

__all__ = ["merge_layout", "montage_log", "part_list", "tile_windows", "working_folder"]

logger = logging.getLogger(__name__)


def working_folder(config: Config) -> WorkingFolder:
    """The configured working folder, padding widened to fit its logs' counts."""
    wf = config.working_folder()
    if not wf.chopper_log.exists() or not wf.montage_log.exists():
        return wf
    chopper, montage = read_logs(wf.chopper_log, wf.montage_log)
    frames = chopper.num_images or montage.montage_len * montage.montages_in_pos
    return wf.with_counts(num_x=montage.num_x_segments, num_y=montage.num_y_segments,
                          frames=frames, montages=montage.montages_in_pos)


def montage_log(wf: WorkingFolder) -> MontageLog:
    """The folder's montage log."""
    return read_montage_log(wf.montage_log)


def part_list(wf: WorkingFolder) -> list[int]:
    """Part numbers the montage log promises."""
    return list(part_numbers(int(montage_log(wf).montages_in_pos)))


def tile_windows(wf: WorkingFolder) -> Callable[[str], Window | None]:
    """Where image data lies in a montage's frames (None for every montage when old
    logs cannot tell the tile grid, or for a name that is not a montage name)."""
    from ..labels import tile_window

    try:
        grid = read_logs(wf.chopper_log, wf.montage_log)[0].tile_grid()
    except CellcrowdError as exc:
        logger.info("cleaning without the image's edges in padded tiles (%s)", exc)
        return lambda name: None

    def window(name: str) -> Window | None:
        try:
            return tile_window(grid, name)
        except CellcrowdError:
            return None

    return window


def merge_layout(wf: WorkingFolder) -> MontageLayout | None:
    """The montages' layout from the logs (None when old logs cannot tell the tile size)."""
    try:
        chopper, montage = read_logs(wf.chopper_log, wf.montage_log)
        return montage.layout(chopper.tile_grid().tile_shape)
    except CellcrowdError as exc:
        logger.info("consensus without a montage layout (%s): buffers are not checked", exc)
        return None
