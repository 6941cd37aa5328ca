from __future__ import annotations

import pytest

from cellcrowd.errors import DownloadError, InputError, ServiceError, redact


def test_input_error_names_file_row_and_column() -> None:
    err = InputError("bad value 'x'", path="a.csv", row=3, column="broken_link")
    assert str(err) == "a.csv, row 3, column 'broken_link': bad value 'x'"
    assert isinstance(err, ValueError)
    assert (err.row, err.column) == (3, "broken_link")


@pytest.mark.parametrize(
    "text",
    [
        "https://api.appen.com/v1/jobs/1.csv?key=SECRET123&type=full",
        "https://api.appen.com/v1/jobs/1.csv?type=full&api_key=SECRET123",
        "Authorization: Token token=SECRET123",
        "unexpected SECRET123 in body",
    ],
    ids=["query-first", "query-later", "header", "anywhere"],
)
def test_redact_removes_the_key(text: str) -> None:
    assert "SECRET123" not in redact(text, "SECRET123")


def test_service_errors_redact_urls() -> None:
    err = ServiceError("GET https://h/v1/x?key=SECRET1 failed", url="https://h/v1/x?key=SECRET1")
    assert "SECRET1" not in str(err)
    assert err.url is not None
    assert "SECRET1" not in err.url
    dl = DownloadError("failed", url="https://h/a.png?key=SECRET2", unit="42")
    assert "SECRET2" not in dl.url
    assert dl.unit == "42"
