"""Job reports (full, aggregated, JSON lines) parsed into :class:`Judgment` records.

A *full* report has one row per judgment; an *aggregated* one, one row per unit (the
service's chosen answer); the *json* report one unit per line with every judgment in
``results.judgments``. All three become the same :class:`Judgment` records, each holding
the raw row (for JSON lines, a row shaped like the full report's) so the rows can be
written back as CSV.

Nothing is dropped silently, and one bad row never stops the harvest: a row that cannot
become a usable judgment is a :class:`ReportProblem` in ``Report.problems`` (one warning
line in all), with its reason: an ``image_url`` that is not a montage name, an annotation
without URL while ``broken_link`` is false, malformed values (annotation JSON, booleans,
trust scores), bytes that are not UTF-8 (the rest is decoded; the row and column are
named), ids that are not what the service issues (digits), a montage of another
identifier (unless ``allow_other_identifier``), and conflicting duplicates (the same
judgment id with other content: every copy is a problem, none wins). Every value that
reaches a file name is checked here, so a report can never name a path. Only a report
with missing columns, or with rows none of which is usable, raises
:class:`~cellcrowd.errors.ReportError` naming the file (and the first problem).

Broken links and the problem rows are written by :mod:`cellcrowd.appen.report_csvs`
(re-exported here).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import InputError, ReportError
from ..layout import MontageKey, parse_montage_name
from .report_csvs import still_broken, write_broken_link_csvs, write_problems_csv
from .screen import (
    conflicting_duplicates,
    decode_report,
    other_identifier,
    printable,
    undecodable,
)

__all__ = [
    "FULL_REPORT_COLUMNS",
    "JUDGMENT_REPORT_TYPES",
    "Judgment",
    "Report",
    "ReportProblem",
    "montage_from_url",
    "parse_annotation_url",
    "parse_bool",
    "read_report",
    "still_broken",
    "write_broken_link_csvs",
    "write_problems_csv",
]

logger = logging.getLogger(__name__)

#: The service's own columns at the start of every full report, in order.
FULL_REPORT_COLUMNS = (
    "_unit_id", "_created_at", "_golden", "_id", "_missed", "_started_at", "_tainted",
    "_channel", "_trust", "_worker_id", "_country", "_region", "_city", "_ip",
)
#: Report types that hold judgments (the others are read as plain CSVs).
JUDGMENT_REPORT_TYPES = ("full", "aggregated", "json")

_REQUIRED = {
    "full": ("_unit_id", "_id", "image_url", "annotation"),
    "aggregated": ("_unit_id", "image_url", "annotation"),
}
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0", ""})
_FIELD_LIMIT = 1 << 27  # annotation JSON (polygons) can exceed csv's 128 kB default
_SERVICE_ID = re.compile(r"^[0-9]{1,20}$")
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f]+$")


@dataclass(frozen=True)
class Judgment:
    """One judgment (one worker's answer for one unit) from a job report.

    Attributes
    ----------
    unit_id, judgment_id, worker_id : str
        The service's ids (``judgment_id`` is ``"aggregated"`` in an aggregated report).
    trust : float or None
        The worker's trust score (``annotation:confidence`` in an aggregated report).
    tainted, golden : bool
        Worker later failed quality control; the unit is a test question.
    image_url, identifier : str
        The uploaded montage and its identifier.
    annotation_url : str or None
        The annotation PNG, ``None`` when there is none.
    broken_link : bool
        The worker could not open the image.
    montage : str
        The montage name as uploaded (the ``image_url`` file name without suffix).
    key : MontageKey
        What the montage name says.
    created_at : str
        When the judgment was made, as the report writes it.
    row_number : int
        1-based data row (CSV) or line (JSON lines).
    row : dict
        Every column of the row, as read (JSON lines: shaped like a full report row).
    """

    unit_id: str
    judgment_id: str
    worker_id: str
    trust: float | None
    tainted: bool
    golden: bool
    image_url: str
    identifier: str
    annotation_url: str | None
    broken_link: bool
    montage: str
    key: MontageKey
    created_at: str = ""
    row_number: int = 0
    row: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False,
                                   repr=False)

    @property
    def usable(self) -> bool:
        """Not a broken link and has an annotation URL."""
        return not self.broken_link and self.annotation_url is not None


@dataclass(frozen=True)
class ReportProblem:
    """A report row that could not become a usable :class:`Judgment`, and why."""

    row: int
    unit_id: str
    judgment_id: str
    image_url: str
    reason: str

    def __str__(self) -> str:
        unit = f" (unit {self.unit_id})" if self.unit_id else ""
        return f"row {self.row}{unit}: {self.reason}"


class Report(list[Judgment]):
    """The judgments of a report (a list), plus the rows that were not usable.

    Attributes
    ----------
    problems : list of ReportProblem
        Rows kept out of the list, each with the reason.
    path : Path or None
        The report file.
    report_type : str
        ``full``, ``aggregated`` or ``json``.
    columns : tuple of str
        The CSV header (JSON lines: the columns of the rebuilt rows).
    """

    def __init__(
        self,
        judgments: Iterable[Judgment] = (),
        *,
        problems: Iterable[ReportProblem] = (),
        path: Path | None = None,
        report_type: str = "full",
        columns: Sequence[str] = (),
    ) -> None:
        super().__init__(judgments)
        self.problems = list(problems)
        self.path = path
        self.report_type = report_type
        self.columns = tuple(columns)


# -- value parsing ---------------------------------------------------------------------------


def parse_bool(value: object, *, path: Path | None = None, row: int | None = None,
               column: str | None = None) -> bool:
    """A report boolean: ``true``/``false`` in any case, ``""`` is false.

    >>> parse_bool("TRUE"), parse_bool("false"), parse_bool(""), parse_bool(None)
    (True, False, False, False)
    """
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ReportError(f"{value!r} is not a boolean: expected true or false (any case) "
                      "or empty", path=path, row=row, column=column)


def _parse_trust(value: object, *, path: Path | None, row: int, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ReportError(f"{value!r} is not a number: expected a trust score such as 0.87",
                          path=path, row=row, column=column) from None


def parse_annotation_url(value: object, *, path: Path | None = None, row: int | None = None,
                         column: str = "annotation") -> str | None:
    """The annotation PNG's URL from an ``annotation`` cell, or ``None`` when there is none.

    The cell is JSON with a ``url`` (an object, or a list of them: the first with a URL
    wins), or a bare URL. Empty cells give ``None``; malformed JSON raises ReportError.

    >>> parse_annotation_url('{"url": "https://s.example/a.png", "instances": []}')
    'https://s.example/a.png'
    >>> parse_annotation_url("") is None
    True
    """
    data: Any = value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if re.match(r"(?i)^https?://", text):
            return text
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(
                f"the annotation is not valid JSON ({exc.msg} at character {exc.pos}; "
                f"starts {text[:60]!r}): the report may be cut or edited by hand; "
                "download it again",
                path=path, row=row, column=column,
            ) from None
    return _url_in(data)


def _url_in(data: Any) -> str | None:
    if isinstance(data, str):
        text = data.strip()
        return text if re.match(r"(?i)^\w+://", text) else None
    if isinstance(data, dict):
        url = data.get("url")
        return url.strip() if isinstance(url, str) and url.strip() else None
    if isinstance(data, list):
        for item in data:
            if (url := _url_in(item)) is not None:
                return url
    return None


def montage_from_url(image_url: str) -> tuple[str, MontageKey]:
    """The montage name (file name without suffix) of an uploaded image URL, and its key.

    >>> montage_from_url("https://bucket.example/exp_x_1_y_0_montage_3.png")
    ('exp_x_1_y_0_montage_3', MontageKey(identifier='exp', x=1, y=0, montage=3))
    """
    key = parse_montage_name(image_url)
    name = unquote(urlparse(image_url).path) if "://" in image_url else image_url
    stem = PurePosixPath(name.replace("\\", "/")).name
    stem = re.sub(r"(?i)\.(png|tiff?|jpe?g)$", "", stem)
    return stem, key


# -- reading ---------------------------------------------------------------------------------


def read_report(path: str | Path, *, report_type: str = "full", identifier: str | None = None,
                allow_other_identifier: bool = False) -> Report:
    """Read a full, aggregated or JSON-lines report into :class:`Judgment` records.

    Parameters
    ----------
    path : Path
        The report (``wf.report_csv(job_id, report_type)``).
    report_type : {"full", "aggregated", "json"}
        What kind of report it is.
    identifier : str, optional
        The configuration's identifier: rows of montages of another identifier are
        problems (the report is of another experiment), unless ``allow_other_identifier``.
    allow_other_identifier : bool
        Use rows of any identifier (the user says the report is the intended one).

    Returns
    -------
    Report
        A list of judgments in report order, with ``.problems`` for the rows that could
        not be used (each also logged once as a summary warning).

    Raises
    ------
    ReportError
        The report is missing, empty, not text, lacks a required column, or has rows
        none of which is usable.
    """
    path = Path(path)
    if report_type not in JUDGMENT_REPORT_TYPES:
        raise ValueError(
            f"report type {report_type!r} holds no judgments: use one of "
            f"{', '.join(JUDGMENT_REPORT_TYPES)}"
        )
    text = decode_report(path)
    report = _read_json_lines(text, path) if report_type == "json" else _read_csv(
        text, path, report_type)
    if identifier is not None and not allow_other_identifier:
        report = _screen(report, other_identifier(report, identifier))
    report = _screen(report, conflicting_duplicates(report))
    if report.problems and not report:
        raise ReportError(
            f"no usable row: all {len(report.problems)} row(s) were skipped, the first "
            f"because {report.problems[0]}" + (
                "; if this report is intended for this configuration, set "
                "service.allow_other_identifier = true" if identifier is not None and any(
                    "identifier" in p.reason for p in report.problems) else ""),
            path=path)
    if report.problems:
        logger.warning(
            "%s: %d row(s) could not be used, first: %s", path.name, len(report.problems),
            report.problems[0],
        )
    return report


def _screen(report: Report, reasons: Mapping[int, str]) -> Report:
    """The report without the judgments at the given indices, which become problems."""
    if not reasons:
        return report
    kept = [j for i, j in enumerate(report) if i not in reasons]
    problems = list(report.problems) + [
        ReportProblem(j.row_number, j.unit_id, j.judgment_id, j.image_url, reasons[i])
        for i, j in enumerate(report) if i in reasons]
    problems.sort(key=lambda p: p.row)
    return Report(kept, problems=problems, path=report.path, report_type=report.report_type,
                  columns=report.columns)


def _read_csv(text: str, path: Path, report_type: str) -> Report:
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = tuple(reader.fieldnames or ())
    for column in _REQUIRED[report_type]:
        if column not in columns:
            raise ReportError(
                f"the {report_type} report has no {column!r} column; its columns are "
                f"{', '.join(columns) or 'none'}: is this the {report_type} report of an "
                "image annotation job?",
                path=path, column=column,
            )
    judgments: list[Judgment] = []
    problems: list[ReportProblem] = []
    try:
        for number, row in enumerate(reader, start=1):
            clean = {k: (v if isinstance(v, str) else "") for k, v in row.items()
                     if k is not None}
            _add(_row_or_problem(clean, path, number, report_type), judgments, problems)
    except csv.Error as exc:
        raise ReportError(f"malformed CSV ({exc})", path=path,
                          row=reader.line_num) from None
    return Report(judgments, problems=problems, path=path, report_type=report_type,
                  columns=columns)


def _add(item: Judgment | ReportProblem, judgments: list[Judgment],
         problems: list[ReportProblem]) -> None:
    if isinstance(item, Judgment):
        judgments.append(item)
    else:
        problems.append(item)


def _row_or_problem(row: dict[str, str], path: Path, number: int,
                    report_type: str) -> Judgment | ReportProblem:
    """The row's judgment, or a problem naming what is wrong with it."""
    unit = printable(row.get("_unit_id", "")).strip()
    jid = "aggregated" if report_type == "aggregated" else printable(row.get("_id", "")).strip()
    image_url = printable(row.get("image_url", "")).strip()
    bad_bytes = undecodable(row)
    if bad_bytes is not None:
        return ReportProblem(number, unit, jid, image_url, bad_bytes)
    try:
        return _judgment_from_row(row, path, number, report_type)
    except ReportError as exc:
        where = f"{path}, row {number}, "
        reason = str(exc)
        return ReportProblem(number, unit, jid, image_url, reason.removeprefix(where))


def _judgment_from_row(row: dict[str, str], path: Path, number: int,
                       report_type: str) -> Judgment | ReportProblem:
    aggregated = report_type == "aggregated"
    fields = {
        "unit_id": row.get("_unit_id", "").strip(),
        "judgment_id": "aggregated" if aggregated else row.get("_id", "").strip(),
        "worker_id": "" if aggregated else row.get("_worker_id", "").strip(),
        "created_at": row.get("_last_judgment_at" if aggregated else "_created_at", ""),
    }
    trust_column = "annotation:confidence" if aggregated else "_trust"
    return _make_judgment(
        fields,
        trust=_parse_trust(row.get(trust_column), path=path, row=number, column=trust_column),
        tainted=parse_bool(row.get("_tainted"), path=path, row=number, column="_tainted"),
        golden=parse_bool(row.get("_golden"), path=path, row=number, column="_golden"),
        image_url=row.get("image_url", "").strip(),
        identifier=row.get("identifier", "").strip(),
        annotation=row.get("annotation"),
        broken=row.get("broken_link"),
        row=row, path=path, number=number,
    )


def _make_judgment(
    ids: dict[str, str], *, trust: float | None, tainted: bool, golden: bool,
    image_url: str, identifier: str, annotation: object, broken: object,
    row: dict[str, str], path: Path, number: int,
) -> Judgment | ReportProblem:
    def problem(reason: str) -> ReportProblem:
        return ReportProblem(number, ids["unit_id"], ids["judgment_id"], image_url, reason)

    broken_link = parse_bool(broken, path=path, row=number, column="broken_link")
    url = parse_annotation_url(annotation, path=path, row=number, column="annotation")
    if not ids["unit_id"]:
        return problem("no unit id (_unit_id is empty)")
    for name, column in (("unit_id", "_unit_id"), ("judgment_id", "_id")):
        value = ids[name]
        if not _SERVICE_ID.match(value) and not (name == "judgment_id" and value == "aggregated"):
            return problem(f"column {column!r}: {value[:80]!r} is not an id the service issues "
                           "(digits only): the report was edited or is not from the service")
    try:
        montage, key = montage_from_url(image_url)
        parse_montage_name(montage)
        if not _SAFE_NAME.match(montage):
            raise InputError("unsafe characters")
    except InputError:
        return problem(f"image_url {image_url[:200]!r} is not a montage name "
                       "('{identifier}_x_{X}_y_{Y}_montage_{M}.png'): was it uploaded by "
                       "cellcrowd prepare?")
    if url is not None and not re.match(r"(?i)^https?://", url):
        return problem(f"annotation url {url!r} is not an http(s) URL")
    if url is None and not broken_link:
        return problem("the annotation has no url and broken_link is false: the worker "
                       "submitted nothing")
    return Judgment(
        unit_id=ids["unit_id"], judgment_id=ids["judgment_id"], worker_id=ids["worker_id"],
        trust=trust, tainted=tainted, golden=golden, image_url=image_url,
        identifier=identifier or key.identifier, annotation_url=url,
        broken_link=broken_link, montage=montage, key=key, created_at=ids["created_at"],
        row_number=number, row=row,
    )


def _read_json_lines(text: str, path: Path) -> Report:
    judgments: list[Judgment] = []
    problems: list[ReportProblem] = []
    columns: dict[str, None] = dict.fromkeys(FULL_REPORT_COLUMNS)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            unit = _json_unit(line, path, number)
        except ReportError as exc:
            problems.append(ReportProblem(number, "", "", "", str(exc).removeprefix(
                f"{path}, row {number}, ").removeprefix(f"{path}, row {number}: ")))
            continue
        unit_id = str(unit.get("id", "")).strip()
        data = unit["data"]
        raw_judgments = unit["results"]["judgments"]
        if not raw_judgments:
            problems.append(ReportProblem(number, unit_id, "", str(data.get("image_url", "")),
                                          "the unit has no judgments yet"))
            continue
        for item in raw_judgments:
            try:
                row = _full_row(unit_id, item, data, path, number)
            except ReportError as exc:
                problems.append(ReportProblem(number, unit_id, "", "", str(exc).removeprefix(
                    f"{path}, row {number}, ")))
                continue
            columns.update(dict.fromkeys(row))
            _add(_row_or_problem(row, path, number, "full"), judgments, problems)
    return Report(judgments, problems=problems, path=path, report_type="json",
                  columns=tuple(columns))


def _json_unit(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        unit = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReportError(f"not valid JSON ({exc.msg} at character {exc.pos}): the report "
                          "may be cut; download it again", path=path, row=number) from None
    if not isinstance(unit, dict):
        raise ReportError(f"expected a JSON object per line, got {type(unit).__name__}",
                          path=path, row=number)
    keys = ", ".join(unit) or "none"
    for key, kind in (("id", (str, int)), ("data", dict), ("results", dict)):
        if not isinstance(unit.get(key), kind):
            raise ReportError(f"the unit has no valid {key!r}; its keys are {keys}",
                              path=path, row=number, column=key)
    if not isinstance(unit["results"].get("judgments"), list):
        raise ReportError("the unit has no results.judgments list; results has "
                          f"{', '.join(unit['results']) or 'nothing'}",
                          path=path, row=number, column="results.judgments")
    return unit


def _full_row(unit_id: str, item: object, data: Mapping[str, Any], path: Path,
              number: int) -> dict[str, str]:
    """A JSON-lines judgment rebuilt as a full-report row (strings, full column names)."""
    if not isinstance(item, dict):
        raise ReportError(f"a judgment is {type(item).__name__}, expected an object",
                          path=path, row=number, column="results.judgments")
    answers: dict[str, Any] = item["data"] if isinstance(item.get("data"), dict) else {}
    names = {"_created_at": "created_at", "_golden": "golden", "_id": "id",
             "_missed": "missed", "_started_at": "started_at", "_tainted": "tainted",
             "_channel": "external_type", "_trust": "worker_trust", "_worker_id": "worker_id",
             "_country": "country", "_region": "region", "_city": "city", "_ip": "ip"}
    row = {"_unit_id": unit_id}
    row.update({column: _cell(item.get(key)) for column, key in names.items()})
    row.update({str(k): _cell(v) for k, v in answers.items()})
    row.update({str(k): _cell(v) for k, v in data.items() if str(k) not in row})
    return row


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
