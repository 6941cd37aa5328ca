"""The two JSON logs written when montages are prepared, read back when they are harvested.

``{identifier}_montage_maker_log.json``
    ``date, montage_len, identifier, num_x_segments, num_y_segments, row_length,
    x_buffer, y_buffer, montages_in_pos``.
``{identifier}_overlapping_chopper_log.json``
    ``date, num_x_segments, num_y_segments, overlap_perc, identifier``; newer logs
    add ``y_start_indices, x_start_indices, overlapping_x_pix, overlapping_y_pix,
    original_y, original_x, frame_offset, num_images``. Both forms are read; the
    full form is written.

Old montage-maker logs were sometimes named ``{identifier}_montage_maker.json``
(as the seed notebook says); both names are found.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import LogError
from .files import atomic_write_text
from .geometry import MontageLayout, TileGrid

__all__ = [
    "ChopperLog",
    "MontageLog",
    "read_chopper_log",
    "read_logs",
    "read_montage_log",
    "write_log",
]

logger = logging.getLogger(__name__)


def _today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class _Log(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MontageLog(_Log):
    """What ``montage_maker`` recorded: how frames were laid out in montages."""

    date: str = Field(default_factory=_today)
    identifier: str = Field(min_length=1)
    montage_len: int = Field(ge=1)
    num_x_segments: int = Field(ge=1)
    num_y_segments: int = Field(ge=1)
    row_length: int = Field(ge=1)
    x_buffer: int = Field(ge=0)
    y_buffer: int = Field(ge=0)
    montages_in_pos: int = Field(ge=1)

    def layout(self, frame_shape: tuple[int, int]) -> MontageLayout:
        """The montage layout for tiles of ``frame_shape``."""
        return MontageLayout(
            frame_shape, self.montage_len, self.row_length, self.x_buffer, self.y_buffer
        )

    def layout_for_montage(
        self, montage_shape: tuple[int, ...], *, source: str = "montage"
    ) -> MontageLayout:
        """The montage layout recovered from a montage's size (checked to fit)."""
        return MontageLayout.from_montage_shape(
            montage_shape,
            length=self.montage_len,
            row_length=self.row_length,
            x_buffer=self.x_buffer,
            y_buffer=self.y_buffer,
            source=source,
        )


class ChopperLog(_Log):
    """What ``overlapping_chopper`` recorded: how frames were cut into tiles."""

    date: str = Field(default_factory=_today)
    identifier: str = Field(min_length=1)
    num_x_segments: int = Field(ge=1)
    num_y_segments: int = Field(ge=1)
    overlap_perc: float = Field(ge=0, lt=100)
    y_start_indices: list[int] | None = None
    x_start_indices: list[int] | None = None
    overlapping_x_pix: int | None = Field(default=None, ge=0)
    overlapping_y_pix: int | None = Field(default=None, ge=0)
    original_y: int | None = Field(default=None, ge=1)
    original_x: int | None = Field(default=None, ge=1)
    frame_offset: int | None = Field(default=None, ge=0)
    num_images: int | None = Field(default=None, ge=1)

    @classmethod
    def from_grid(
        cls, grid: TileGrid, *, identifier: str, num_images: int, frame_offset: int = 0
    ) -> ChopperLog:
        """The full log describing ``grid`` (start indices are in padded coordinates)."""
        return cls(
            identifier=identifier,
            num_x_segments=grid.num_x,
            num_y_segments=grid.num_y,
            overlap_perc=grid.overlap_perc,
            y_start_indices=[j * grid.core_y for j in range(grid.num_y)],
            x_start_indices=[i * grid.core_x for i in range(grid.num_x)],
            overlapping_x_pix=grid.overlap_x,
            overlapping_y_pix=grid.overlap_y,
            original_y=grid.frame_shape[0],
            original_x=grid.frame_shape[1],
            frame_offset=frame_offset,
            num_images=num_images,
        )

    def tile_grid(
        self, frame_shape: tuple[int, int] | None = None, *, source: str = "chopper log"
    ) -> TileGrid:
        """The tile grid this log describes.

        ``frame_shape`` is needed for old logs without ``original_y/original_x``;
        when both are present they must agree. Logs with start indices give the
        core size exactly; old logs get the original tool's rounding (down).
        """
        logged = (
            (self.original_y, self.original_x)
            if self.original_y is not None and self.original_x is not None
            else None
        )
        if frame_shape is not None and logged is not None and tuple(frame_shape) != logged:
            raise LogError(
                f"the log says frames are {logged[0]}x{logged[1]} but the raw frames are "
                f"{frame_shape[0]}x{frame_shape[1]}: point to the raw movie this log was "
                "written for",
                path=source,
            )
        shape = logged or (tuple(frame_shape) if frame_shape is not None else None)
        if shape is None:
            raise LogError(
                "this old-style log has no original_y/original_x: give the raw frame size "
                "(the raw folder) so the tile grid can be rebuilt",
                path=source,
            )
        height, width = int(shape[0]), int(shape[1])
        grid = TileGrid.legacy(
            (height, width),
            num_x=self.num_x_segments,
            num_y=self.num_y_segments,
            overlap_perc=self.overlap_perc,
        )
        core_y = _core_from_starts(self.y_start_indices, self.num_y_segments, grid.core_y,
                                   "y_start_indices", source)
        core_x = _core_from_starts(self.x_start_indices, self.num_x_segments, grid.core_x,
                                   "x_start_indices", source)
        overlap_y = (self.overlapping_y_pix if self.overlapping_y_pix is not None
                     else int(core_y * self.overlap_perc / 100))
        overlap_x = (self.overlapping_x_pix if self.overlapping_x_pix is not None
                     else int(core_x * self.overlap_perc / 100))
        grid = TileGrid(
            frame_shape=(height, width),
            num_x=self.num_x_segments,
            num_y=self.num_y_segments,
            core_y=core_y,
            core_x=core_x,
            overlap_y=overlap_y,
            overlap_x=overlap_x,
            overlap_perc=self.overlap_perc,
        )
        if any(grid.lost_pixels):
            logger.warning(
                "%s: the original tiles do not cover the last %d rows and %d columns of "
                "the %dx%d frames; those pixels stay unlabelled when tiles are stitched",
                source, *grid.lost_pixels, height, width,
            )
        return grid


def _core_from_starts(
    starts: list[int] | None, count: int, default: int, key: str, source: str
) -> int:
    if starts is None:
        return default
    if len(starts) != count:
        raise LogError(
            f"{key} has {len(starts)} entries but the log says there are {count} segments",
            path=source, key=key,
        )
    if count == 1:
        return default
    step = starts[1] - starts[0]
    if step < 1 or any(b - a != step for a, b in itertools.pairwise(starts)):
        raise LogError(
            f"{key} must be evenly spaced increasing pixel offsets, got {starts}",
            path=source, key=key,
        )
    return step


_L = TypeVar("_L", bound=_Log)


def _read(path: Path, model: type[_L]) -> _L:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LogError(
            "log not found: run `cellcrowd prepare` first, or copy the json_logs folder "
            "of the pre-annotation run into the working folder",
            path=path,
        ) from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LogError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    if not isinstance(data, dict):
        raise LogError(f"expected a JSON object, got {type(data).__name__}", path=path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        got = first.get("input")
        value = "missing" if first["type"] == "missing" else f"got {got!r}"
        raise LogError(
            f"{first['msg']} ({value}); fix the key or rewrite the log with "
            "`cellcrowd prepare`",
            path=path,
            key=key,
        ) from None


def read_montage_log(path: str | Path) -> MontageLog:
    """Read and validate a montage-maker log."""
    return _read(Path(path), MontageLog)


def read_chopper_log(path: str | Path) -> ChopperLog:
    """Read and validate an overlapping-chopper log."""
    return _read(Path(path), ChopperLog)


def read_logs(chopper_path: Path, montage_path: Path) -> tuple[ChopperLog, MontageLog]:
    """Read both logs and check that they describe the same tiles."""
    chopper = read_chopper_log(chopper_path)
    montage = read_montage_log(montage_path)
    for key in ("num_x_segments", "num_y_segments"):
        if getattr(chopper, key) != getattr(montage, key):
            raise LogError(
                f"{key} is {getattr(montage, key)} here but {getattr(chopper, key)} in "
                f"{chopper_path.name}: the two logs come from different runs",
                path=montage_path,
                key=key,
            )
    if chopper.identifier != montage.identifier:
        logger.warning(
            "identifiers differ between %s (%r) and %s (%r)",
            chopper_path.name, chopper.identifier, montage_path.name, montage.identifier,
        )
    return chopper, montage


def write_log(log: _Log, path: str | Path) -> Path:
    """Write a log atomically as indented JSON (the full key set)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(log.model_dump(), indent=2) + "\n")
    return path
