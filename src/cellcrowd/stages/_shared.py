"""Pieces several stages share: the input files they record, the job report, the client."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..files import list_images
from ..layout import WorkingFolder
from ..pipeline.stage import Context

if TYPE_CHECKING:
    from ..appen.client import AppenClient
    from ..appen.report import Report

__all__ = ["existing", "log_files", "raw_and_logs", "read_judgments", "service_client"]


def log_files(wf: WorkingFolder, config: Config) -> list[Path]:
    """The JSON logs that exist (a stage's input files)."""
    return [p for p in (wf.chopper_log, wf.montage_log) if p.exists()]


def raw_and_logs(wf: WorkingFolder, config: Config) -> list[Path]:
    """The logs and the raw frames (a stage's input files)."""
    raw = list_images(wf.raw) if wf.raw.is_dir() else []
    return log_files(wf, config) + raw


def existing(paths: Sequence[Path]) -> list[Path]:
    """The paths that are files."""
    return [p for p in paths if p.is_file()]


#: The last report read, by what identifies its file's content: the fetch and clean
#: stages of one run read the report the report stage wrote, parsed once.
_last_report: dict[tuple[object, ...], Report] = {}


def read_judgments(config: Config, wf: WorkingFolder) -> Report:
    """The job report the report stage downloaded, read and checked.

    Parsed once while the file is unchanged (same path, inode, size and modification
    time): later stages of a run get a copy of the same judgments.
    """
    from ..appen.report import Report, read_report

    path = wf.report_csv(config.job_id, config.service.report_type)
    s = config.service
    try:
        st = path.stat()
    except OSError:
        st = None  # read_report says what is wrong
    key = (str(path), st and (st.st_ino, st.st_size, st.st_mtime_ns), s.report_type,
           config.identifier, s.allow_other_identifier)
    cached = _last_report.get(key) if st is not None else None
    if cached is None:
        cached = read_report(path, report_type=s.report_type, identifier=config.identifier,
                             allow_other_identifier=s.allow_other_identifier)
        _last_report.clear()
        if st is not None:
            _last_report[key] = cached
    return Report(cached, problems=cached.problems, path=cached.path,
                  report_type=cached.report_type, columns=cached.columns)


def service_client(ctx: Context) -> AppenClient:
    """A client for the service with the configuration's bounds on every wait."""
    from ..appen.client import AppenClient

    s = ctx.config.service
    return AppenClient(ctx.api_key(), base_url=s.api_url, poll_interval=s.poll_interval,
                       max_connections=s.concurrency, max_retry_after=s.max_wait,
                       request_deadline=s.request_deadline, report_deadline=s.report_deadline)
