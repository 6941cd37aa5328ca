"""The step before the harvest: cut the raw movie into montages (not a stage of the table).

Library: :func:`cellcrowd.prepare.prepare`, with the ``[prepare]`` settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from ..executor import Executor

__all__ = ["prepare_folder"]


def prepare_folder(
    config: Config,
    *,
    truth: Any = None,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Cut the configured raw movie into montages (``[prepare]`` settings).

    Writes the montages, both JSON logs and the upload CSV into the working
    folder (and ground-truth label montages when ``truth`` labels are given);
    returns :class:`cellcrowd.prepare.PrepareResult`.
    """
    from ..prepare import prepare

    p = config.prepare
    return prepare(
        config.raw_folder, config.working_folder(),
        num_x=p.num_x, num_y=p.num_y, overlap_perc=p.overlap_perc,
        montage_len=p.montage_len, row_length=p.row_length,
        x_buffer=p.x_buffer, y_buffer=p.y_buffer, url_prefix=p.url_prefix,
        truth=truth, executor=executor, progress=progress,
    )
