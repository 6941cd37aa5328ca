"""The exception tree of cellcrowd.

Every error raised on purpose by cellcrowd derives from :class:`CellcrowdError`.
Errors about user input also derive from :class:`ValueError`, so code that
expects the usual scientific-Python behaviour keeps working::

    CellcrowdError
    ├── InputError (also ValueError)   bad file, row, column or value from outside
    │   ├── LogError                   a JSON log is missing, unreadable or invalid
    │   ├── GeometryError              an image does not fit the tile/montage geometry
    │   ├── ReportError                a job report row or column is malformed
    │   ├── UnsafePathError            a file name would leave the working folder
    │   ├── AnnotationError            an annotation image cannot be decoded into labels
    │   ├── ConfigError                the configuration file or a flag is invalid
    │   └── LineageError               a lineage / tracking export breaks a format rule
    ├── ServiceError                   the annotation service answered with an error
    │   ├── AuthenticationError        401/403: the API key was refused
    │   ├── JobNotFoundError           404: no such job (or report type)
    │   ├── ReportNotReadyError        the report stayed "being generated" too long
    │   └── TemporaryServiceError      429/5xx/connection trouble that outlived retries
    ├── DownloadError                  an annotation could not be fetched or verified
    └── PipelineError                  a stage failed or a stage name is unknown

Errors carry their context as attributes (``path``, ``row``, ``column``,
``url``, ``unit``) so callers can report them without parsing messages.
Messages name what went wrong, the offending value, and what to do next.
API keys never appear in messages: URLs are passed through
:func:`cellcrowd.errors.redact` before they are shown.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "AnnotationError",
    "AuthenticationError",
    "CellcrowdError",
    "ConfigError",
    "DownloadError",
    "GeometryError",
    "InputError",
    "JobNotFoundError",
    "LineageError",
    "LogError",
    "PipelineError",
    "ReportError",
    "ReportNotReadyError",
    "ServiceError",
    "TemporaryServiceError",
    "UnsafePathError",
    "redact",
]

_SECRET_QUERY = re.compile(r"(?i)((?:^|[?&;])(?:key|api_key|apikey|token)=)[^&;#\s]*")
_SECRET_HEADER = re.compile(r"(?i)(token\s+token=)[^\s,;\"']+")


def redact(text: str, *secrets: str | None) -> str:
    """Remove credentials from ``text`` (URLs, header values, or any given secret).

    >>> redact("https://api.appen.com/v1/jobs/1.csv?type=full&key=abc123")
    'https://api.appen.com/v1/jobs/1.csv?type=full&key=REDACTED'
    >>> redact("failed with abc123 inside", "abc123")
    'failed with REDACTED inside'
    """
    out = _SECRET_QUERY.sub(r"\1REDACTED", text)
    out = _SECRET_HEADER.sub(r"\1REDACTED", out)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "REDACTED")
    return out


class CellcrowdError(Exception):
    """Base class of every error cellcrowd raises on purpose."""


class InputError(CellcrowdError, ValueError):
    """Something from outside (a file, a row, a value) is not what cellcrowd can use.

    Attributes
    ----------
    path : Path or None
        The offending file, when there is one.
    row : int or None
        1-based data row (header excluded) in a CSV, or line in a JSON-lines file.
    column : str or None
        The offending CSV column, or the offending key (given as ``key``) of a JSON
        log or TOML configuration.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        key: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.row = row
        self.column = column if column is not None else key
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        elif key is not None:
            where.append(f"key {key!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class LogError(InputError):
    """A JSON log (montage maker / overlapping chopper) is missing or invalid."""


class GeometryError(InputError):
    """An image does not fit the tile grid or montage layout it is used with."""


class ReportError(InputError):
    """A job report (CSV or JSON lines) has a missing or malformed row or column."""


class UnsafePathError(InputError):
    """A path to write, rename or delete resolves outside the working folder."""


class AnnotationError(InputError):
    """An annotation image cannot be turned into labels."""


class ConfigError(InputError):
    """The configuration file, a flag or an environment variable is invalid."""


class ServiceError(CellcrowdError):
    """The annotation service answered with an error.

    Attributes
    ----------
    url : str or None
        The request URL with any credential removed.
    status : int or None
        The HTTP status code, when the server answered.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        self.url = redact(url) if url is not None else None
        self.status = status
        super().__init__(redact(message))


class AuthenticationError(ServiceError):
    """The API key was refused (HTTP 401 or 403)."""


class JobNotFoundError(ServiceError):
    """The job (or the requested report of it) does not exist (HTTP 404)."""


class ReportNotReadyError(ServiceError):
    """The service kept answering 202 "being generated" past the polling limit."""


class TemporaryServiceError(ServiceError):
    """Rate limiting, server errors or dropped connections outlasted every retry."""


class DownloadError(CellcrowdError):
    """An annotation image could not be downloaded or failed verification.

    Attributes
    ----------
    url : str
        The annotation URL with any credential removed.
    unit : str or None
        The unit (row) of the job the annotation belongs to.
    """

    def __init__(self, message: str, *, url: str, unit: str | None = None) -> None:
        self.url = redact(url)
        self.unit = unit
        super().__init__(redact(message))


class PipelineError(CellcrowdError):
    """A pipeline stage failed, or a stage name is unknown."""


class LineageError(InputError):
    """A cell lineage (DeepCell ``.trk``) or a Cell Tracking Challenge folder breaks a rule.

    Attributes
    ----------
    label : int or None
        The offending cell label (track), when there is one.
    rule : str or None
        The rule that is broken, in a few words (e.g. ``"frames"``).
    """

    def __init__(
        self,
        message: str,
        *,
        label: int | None = None,
        rule: str | None = None,
        path: str | Path | None = None,
        row: int | None = None,
    ) -> None:
        self.label = label
        self.rule = rule
        super().__init__(f"{message} (rule: {rule})" if rule else message, path=path, row=row)
