"""The annotation service (Figure Eight, now Appen): the client and its reports.

``client``   :class:`AppenClient` downloads reports and job status (retries, 202 polling).
``report``   :func:`read_report` parses full/aggregated/JSON-lines reports into
             :class:`Judgment` records; :func:`write_broken_link_csvs`.

The simulated crowd and the emulator moved to :mod:`cellcrowd.sim` (``cellcrowd.sim.crowd``,
``cellcrowd.sim.emulator``); their old names here (``cellcrowd.appen.Emulator``,
``cellcrowd.appen.emulator`` …) still work with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

from typing import Any

from .._moved import moved_attribute
from .client import (
    DEFAULT_API_URL,
    REPORT_TYPES,
    AppenClient,
    api_url_from_env,
    get_api_key,
    v3_base_url,
)
from .report import (
    Judgment,
    Report,
    ReportProblem,
    read_report,
    still_broken,
    write_broken_link_csvs,
)

__all__ = [
    "DEFAULT_API_URL",
    "REPORT_TYPES",
    "AppenClient",
    "Judgment",
    "Report",
    "ReportProblem",
    "api_url_from_env",
    "get_api_key",
    "read_report",
    "still_broken",
    "v3_base_url",
    "write_broken_link_csvs",
]

#: Names that moved to :mod:`cellcrowd.sim` (deprecated here).
_MOVED = {
    "CrowdConfig": "cellcrowd.sim.crowd",
    "CrowdJob": "cellcrowd.sim.crowd",
    "Emulator": "cellcrowd.sim.emulator",
    "Faults": "cellcrowd.sim.emulator",
    "crowd_from_folder": "cellcrowd.sim.crowd",
    "serve_forever": "cellcrowd.sim.emulator",
    "serve_job_from_folder": "cellcrowd.sim.emulator",
    "simulate_crowd": "cellcrowd.sim.crowd",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return moved_attribute(__name__, _MOVED[name], name)
