"""Reports parsed into judgments; broken-link CSVs with the seed notebook's semantics."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cellcrowd.appen.client import AppenClient
from cellcrowd.appen.report import (
    FULL_REPORT_COLUMNS,
    Judgment,
    parse_annotation_url,
    parse_bool,
    read_report,
    still_broken,
    write_broken_link_csvs,
)
from cellcrowd.errors import ReportError
from cellcrowd.layout import MontageKey, WorkingFolder
from cellcrowd.sim.crowd import CrowdConfig, CrowdJob
from cellcrowd.sim.emulator import Emulator

JOB = 1363594
COLUMNS = [*FULL_REPORT_COLUMNS, "annotation", "broken_link", "identifier", "image_url"]


def full_row(unit: str, jid: str, montage: str | None, *, url: str | None = "default",
             broken: str = "false", trust: str = "0.9", tainted: str = "false",
             created: str = "1/28/2016 19:02:18", **extra: str) -> dict[str, str]:
    image_url = f"https://bucket.example/{montage}.png" if montage else "https://x/cat.png"
    if url == "default":
        url = f"https://annotations.example/{jid}.png"
    row = dict.fromkeys(COLUMNS, "")
    row.update({
        "_unit_id": unit, "_id": jid, "_worker_id": f"w{jid}", "_trust": trust,
        "_tainted": tainted, "_golden": "false", "_created_at": created,
        "annotation": "" if url is None else json.dumps({"url": url, "instances": []}),
        "broken_link": broken, "identifier": "exp", "image_url": image_url,
    })
    row.update(extra)
    return row


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


M0, M1, M2 = "exp_x_00_y_00_montage_00", "exp_x_01_y_00_montage_00", "exp_x_1_y_0_montage_2"


def test_full_report_fields(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", [
        full_row("11", "101", M0, trust="0.75", tainted="TRUE"),
        full_row("12", "102", M2, url=None, broken="True", trust=""),
    ])
    report = read_report(path)
    assert report.problems == []
    assert report.columns == tuple(COLUMNS)
    first, second = report
    assert first == Judgment(
        unit_id="11", judgment_id="101", worker_id="w101", trust=0.75, tainted=True,
        golden=False, image_url=f"https://bucket.example/{M0}.png", identifier="exp",
        annotation_url="https://annotations.example/101.png", broken_link=False, montage=M0,
        key=MontageKey("exp", 0, 0, 0), created_at="1/28/2016 19:02:18", row_number=1,
    )
    assert first.row["_id"] == "101"
    assert first.usable
    assert second.montage == M2  # the uploaded (unpadded) name is kept
    assert second.key == MontageKey("exp", 1, 0, 2)
    assert second.trust is None
    assert second.broken_link
    assert second.annotation_url is None
    assert not second.usable


@pytest.mark.parametrize(
    ("text", "expected"),
    [("TRUE", True), ("True", True), ("true", True), ("FALSE", False), ("false", False),
     ("", False), (" 1 ", True), ("0", False), (None, False), (True, True)],
    ids=["TRUE", "True", "true", "FALSE", "false", "empty", "one", "zero", "none", "bool"],
)
def test_booleans_in_any_case(text: object, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('{"url": "https://a/x.png"}', "https://a/x.png"),
        ("https://a/y.png", "https://a/y.png"),
        ('[{"type": "box"}, {"url": "https://a/z.png"}]', "https://a/z.png"),
        ('"https://a/q.png"', "https://a/q.png"),
        ('{"instances": []}', None),
        ('{"url": ""}', None),
        ("", None),
        ({"url": "https://a/d.png"}, "https://a/d.png"),
    ],
    ids=["object", "bare", "list", "json-string", "no-url", "empty-url", "empty", "dict"],
)
def test_annotation_url_forms(cell: object, expected: str | None) -> None:
    assert parse_annotation_url(cell) == expected


def test_missing_column_names_file_column_and_columns(tmp_path: Path) -> None:
    columns = [c for c in COLUMNS if c != "annotation"]
    path = write_csv(tmp_path / "r.csv", [], columns)
    with pytest.raises(ReportError, match=r"r\.csv, column 'annotation': the full report has no "
                       r"'annotation' column; its columns are _unit_id, _created_at") as info:
        read_report(path)
    assert info.value.path == path
    assert info.value.column == "annotation"


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ({"annotation": '{"url": "https://a/x.png"'}, r"row 2 \(unit 2\): column 'annotation': the "
         r"annotation is not valid JSON"),
        ({"_tainted": "maybe"}, r"row 2 \(unit 2\): column '_tainted': 'maybe' is not a boolean"),
        ({"broken_link": "yes please"}, r"row 2 \(unit 2\): column 'broken_link': 'yes please' "
         r"is not"),
        ({"_trust": "high"}, r"row 2 \(unit 2\): column '_trust': 'high' is not a number"),
    ],
    ids=["annotation-json", "tainted", "broken-link", "trust"],
)
def test_malformed_values_name_row_and_column(tmp_path: Path, bad: dict[str, str],
                                              pattern: str) -> None:
    """A malformed value makes its row a problem; the other rows are still used."""
    path = write_csv(tmp_path / "r.csv", [full_row("1", "1", M0), full_row("2", "2", M0, **bad),
                                          full_row("3", "3", M1)])
    report = read_report(path)
    assert [j.judgment_id for j in report] == ["1", "3"]
    [problem] = report.problems
    assert problem.row == 2
    assert re.match(pattern, str(problem))
    # The same row alone: nothing usable, so the report stops, naming the row.
    alone = write_csv(tmp_path / "alone.csv", [full_row("2", "2", M0, **bad)])
    with pytest.raises(ReportError, match=r"alone\.csv: no usable row: all 1 row\(s\) were "
                       r"skipped, the first because " + pattern.replace("row 2", "row 1")) as info:
        read_report(alone)
    assert info.value.path == alone


def test_unusable_rows_are_problems_not_dropped(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "r.csv", [
        full_row("1", "1", M0),
        full_row("2", "2", None),
        full_row("3", "3", M1, url=None),
        full_row("4", "4", M1, url="file:///etc/passwd"),
        full_row("", "5", M1),
    ])
    report = read_report(path)
    assert [j.judgment_id for j in report] == ["1"]
    assert [(p.row, p.judgment_id) for p in report.problems] == [
        (2, "2"), (3, "3"), (4, "4"), (5, "5")]
    reasons = [p.reason for p in report.problems]
    assert "image_url 'https://x/cat.png' is not a montage name" in reasons[0]
    assert "no url and broken_link is false" in reasons[1]
    assert "not an http(s) URL" in reasons[2]
    assert "no unit id" in reasons[3]
    assert "4 row(s) could not be used" in caplog.text
    assert str(report.problems[0]).startswith("row 2 (unit 2): image_url")


def test_aggregated_report(tmp_path: Path) -> None:
    columns = ["_unit_id", "_golden", "_unit_state", "_trusted_judgments", "_last_judgment_at",
               "annotation", "annotation:confidence", "broken_link", "broken_link:confidence",
               "identifier", "image_url"]
    rows = [{"_unit_id": "7", "_golden": "FALSE", "_unit_state": "finalized",
             "_trusted_judgments": "3", "_last_judgment_at": "2/1/2016 10:00:00",
             "annotation": '{"url": "https://a/7.png"}', "annotation:confidence": "0.66",
             "broken_link": "FALSE", "broken_link:confidence": "1", "identifier": "exp",
             "image_url": f"{M1}.png"}]
    (j,) = read_report(write_csv(tmp_path / "a.csv", rows, columns), report_type="aggregated")
    assert (j.unit_id, j.judgment_id, j.worker_id) == ("7", "aggregated", "")
    assert j.trust == pytest.approx(0.66)
    assert j.created_at == "2/1/2016 10:00:00"
    assert j.montage == M1
    assert j.annotation_url == "https://a/7.png"


def json_unit(unit_id: int, judgments: list[dict[str, object]], montage: str = M0) -> str:
    return json.dumps({"id": unit_id, "data": {"identifier": "exp",
                                               "image_url": f"https://b/{montage}.png"},
                       "results": {"judgments": judgments}})


def test_json_lines_report(tmp_path: Path) -> None:
    judgment = {"id": 55, "worker_id": 9, "worker_trust": 0.8, "tainted": False,
                "golden": False, "created_at": "2016-01-28T19:02:18",
                "data": {"annotation": {"url": "https://a/55.png"}, "broken_link": "false"}}
    broken = {"id": 56, "worker_id": 10, "worker_trust": 0.5, "tainted": True,
              "data": {"annotation": "", "broken_link": True}}
    path = tmp_path / "j.csv"
    path.write_text(json_unit(1, [judgment, broken]) + "\n\n" + json_unit(2, [], M1) + "\n")
    report = read_report(path, report_type="json")
    assert [(j.unit_id, j.judgment_id, j.usable, j.tainted) for j in report] == [
        ("1", "55", True, False), ("1", "56", False, True)]
    assert report[0].trust == pytest.approx(0.8)
    assert report[0].row["annotation"] == '{"url":"https://a/55.png"}'
    assert report[0].row["image_url"] == f"https://b/{M0}.png"
    assert [(p.row, p.reason) for p in report.problems] == [(3, "the unit has no judgments yet")]
    assert report.columns[: len(FULL_REPORT_COLUMNS)] == FULL_REPORT_COLUMNS


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("{not json", r"row 1: not valid JSON"),
        ("[1, 2]", r"row 1: expected a JSON object per line, got list"),
        ('{"id": 1, "data": {}}', r"row 1: column 'results': the unit has no valid 'results'; "
                                  r"its keys are id, data"),
        ('{"id": 1, "data": {}, "results": {}}', r"column 'results.judgments': the unit has no "
                                                 r"results.judgments list"),
        ('{"id": 1, "data": {}, "results": {"judgments": [3]}}', r"a judgment is int"),
    ],
    ids=["json", "not-object", "no-results", "no-judgments", "judgment-not-object"],
)
def test_malformed_json_lines(tmp_path: Path, line: str, pattern: str) -> None:
    path = tmp_path / "j.csv"
    path.write_text(line + "\n")
    with pytest.raises(ReportError, match="no usable row.*" + pattern):
        read_report(path, report_type="json")
    # Beside a good unit, the bad line is a problem and the good one is used.
    good = {"id": 55, "data": {"annotation": {"url": "https://a/55.png"}}}
    path.write_text(line + "\n" + json_unit(1, [good]) + "\n")
    report = read_report(path, report_type="json")
    assert [j.judgment_id for j in report] == ["55"]
    assert [p.row for p in report.problems] == [1]
    assert re.search(pattern, str(report.problems[0]))


def test_unreadable_reports(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="report not found: download it first"):
        read_report(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ReportError, match="the report is empty"):
        read_report(tmp_path / "empty.csv")
    (tmp_path / "zip.csv").write_bytes(b"PK\x03\x04\xff\xfe\x00")
    with pytest.raises(ReportError, match="this is a zip, not the report inside it"):
        read_report(tmp_path / "zip.csv")
    with pytest.raises(ValueError, match="report type 'workset' holds no judgments"):
        read_report(tmp_path / "empty.csv", report_type="workset")


# -- broken links -------------------------------------------------------------------------------


def test_broken_row_reuploaded_and_later_annotated(tmp_path: Path) -> None:
    """M0 broken, re-uploaded (new unit), annotated later; M1 stays broken (two workers)."""
    wf = WorkingFolder(tmp_path, "exp")
    rows = [
        full_row("1", "10", M0, url=None, broken="true"),
        full_row("2", "20", M1, url=None, broken="TRUE", _ip="1.2.3.4"),
        full_row("2", "21", M1, url=None, broken="true", _ip="5.6.7.8"),
        full_row("3", "30", M2),
        full_row("4", "40", M0, created="1/29/2016 10:00:00"),  # the re-uploaded row
    ]
    report_csv = write_csv(wf.report_csv(JOB, "full"), rows)
    report = read_report(report_csv)
    assert still_broken(report) == [M1]
    assert write_broken_link_csvs(report, report_csv, wf, JOB) == [M1]

    broken_csv = wf.broken_links_csv(JOB, "full")
    assert broken_csv.name == f"job_{JOB}_full_report_broken_links.csv"
    with broken_csv.open(newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert [r["_id"] for r in listed] == ["20", "21"]  # every broken row of M1, none of M0
    assert list(listed[0]) == COLUMNS  # all columns, in the report's order
    assert [r["_ip"] for r in listed] == ["1.2.3.4", "5.6.7.8"]
    reupload = wf.reupload_csv(JOB)
    assert reupload.read_text() == f"identifier,image_url\nexp,https://bucket.example/{M1}.png\n"

    # M1 re-uploaded and annotated too: nothing is broken, the old lists go away
    rows.append(full_row("5", "50", M1))
    write_csv(report_csv, rows)
    assert write_broken_link_csvs(read_report(report_csv), report_csv, wf, JOB) == []
    assert not broken_csv.exists()
    assert not reupload.exists()


def test_no_broken_links_writes_nothing(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    report_csv = write_csv(wf.report_csv(JOB, "full"), [full_row("1", "1", M0)])
    assert write_broken_link_csvs(read_report(report_csv), report_csv, wf, JOB) == []
    assert sorted(p.name for p in wf.csv.iterdir()) == [report_csv.name]


def test_report_type_from_the_file_name(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    path = tmp_path / "j.csv"
    path.write_text(json_unit(1, [{"id": 5, "data": {"broken_link": True}}]) + "\n")
    report = read_report(path, report_type="json")
    assert write_broken_link_csvs(report, path, wf, JOB) == [M0]
    assert wf.broken_links_csv(JOB, "json").exists()
    named = wf.report_csv(JOB, "aggregated")
    named.write_text("x")
    assert write_broken_link_csvs(list(report), named, wf, JOB) == [M0]
    assert wf.broken_links_csv(JOB, "aggregated").exists()


# -- reports served by the emulator --------------------------------------------------------------


def test_emulated_reports_agree(
    job_factory: Callable[..., CrowdJob], api_key: str, tmp_path: Path,
) -> None:
    job = job_factory(15, config=CrowdConfig(broken_share=0.2, tainted_share=0.3), seed=4)
    wf = WorkingFolder(tmp_path, "exp")
    with Emulator(job, api_key=api_key, report_polls=0) as emu, AppenClient(
            api_key, base_url=emu.url) as client:
        reports = {t: read_report(client.download_report(JOB, wf.report_csv(JOB, t),
                                                         report_type=t), report_type=t)
                   for t in ("full", "json", "aggregated")}
    full, lines, aggregated = reports["full"], reports["json"], reports["aggregated"]
    assert full.problems == []
    assert len(full) == len(job.judgments)
    assert {(j.unit_id, j.judgment_id) for j in full} == {
        (str(j.unit_id), str(j.judgment_id)) for j in job.judgments}

    def facts(j: Judgment) -> tuple[object, ...]:
        return (j.unit_id, j.judgment_id, j.worker_id, j.trust, j.tainted, j.annotation_url,
                j.broken_link, j.montage)

    assert sorted(map(facts, lines)) == sorted(map(facts, full))
    assert len(aggregated) == len(job.units)
    # the re-uploaded unit makes its montage good again, in every report type
    reuploaded = job.units[-1].montage
    assert sum(u.montage == reuploaded for u in job.units) == 2
    assert reuploaded not in still_broken(full)
    assert still_broken(full) == still_broken(lines)
    expected = sorted({job.units_by_id[j.unit_id].montage for j in job.judgments
                       if j.broken_link} - {job.units_by_id[j.unit_id].montage
                                            for j in job.judgments if not j.broken_link})
    assert still_broken(full) == expected
