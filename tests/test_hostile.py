"""Hostile and broken inputs: nothing escapes the working folder, one bad row or image
never stops the job (issue 9). Reports and images are served by the emulator."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.appen.client import AppenClient
from cellcrowd.appen.report import read_report, write_problems_csv
from cellcrowd.download import download_annotations
from cellcrowd.errors import InputError, ReportError, UnsafePathError
from cellcrowd.files import (
    atomic_write_text,
    check_inside,
    confine,
    image_header,
    read_image,
    remove_file,
)
from cellcrowd.layout import WorkingFolder
from cellcrowd.sim.crowd import CrowdJob, encode_png
from cellcrowd.sim.emulator import Emulator
from cellcrowd.sim.faults import append_rows, bomb_png, damaged_png, hostile_rows

JOB = 1363594


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.txt", "a/../../outside.txt", "/tmp/../{out}"])
def test_guard_refuses_paths_that_climb_out(tmp_path: Path, name: str) -> None:
    base, outside = tmp_path / "work", tmp_path / "outside.txt"
    base.mkdir()
    target = base / name.format(out=outside.relative_to("/"))
    with confine(base), pytest.raises(UnsafePathError, match=r"refusing to write or delete "
                                      r"outside the working folder .*; it came from row 7"):
        check_inside(target, source="row 7")
    with confine(base), pytest.raises(UnsafePathError, match=r"outside\.txt"):
        atomic_write_text(target, "x")
    assert not outside.exists()
    outside.write_text("keep")
    with confine(base), pytest.raises(UnsafePathError, match="resolves to"):
        remove_file(target)
    assert outside.read_text() == "keep"


def test_guard_follows_symlinks_and_allows_the_inside(tmp_path: Path) -> None:
    base, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    base.mkdir()
    elsewhere.mkdir()
    (base / "link").symlink_to(elsewhere, target_is_directory=True)
    with confine(base):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            atomic_write_text(base / "link" / "a.txt", "x")
        assert atomic_write_text(base / "sub" / "b.txt", "y").read_text() == "y"
        assert remove_file(base / "sub" / "b.txt")
        assert not remove_file(base / "sub" / "b.txt")
    assert list(elsewhere.iterdir()) == []
    # Two runs in one process: each one's folder is allowed, nothing else.
    with confine(base), confine(elsewhere):
        atomic_write_text(base / "c.txt", "c")
        atomic_write_text(elsewhere / "d.txt", "d")
        with pytest.raises(UnsafePathError, match=r"e\.txt"):
            atomic_write_text(tmp_path / "e.txt", "e")
    # Without a confined folder (library use outside a run) nothing is refused.
    assert check_inside(tmp_path / "x" / ".." / "y") == tmp_path / "x" / ".." / "y"


# -- hostile report rows --------------------------------------------------------------------


@pytest.fixture
def served(small_job: CrowdJob, api_key: str) -> Iterator[Emulator]:
    with Emulator(small_job, api_key=api_key) as emu:
        yield emu


def _hostile_report(emu: Emulator, api_key: str, wf: WorkingFolder) -> tuple[Path, list[Any]]:
    """Download the job's full report, append the hostile rows, serve and fetch it again."""
    _, member = emu.report_member(JOB, "full")
    template = next(csv.DictReader(io.StringIO(member.decode())))
    good_url = json.loads(template["annotation"])["url"]
    rows = hostile_rows(template, good_url)
    emu.replace_report(JOB, "full", append_rows(member, rows))
    with AppenClient(api_key, base_url=emu.url, sleep=lambda s: None) as client:
        return client.download_report(JOB, wf.report_csv(JOB)), rows


def test_every_hostile_row_is_a_named_problem_and_the_rest_is_used(
    served: Emulator, api_key: str, small_job: CrowdJob, tmp_path: Path,
) -> None:
    wf = WorkingFolder(tmp_path / "work", "exp")
    path, rows = _hostile_report(served, api_key, wf)
    report = read_report(path, identifier="exp")
    assert len(report) == len(small_job.judgments)  # every good row is still used
    assert len(report.problems) == len(rows)
    for problem, row in zip(report.problems, rows, strict=True):
        assert row.reason in problem.reason, (row.name, problem)
    latin = next(p for p, r in zip(report.problems, rows, strict=True) if r.name == "latin-1")
    assert "Montr\ufffdal" in latin.reason  # decoded as far as possible, the column named
    assert "'_city'" in latin.reason
    csv_path = write_problems_csv(report, wf, JOB)
    assert csv_path == wf.report_problems_csv(JOB)
    with csv_path.open(newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert [r["reason"] for r in listed] == [p.reason for p in report.problems]


def test_exact_duplicates_are_used_once_and_reported(tmp_path: Path, served: Emulator) -> None:
    _, member = served.report_member(JOB, "full")
    lines = member.decode().splitlines(keepends=True)
    path = tmp_path / "r.csv"
    path.write_text("".join([*lines, lines[1]]))
    report = read_report(path)
    assert len(report) == len(lines) - 1
    [problem] = report.problems
    assert problem.reason == "an exact copy of row 1 (used once)"


def test_a_report_of_another_identifier_is_refused_unless_allowed(
    served: Emulator, tmp_path: Path,
) -> None:
    _, member = served.report_member(JOB, "full")
    path = tmp_path / "r.csv"
    path.write_bytes(member)
    with pytest.raises(ReportError, match=r"no usable row: .* is of identifier 'exp', not this "
                       r"configuration's 'other'.*set service.allow_other_identifier = true"):
        read_report(path, identifier="other")
    allowed = read_report(path, identifier="other", allow_other_identifier=True)
    assert len(allowed) == len(read_report(path)) > 0


# -- hostile images -------------------------------------------------------------------------


def test_a_bomb_and_a_damaged_png_are_failed_units_and_the_rest_is_downloaded(
    small_job: CrowdJob, api_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    good = [j for j in small_job.judgments if j.annotation is not None]
    bomb, damaged = good[0], good[1]
    assert damaged.annotation is not None
    job = dataclasses.replace(small_job, judgments=tuple(
        dataclasses.replace(j, annotation=bomb_png()) if j is bomb else
        dataclasses.replace(j, annotation=damaged_png(damaged.annotation)) if j is damaged
        else j for j in small_job.judgments))
    wf = WorkingFolder(tmp_path, "exp")
    with Emulator(job, api_key=api_key) as emu, AppenClient(
            api_key, base_url=emu.url, sleep=lambda s: None) as client:
        report = read_report(client.download_report(JOB, wf.report_csv(JOB)))
        before = emu.counts["annotation"]
        # montage size unknown (no logs): the pixel limit applies
        result = download_annotations(report, wf, job_id=JOB, client=client)
        fetched = emu.counts["annotation"] - before
        # A limit above the bomb's size still never crashes: PIL's guard makes a failed unit.
        again = download_annotations([j for j in report if j.judgment_id == str(
            bomb.judgment_id)], wf, job_id=JOB, client=client, max_pixels=10**9)
    assert result.failed == 2
    assert result.downloaded == len(good) - 2
    reasons = {f.judgment: f.reason for f in result.failures}
    assert "more than the limit of" in reasons[str(bomb.judgment_id)]
    assert "20000x20000" in reasons[str(bomb.judgment_id)]
    assert "the service sent a damaged image twice" in reasons[str(damaged.judgment_id)]
    assert "overloaded" not in reasons[str(damaged.judgment_id)]
    assert fetched == len(good) + 1  # the damaged image was fetched twice, nothing else
    assert again.failed == 1
    assert "decompression bomb" in again.failures[0].reason


def test_read_image_checks_the_header_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert image_header(path) == ((20_000, 20_000), "bool")
    with pytest.raises(InputError, match=r"bomb\.png: the image is 20000x20000: more than "
                       r"\d+ pixels, refusing to decode it"):
        read_image(path)
    tif = tmp_path / "big.tif"
    import tifffile

    tifffile.imwrite(tif, np.zeros((64, 64), np.uint16))
    assert image_header(tif) == ((64, 64), "uint16")
    with pytest.raises(InputError, match=r"big\.tif: the image is 64x64: more than 100 pixels"):
        read_image(tif, max_pixels=100)
    (tmp_path / "cut.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8))[:20])
    with pytest.raises(InputError, match=r"cut\.png: cannot read this image's header"):
        read_image(tmp_path / "cut.png")


def test_a_judgment_whose_file_would_leave_the_folder_is_a_failed_unit(
    served: Emulator, api_key: str, tmp_path: Path,
) -> None:
    """Defence in depth: even a Judgment built by hand (not read from a report) cannot
    make fetch write outside the working folder; the failure names the report row."""
    wf = WorkingFolder(tmp_path / "work", "exp")
    with AppenClient(api_key, base_url=served.url, sleep=lambda s: None) as client:
        report = read_report(client.download_report(JOB, wf.report_csv(JOB)))
        good = next(j for j in report if j.usable)
        evil = dataclasses.replace(good, montage="../../evil_x_0_y_0_montage_0")
        result = download_annotations([evil, good], wf, job_id=JOB, client=client)
    assert (result.failed, result.downloaded) == (1, 1)
    [failure] = result.failures
    assert "refusing to write or delete outside the working folder" in failure.reason
    assert f"report row {good.row_number} (unit {good.unit_id}" in failure.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
