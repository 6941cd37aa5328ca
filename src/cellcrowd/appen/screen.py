"""Checks of a job report's values where they enter: bytes, identifiers, duplicates.

Used by :func:`cellcrowd.appen.report.read_report`. Each check names what is wrong with
a row so that the row becomes a problem (a skipped unit with its reason) instead of
stopping the report stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ReportError

if TYPE_CHECKING:
    from .report import Judgment

__all__ = ["conflicting_duplicates", "decode_report", "other_identifier", "printable",
           "undecodable"]

_ZIP_MAGIC = b"PK\x03\x04"


def decode_report(path: Path) -> str:
    """The report's text; bytes that are not UTF-8 are kept as surrogates (rows flag them)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError("report not found: download it first (cellcrowd download)",
                          path=path) from None
    if data.startswith(_ZIP_MAGIC):
        raise ReportError("this is a zip, not the report inside it: unzip it (or download "
                          "it again with cellcrowd)", path=path)
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if not text.strip():
        raise ReportError("the report is empty (not even a header row): download it again",
                          path=path)
    return text


def undecodable(row: Mapping[str, str]) -> str | None:
    """Why a row holds bytes that are not UTF-8 (named by column), or None."""
    bad = [k for k, v in row.items() if _has_surrogates(v) or _has_surrogates(k)]
    if not bad:
        return None
    shown = ", ".join(f"{printable(k)!r}: {printable(row[k])!r}" for k in bad[:3])
    return (f"bytes that are not UTF-8 in column(s) {shown} (shown with \ufffd): the report "
            "was saved in another encoding; download it again, or save it as UTF-8")


#: The lone surrogates ``errors="surrogateescape"`` decodes bytes that are not UTF-8 into.
_SURROGATES = re.compile("[\udc80-\udcff]")


def _has_surrogates(text: str) -> bool:
    return _SURROGATES.search(text) is not None


def printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def other_identifier(report: Sequence[Judgment], identifier: str) -> dict[int, str]:
    """Judgments (by index) of montages of another identifier, with the reason."""
    return {i: f"the montage {j.montage!r} is of identifier {j.key.identifier!r}, not this "
               f"configuration's {identifier!r}: is the report of another job? (set "
               "service.allow_other_identifier = true if it is intended)"
            for i, j in enumerate(report) if j.key.identifier != identifier}


def conflicting_duplicates(report: Sequence[Judgment]) -> dict[int, str]:
    """Judgments (by index) sharing unit and judgment id with another row, with the reason.

    Exact copies are used once (the later copies are problems); copies that differ are
    all problems, so that no version silently wins.
    """
    seen: dict[tuple[str, str], list[int]] = {}
    for i, j in enumerate(report):
        seen.setdefault((j.unit_id, j.judgment_id), []).append(i)
    reasons: dict[int, str] = {}
    for (unit, jid), where in seen.items():
        copies = [report[i] for i in where]
        if all(dict(c.row) == dict(copies[0].row) for c in copies[1:]):
            reasons.update({i: f"an exact copy of row {copies[0].row_number} (used once)"
                            for i in where[1:]})
            continue
        rows = ", ".join(str(c.row_number) for c in copies)
        reasons.update({i: f"conflicting duplicate: rows {rows} all have unit {unit}, "
                           f"judgment {jid} with different content; none is used: ask the "
                           "service for a fresh report" for i in where})
    return reasons
