"""The upload CSV's format, ``identifier,image_url``, written in one place.

The service takes units as rows of this CSV: the montages to annotate
(``CSV/{id}_upload.csv``, :func:`cellcrowd.prepare.prepare`) and rows to upload again
(``job_{id}_reupload.csv`` for broken links, ``job_{id}_review.csv`` and
``job_{id}_resend.csv`` for units that need another judgment). One header line, one
line per row, ``\\n`` line ends.

>>> print(upload_csv_text([("exp", "https://host/exp_x_00_y_00_montage_0.png")]), end="")
identifier,image_url
exp,https://host/exp_x_00_y_00_montage_0.png
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from .files import atomic_write_text

__all__ = ["UPLOAD_COLUMNS", "upload_csv_text", "write_upload_csv"]

#: The columns of an upload CSV.
UPLOAD_COLUMNS = ("identifier", "image_url")


def upload_csv_text(rows: Iterable[tuple[str, str]]) -> str:
    """The CSV text of ``(identifier, image_url)`` rows, header first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(UPLOAD_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def write_upload_csv(path: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """Write ``(identifier, image_url)`` rows to ``path`` atomically; return the path."""
    return atomic_write_text(path, upload_csv_text(rows))
