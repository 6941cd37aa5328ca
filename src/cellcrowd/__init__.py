"""cellcrowd: crowd-sourced cell annotation, from montages to training and tracking data.

The top level re-exports the objects most users need; each stage's module
(``cellcrowd.prepare``, ``cellcrowd.labels``, ``cellcrowd.movies``,
``cellcrowd.stitch``, ``cellcrowd.export.npz`` …) has the rest, and
``cellcrowd.notebook`` offers the original notebook's function names.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from .appen.client import AppenClient
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
    from .sim.emulator import Emulator

#: Where each public name lives: imported on first use (PEP 562), so that
#: ``import cellcrowd`` stays light (no numpy, pydantic, httpx or emulator at import).
_LAZY: dict[str, str] = {
    "AnnotationError": ".errors",
    "AppenClient": ".appen.client",
    "AuthenticationError": ".errors",
    "CellcrowdError": ".errors",
    "ChopperLog": ".logs",
    "Config": ".config",
    "ConfigError": ".errors",
    "DaskExecutor": ".executor",
    "DownloadError": ".errors",
    "Emulator": ".sim.emulator",
    "GeometryError": ".errors",
    "InputError": ".errors",
    "JobNotFoundError": ".errors",
    "Judgment": ".appen.report",
    "LineageError": ".errors",
    "LocalExecutor": ".executor",
    "LogError": ".errors",
    "MontageKey": ".layout",
    "MontageLayout": ".geometry",
    "MontageLog": ".logs",
    "Padding": ".layout",
    "PipelineError": ".errors",
    "Position": ".geometry",
    "ReportError": ".errors",
    "ReportNotReadyError": ".errors",
    "STAGES": ".pipeline",
    "ServiceError": ".errors",
    "TemporaryServiceError": ".errors",
    "TileGrid": ".geometry",
    "UnsafePathError": ".errors",
    "WorkingFolder": ".layout",
    "load_config": ".config",
    "parse_montage_name": ".layout",
    "read_report": ".appen.report",
    "run": ".pipeline",
    "status": ".pipeline",
}

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


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cellcrowd' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
