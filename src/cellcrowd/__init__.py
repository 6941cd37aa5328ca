"""cellcrowd: crowd-sourced cell annotation, from montages to training and tracking data.

The top level re-exports the objects most users need; each stage's module
(``cellcrowd.prepare``, ``cellcrowd.labels``, ``cellcrowd.movies``,
``cellcrowd.stitch``, ``cellcrowd.export.npz`` …) has the rest, and
``cellcrowd.notebook`` offers the original notebook's function names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .appen.client import AppenClient
from .appen.emulator import Emulator
from .appen.report import Judgment, read_report
from .config import Config, load_config
from .errors import (
    AnnotationError,
    AuthenticationError,
    CellcrowdError,
    ConfigError,
    DownloadError,
    GeometryError,
    InputError,
    JobNotFoundError,
    LineageError,
    LogError,
    PipelineError,
    ReportError,
    ReportNotReadyError,
    ServiceError,
    TemporaryServiceError,
    UnsafePathError,
)
from .executor import DaskExecutor, LocalExecutor
from .geometry import MontageLayout, Position, TileGrid
from .layout import MontageKey, Padding, WorkingFolder, parse_montage_name
from .logs import ChopperLog, MontageLog
from .pipeline import STAGES, run, status

__all__ = [
    "STAGES",
    "AnnotationError",
    "AppenClient",
    "AuthenticationError",
    "CellcrowdError",
    "ChopperLog",
    "Config",
    "ConfigError",
    "DaskExecutor",
    "DownloadError",
    "Emulator",
    "GeometryError",
    "InputError",
    "JobNotFoundError",
    "Judgment",
    "LineageError",
    "LocalExecutor",
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
    "UnsafePathError",
    "WorkingFolder",
    "__version__",
    "load_config",
    "parse_montage_name",
    "read_report",
    "run",
    "status",
]
