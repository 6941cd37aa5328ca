"""Annotation downloads from the emulator: concurrent, verified, resumable, under faults."""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.appen.client import AppenClient
from cellcrowd.appen.report import Judgment, Report, read_report, still_broken
from cellcrowd.download import download_annotations, expected_montage_shape
from cellcrowd.errors import AuthenticationError
from cellcrowd.geometry import TileGrid
from cellcrowd.layout import WorkingFolder, parse_montage_name
from cellcrowd.logs import ChopperLog, MontageLog, write_log
from cellcrowd.notebook import download_and_unzip, save_annotations_from_csv
from cellcrowd.sim.crowd import CrowdConfig, CrowdJob, encode_png
from cellcrowd.sim.emulator import Emulator, Faults

JOB = 1363594


def fetch_report(emu: Emulator, key: str, wf: WorkingFolder) -> Report:
    with AppenClient(key, base_url=emu.url, sleep=lambda s: None) as client:
        return read_report(client.download_report(JOB, wf.report_csv(JOB)))


def client_for(emu: Emulator, key: str, **kw: object) -> AppenClient:
    options: dict[str, object] = {"sleep": lambda s: None, "max_retries": 6, "timeout": 10.0}
    options.update(kw)
    return AppenClient(key, base_url=emu.url, **options)  # type: ignore[arg-type]


def annotation_bytes(job: CrowdJob) -> dict[str, bytes]:
    return {str(j.judgment_id): j.annotation for j in job.judgments
            if j.annotation is not None}


@pytest.fixture(scope="module")
def big_job(job_factory: Callable[..., CrowdJob]) -> CrowdJob:
    """110 units x 3 workers: over 300 annotations."""
    return job_factory(110, config=CrowdConfig(workers_per_unit=(3, 3), broken_share=0.03),
                       seed=11)


def test_300_annotations_under_faults_then_a_rerun_without_requests(
    big_job: CrowdJob, api_key: str, tmp_path: Path,
) -> None:
    faults = Faults(error_rate=0.08, burst_rate=0.05, retry_after=2, truncate_rate=0.05,
                    drop_rate=0.05, seed=1)
    wf = WorkingFolder(tmp_path, "exp")
    sleeps: list[float] = []
    expected = annotation_bytes(big_job)
    assert len(expected) >= 300
    with Emulator(big_job, api_key=api_key, faults=faults) as emu:
        report = fetch_report(emu, api_key, wf)
        with client_for(emu, api_key, sleep=sleeps.append) as client:
            result = download_annotations(report, wf, job_id=JOB, client=client,
                                          concurrency=16, expected_shape=(64, 64))
        for kind in ("fault_5xx", "fault_429", "fault_truncate", "fault_drop"):
            assert emu.counts[kind] > 0, kind  # every kind of fault really happened
        assert 42.0 not in sleeps
        assert 2.0 in sleeps  # Retry-After honoured
        assert result.failed == 0
        assert result.failures == []
        assert result.failures_csv is None
        assert not wf.failures_csv(JOB).exists()
        assert result.requested == result.downloaded == len(expected)
        for j in report:
            if j.usable:
                path = wf.judgment_path(j.montage, j.unit_id, j.judgment_id)
                assert path.read_bytes() == expected[j.judgment_id]
        montages = {j.montage for j in report}
        assert set(result.chosen) == montages - set(result.broken)
        assert all(wf.annotation_path(m).exists() for m in result.chosen)
        assert len(result.multiple) > 50  # three workers per unit

        before = emu.counts["annotation"]
        with client_for(emu, api_key) as client:
            again = download_annotations(report, wf, job_id=JOB, client=client,
                                         expected_shape=(64, 64))
        assert emu.counts["annotation"] == before  # not one annotation request
    assert again.skipped_existing == len(expected)
    assert again.downloaded == 0
    assert again.chosen == result.chosen


def test_chosen_judgment_rule(small_job: CrowdJob, emulator: Emulator, api_key: str,
                              tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    good = [j for j in fetch_report(emulator, api_key, wf) if j.usable][:5]
    montage, key = good[0].montage, good[0].key

    def as_(j: Judgment, **kw: object) -> Judgment:
        return dataclasses.replace(j, montage=montage, key=key, **kw)  # type: ignore[arg-type]

    candidates = [
        as_(good[0], tainted=True, trust=0.99, created_at="1/5/2016 10:00:00"),
        as_(good[1], tainted=False, trust=0.80, created_at="1/1/2016 10:00:00"),
        as_(good[2], tainted=False, trust=0.80, created_at="1/2/2016 09:00:00"),
        as_(good[3], tainted=False, trust=0.70, created_at="1/9/2016 10:00:00"),
        as_(good[4], tainted=False, trust=None, created_at="1/9/2016 11:00:00"),
    ]
    with client_for(emulator, api_key) as client:
        result = download_annotations(candidates, wf, job_id=JOB, client=client)
    chosen = result.chosen[montage]
    assert (chosen.unit, chosen.judgment) == (good[2].unit_id, good[2].judgment_id)
    assert chosen.candidates == 5
    assert result.multiple == {montage: 5}
    expected = annotation_bytes(small_job)[good[2].judgment_id]
    assert wf.annotation_path(montage).read_bytes() == expected
    assert chosen.path.read_bytes() == expected


def test_single_judgment_units_and_broken_montages(
    job_factory: Callable[..., CrowdJob], api_key: str, tmp_path: Path,
) -> None:
    job = job_factory(12, config=CrowdConfig(workers_per_unit=(1, 2), broken_share=0.4),
                      seed=3)
    wf = WorkingFolder(tmp_path, "exp")
    done: list[int] = []
    with Emulator(job, api_key=api_key) as emu, client_for(emu, api_key) as client:
        report = fetch_report(emu, api_key, wf)
        result = download_annotations(report, wf, job_id=JOB, client=client,
                                      progress=done.append)
    assert sum(done) == result.requested == sum(j.usable for j in report)
    per_montage = {m: sum(j.usable for j in report if j.montage == m)
                   for m in {j.montage for j in report}}
    assert result.multiple == {m: n for m, n in per_montage.items() if n > 1}
    assert result.broken == sorted(m for m, n in per_montage.items() if n == 0)
    assert result.broken  # the small job has broken-link montages
    for m in result.broken:
        assert not wf.annotation_path(m).exists()
    assert result.missing == []
    files = sorted(p.name for p in wf.judgments.iterdir())
    assert len(files) == result.requested  # one file per judgment, none overwritten
    singles = [m for m, n in per_montage.items() if n == 1]
    assert singles
    assert len(singles) < len(result.chosen)
    for m, chosen in result.chosen.items():
        assert wf.annotation_path(m).read_bytes() == chosen.path.read_bytes()
    # A rerun finds every judgment in place and restores an annotation changed since.
    wf.annotation_path(singles[0]).write_bytes(b"edited")
    with Emulator(job, api_key=api_key) as emu, client_for(emu, api_key) as client:
        again = download_annotations(report, wf, job_id=JOB, client=client)
    assert again.skipped_existing == result.requested
    assert again.downloaded == 0
    chosen = result.chosen[singles[0]].path
    assert wf.annotation_path(singles[0]).read_bytes() == chosen.read_bytes()


def test_failures_are_recorded_and_the_run_goes_on(
    small_job: CrowdJob, api_key: str, tmp_path: Path,
) -> None:
    good = [j for j in small_job.judgments if j.annotation is not None]
    html, small, gone = good[0], good[1], good[2]
    tiny = encode_png(np.zeros((32, 32, 4), np.uint8))
    changed = dataclasses.replace(small_job, judgments=tuple(
        dataclasses.replace(j, annotation=b"<html>expired</html>") if j is html else
        dataclasses.replace(j, annotation=tiny) if j is small else j
        for j in small_job.judgments))
    wf = WorkingFolder(tmp_path, "exp")
    with Emulator(changed, api_key=api_key, missing_annotations={gone.judgment_id}) as emu:
        port = int(emu.url.split(":")[2].split("/")[0])
        report = fetch_report(emu, api_key, wf)
        with client_for(emu, api_key) as client:
            result = download_annotations(report, wf, job_id=JOB, client=client,
                                          expected_shape=(64, 64))
    assert result.failed == 3
    assert result.downloaded == len(good) - 3
    with wf.failures_csv(JOB).open(newline="") as fh:
        rows = {r["judgment"]: r for r in csv.DictReader(fh)}
    assert list(next(iter(rows.values()))) == ["montage", "unit", "judgment", "url", "reason"]
    assert "is not a PNG (starts b'<html>" in rows[str(html.judgment_id)]["reason"]
    assert ("is 32x32 pixels but the montages of this job are 64x64"
            in rows[str(small.judgment_id)]["reason"])
    assert "HTTP 404" in rows[str(gone.judgment_id)]["reason"]
    assert rows[str(gone.judgment_id)]["url"].endswith(f"/judgments/{gone.judgment_id}"
                                                       "/annotation.png")
    for j in (html, small, gone):
        unit = small_job.units_by_id[j.unit_id]
        assert not wf.judgment_path(unit.montage, j.unit_id, j.judgment_id).exists()
    assert not list(wf.judgments.glob(".*"))  # no temporary files left behind

    # the service is fixed: a rerun fetches only the three and removes the failures CSV
    with Emulator(small_job, api_key=api_key, port=port) as emu, client_for(
            emu, api_key) as client:
        again = download_annotations(report, wf, job_id=JOB, client=client)
        assert emu.counts["annotation"] == 3
    assert (again.downloaded, again.failed) == (3, 0)
    assert not wf.failures_csv(JOB).exists()


def test_retries_run_out_and_are_recorded(small_job: CrowdJob, api_key: str,
                                          tmp_path: Path) -> None:
    faults = Faults(error_rate=1.0, max_faults_per_path=100, kinds=frozenset({"annotation"}))
    wf = WorkingFolder(tmp_path, "exp")
    with Emulator(small_job, api_key=api_key, faults=faults) as emu:
        report = fetch_report(emu, api_key, wf)
        with client_for(emu, api_key, max_retries=1) as client:
            result = download_annotations(report, wf, job_id=JOB, client=client)
    assert result.failed == result.requested > 0
    assert result.missing == sorted({j.montage for j in report if j.usable})
    assert all("gave up after 2 attempts" in f.reason for f in result.failures)
    assert len(wf.failures_csv(JOB).read_text().splitlines()) == result.failed + 1


def test_damaged_files_are_fetched_again(small_job: CrowdJob, emulator: Emulator,
                                         api_key: str, tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    report = fetch_report(emulator, api_key, wf)
    with client_for(emulator, api_key) as client:
        download_annotations(report, wf, job_id=JOB, client=client)
    usable = [j for j in report if j.usable]
    cut = wf.judgment_path(usable[0].montage, usable[0].unit_id, usable[0].judgment_id)
    cut.write_bytes(cut.read_bytes()[:-20])
    junk = wf.judgment_path(usable[1].montage, usable[1].unit_id, usable[1].judgment_id)
    junk.write_bytes(b"junk")
    before = emulator.counts["annotation"]
    with client_for(emulator, api_key) as client:
        again = download_annotations(report, wf, job_id=JOB, client=client)
    assert emulator.counts["annotation"] - before == 2
    assert (again.downloaded, again.skipped_existing) == (2, len(usable) - 2)
    expected = annotation_bytes(small_job)
    assert cut.read_bytes() == expected[usable[0].judgment_id]
    assert junk.read_bytes() == expected[usable[1].judgment_id]


def test_storage_hosts_get_no_key(small_job: CrowdJob, api_key: str, tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    with Emulator(small_job, api_key=api_key, annotations_on_storage=True) as emu:
        report = fetch_report(emu, api_key, wf)
        with client_for(emu, api_key, auth="query") as client:
            result = download_annotations(report, wf, job_id=JOB, client=client)
    assert result.downloaded == result.requested == len(emu.storage_requests) > 0
    for seen in emu.storage_requests:
        assert "authorization" not in seen.headers
        assert "key" not in seen.query
        assert api_key not in str(seen)


def test_a_refused_key_stops_the_run(small_job: CrowdJob, emulator: Emulator, api_key: str,
                                     tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    report = fetch_report(emulator, api_key, wf)
    with client_for(emulator, "not-the-key") as client, pytest.raises(
            AuthenticationError, match=r"annotation of exp_x_.* refused the API key"):
        download_annotations(report, wf, job_id=JOB, client=client, concurrency=2)
    assert not wf.judgments.exists() or not any(wf.judgments.glob("*.png"))


def test_key_leaks_nowhere(big_job: CrowdJob, api_key: str, tmp_path: Path,
                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    faults = Faults(error_rate=0.1, truncate_rate=0.05, drop_rate=0.05, seed=2)
    wf = WorkingFolder(tmp_path, "exp")
    some = [j for j in big_job.judgments if j.annotation is not None][:3]
    with Emulator(big_job, api_key=api_key, faults=faults,
                  missing_annotations={j.judgment_id for j in some}) as emu:
        with client_for(emu, api_key, auth="query") as client:
            report = read_report(client.download_report(JOB, wf.report_csv(JOB)))
            result = download_annotations(report[:60], wf, job_id=JOB, client=client)
        assert any(r.query.get("key") == [api_key] for r in emu.api_requests)
    assert result.failed >= 1
    assert "HTTP Request: GET" in caplog.text
    assert api_key not in caplog.text
    assert all(api_key not in f"{f.reason} {f.url}" for f in result.failures)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path


def test_client_from_the_environment(small_job: CrowdJob, emulator: Emulator, api_key: str,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    report = fetch_report(emulator, api_key, wf)
    monkeypatch.setenv("CELLCROWD_API_URL", emulator.url)
    monkeypatch.setenv("CELLCROWD_API_KEY", api_key)
    result = download_annotations(report, wf, job_id=JOB, concurrency=4)
    assert result.downloaded == result.requested > 0
    with pytest.raises(ValueError, match="concurrency must be at least 1, got 0"):
        download_annotations(report, wf, job_id=JOB, concurrency=0)


def test_expected_montage_shape_from_logs(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    assert expected_montage_shape(wf) is None  # no logs yet
    grid = TileGrid.for_frame((100, 100), num_x=2, num_y=2, overlap_perc=10)
    write_log(ChopperLog.from_grid(grid, identifier="exp", num_images=6), wf.chopper_log)
    write_log(MontageLog(identifier="exp", montage_len=3, num_x_segments=2, num_y_segments=2,
                         row_length=2, x_buffer=1, y_buffer=2, montages_in_pos=2),
              wf.montage_log)
    th, tw = grid.tile_shape
    assert expected_montage_shape(wf) == (2 * th + 3 * 2, 2 * tw + 3 * 1)


def test_notebook_steps_1_and_2(job_factory: Callable[..., CrowdJob], api_key: str,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_factory(12, config=CrowdConfig(workers_per_unit=(1, 2), broken_share=0.4),
                      seed=3)
    with Emulator(job, api_key=api_key, report_polls=0) as emu:
        monkeypatch.setenv("CELLCROWD_API_URL", emu.url)
        monkeypatch.setenv("APPEN_API_KEY", api_key)
        csv_path = download_and_unzip(JOB, tmp_path)
        assert csv_path == tmp_path / "CSV" / f"job_{JOB}_full_report.csv"
        broken = save_annotations_from_csv(csv_path, tmp_path / "exp_annotations")
    # The original's answer, from the CSV itself: image_url of each broken row whose
    # image no row annotated, in report order.
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    fixed = {r["image_url"] for r in rows if r["broken_link"].lower() != "true"}
    assert broken == [r["image_url"] for r in rows
                      if r["broken_link"].lower() == "true" and r["image_url"] not in fixed]
    assert broken
    assert all(url.startswith("http") for url in broken)
    report = read_report(csv_path)
    names = still_broken(report)
    assert sorted({parse_montage_name(u) for u in broken}) == sorted(
        parse_montage_name(n) for n in names)
    wf = WorkingFolder(tmp_path, "exp")
    assert wf.reupload_csv(JOB).read_text().count("\n") == len(names) + 1
    for montage in {j.montage for j in report} - set(names):
        assert wf.annotation_path(montage).exists()
    assert not any(wf.annotation_path(m).exists() for m in names)


def test_notebook_step_2_without_broken_links(
    job_factory: Callable[..., CrowdJob], api_key: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = job_factory(4, config=CrowdConfig(workers_per_unit=(1, 1), broken_share=0.0),
                      seed=5)
    with Emulator(job, api_key=api_key, report_polls=0) as emu:
        monkeypatch.setenv("CELLCROWD_API_URL", emu.url)
        monkeypatch.setenv("APPEN_API_KEY", api_key)
        csv_path = download_and_unzip(JOB, tmp_path)
        assert save_annotations_from_csv(csv_path, tmp_path / "exp_annotations") == []
    assert len(list((tmp_path / "exp_annotations").glob("*_annotation.png"))) == 4


def test_a_symlinked_judgment_file_is_refused_after_plain_ones(
        small_job: CrowdJob, emulator: Emulator, api_key: str, tmp_path: Path) -> None:
    """The folder check is made once per folder; a symbolic link in it is still refused."""
    wf = WorkingFolder(tmp_path / "work", "exp")
    usable = [j for j in fetch_report(emulator, api_key, wf) if j.usable]
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    evil = usable[-1]
    link = wf.judgment_path(evil.montage, evil.unit_id, evil.judgment_id)
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with client_for(emulator, api_key) as client:
        result = download_annotations(usable, wf, job_id=JOB, client=client, concurrency=1)
    assert (result.failed, result.downloaded) == (1, len(usable) - 1)
    assert "refusing to write or delete outside the working folder" in result.failures[0].reason
    assert result.failures[0].judgment == str(evil.judgment_id)
    assert outside.read_bytes() == b"keep"
    assert link.is_symlink()


def test_downloads_are_synced_once_at_the_end(small_job: CrowdJob, emulator: Emulator,
                                              api_key: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No fsync per file while downloading; every file written is synced before return."""
    import os

    from cellcrowd import files

    wf = WorkingFolder(tmp_path, "exp")
    report = [j for j in fetch_report(emulator, api_key, wf) if j.usable][:6]
    synced: list[str] = []
    placed: list[int] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        placed.append(len(synced))  # how many syncs came before this file was in place
        real_replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced files")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    with client_for(emulator, api_key) as client:
        result = download_annotations(report, wf, job_id=JOB, client=client)
    assert result.downloaded == len(report)
    assert placed
    assert set(placed) == {0}  # nothing synced while the files were written
    written = {str(j.path.resolve()) for j in result.chosen.values()}
    written |= {str(wf.annotation_path(m).resolve()) for m in result.chosen}
    written |= {str(wf.judgment_path(j.montage, j.unit_id, j.judgment_id).resolve())
                for j in report}
    assert written <= set(synced)
    assert str(wf.annotations.resolve()) in synced  # and their folder
