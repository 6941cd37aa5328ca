"""The annotation service (Figure Eight, now Appen): client, reports, crowd and emulator.

``client``   :class:`AppenClient` downloads reports and job status (retries, 202 polling).
``report``   :func:`read_report` parses full/aggregated/JSON-lines reports into
             :class:`Judgment` records; :func:`write_broken_link_csvs`.
``crowd``    simulated annotators painting judgments from ground-truth montages.
``emulator`` :class:`Emulator`, a real HTTP server speaking the service's API on loopback.
"""

from __future__ import annotations

from .client import (
    DEFAULT_API_URL,
    REPORT_TYPES,
    AppenClient,
    api_url_from_env,
    get_api_key,
    v3_base_url,
)
from .crowd import CrowdConfig, CrowdJob, crowd_from_folder, simulate_crowd
from .emulator import Emulator, Faults, serve_forever, serve_job_from_folder
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
    "CrowdConfig",
    "CrowdJob",
    "Emulator",
    "Faults",
    "Judgment",
    "Report",
    "ReportProblem",
    "api_url_from_env",
    "crowd_from_folder",
    "get_api_key",
    "read_report",
    "serve_forever",
    "serve_job_from_folder",
    "simulate_crowd",
    "still_broken",
    "v3_base_url",
    "write_broken_link_csvs",
]
