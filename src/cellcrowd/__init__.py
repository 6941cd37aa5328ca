"""cellcrowd: crowd-sourced cell annotation, from montages to training and tracking data."""

from __future__ import annotations

from .errors import (
    AnnotationError,
    AuthenticationError,
    CellcrowdError,
    ConfigError,
    DownloadError,
    GeometryError,
    InputError,
    JobNotFoundError,
    LogError,
    PipelineError,
    ReportError,
    ReportNotReadyError,
    ServiceError,
    TemporaryServiceError,
)
from .geometry import MontageLayout, Position, TileGrid
from .layout import MontageKey, Padding, WorkingFolder, parse_montage_name
from .logs import ChopperLog, MontageLog

__version__ = "0.1.0"

__all__ = [
    "AnnotationError",
    "AuthenticationError",
    "CellcrowdError",
    "ChopperLog",
    "ConfigError",
    "DownloadError",
    "GeometryError",
    "InputError",
    "JobNotFoundError",
    "LogError",
    "MontageKey",
    "MontageLayout",
    "MontageLog",
    "Padding",
    "PipelineError",
    "Position",
    "ReportError",
    "ReportNotReadyError",
    "ServiceError",
    "TemporaryServiceError",
    "TileGrid",
    "WorkingFolder",
    "__version__",
    "parse_montage_name",
]
