"""The emulator (spoken to with plain httpx) and the simulated crowd behind it."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cellcrowd.appen.client import AppenClient
from cellcrowd.appen.report import FULL_REPORT_COLUMNS, read_report
from cellcrowd.download import download_annotations
from cellcrowd.errors import InputError
from cellcrowd.files import read_image
from cellcrowd.labels import decode_annotation
from cellcrowd.layout import WorkingFolder
from cellcrowd.prepare import prepare
from cellcrowd.sim.crowd import (
    CrowdConfig,
    CrowdJob,
    SourceRow,
    crowd_from_folder,
    read_upload_csv,
    simulate_crowd,
)
from cellcrowd.sim.emulator import Emulator, Faults, serve_forever, serve_job_from_folder
from cellcrowd.sim.synthetic import synthetic_movie, write_movie_frames

JOB = 1363594


def get(emu: Emulator, path: str, key: str | None, method: str = "GET") -> httpx.Response:
    headers = {"Authorization": f"Token token={key}"} if key else {}
    return httpx.request(method, f"{emu.url}{path}", headers=headers)


# -- faults --------------------------------------------------------------------------------------


def test_fault_decisions_are_seeded_and_bounded() -> None:
    faults = Faults(error_rate=0.3, truncate_rate=0.2, drop_rate=0.1, burst_rate=0.2, seed=5)
    paths = [f"/v1/jobs/1/judgments/{i}/annotation.png" for i in range(400)]
    first = [[faults.decide(p, a) for a in range(5)] for p in paths]
    assert first == [[faults.decide(p, a) for a in range(5)] for p in paths]
    assert all(row[3] is None and row[4] is None for row in first)  # max_faults_per_path=3
    kinds = [d for row in first for d in row[:1]]
    share = {k: kinds.count(k) / len(kinds) for k in ("5xx", "truncate", "drop", "429")}
    assert 0.1 < share["429"] < 0.3  # bursts hit ~20% of paths, first attempts
    assert 0.15 < share["5xx"] < 0.4
    other = Faults(error_rate=0.3, truncate_rate=0.2, drop_rate=0.1, burst_rate=0.2, seed=6)
    assert first != [[other.decide(p, a) for a in range(5)] for p in paths]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"error_rate": -0.1}, "fault shares must be >= 0"),
     ({"error_rate": 0.6, "drop_rate": 0.6}, "error\\+truncate\\+drop at most 1"),
     ({"latency": -1.0}, "latency, burst_len and max_faults_per_path must be >= 0")],
    ids=["negative", "too-much", "latency"],
)
def test_bad_faults(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults(**kwargs)  # type: ignore[arg-type]


# -- the HTTP surface ------------------------------------------------------------------------------


def test_auth_and_errors_are_json(emulator: Emulator, api_key: str) -> None:
    for key in (None, "nope"):
        answer = get(emulator, f"/jobs/{JOB}.csv?type=full", key)
        assert answer.status_code == 401
        assert answer.json() == {"error": {"message": "Unauthorized: a valid API key is required"}}
    assert httpx.get(f"{emulator.url}/jobs/{JOB}.json?key={api_key}").status_code == 200
    missing = get(emulator, "/jobs/42.json", api_key)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "Job 42 not found"}}
    assert get(emulator, "/elsewhere", api_key).status_code == 404
    assert get(emulator, f"/jobs/{JOB}.csv?type=bogus", api_key).status_code == 400
    assert emulator.counts["unauthorized"] == 2
    assert emulator.counts["not_found"] == 2


def test_report_is_generated_then_zipped(emulator: Emulator, api_key: str) -> None:
    first = get(emulator, f"/jobs/{JOB}.csv?type=full", api_key)
    assert first.status_code == 202
    assert first.json() == {"notice": {"message": "Your CSV is being generated. "
                                                  "Try again in 10 seconds."}}
    ready = get(emulator, f"/jobs/{JOB}.csv?type=full", api_key)
    assert ready.status_code == 200
    assert ready.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(ready.content)) as archive:
        assert archive.namelist() == [f"f{JOB}.csv"]
        header = archive.read(f"f{JOB}.csv").decode().splitlines()[0].split(",")
    assert tuple(header[:14]) == FULL_REPORT_COLUMNS
    assert header[14:16] == ["annotation", "broken_link"]
    assert header[-2:] == ["identifier", "image_url"]
    assert emulator.counts["report_202"] == 1
    assert emulator.counts["report_ready"] == 1


@pytest.mark.parametrize(
    ("report_type", "member"),
    [("full", "f{}.csv"), ("aggregated", "a{}.csv"), ("json", "job_{}.json"),
     ("gold_report", "gold_report_{}.csv"), ("workset", "workset_{}.csv"),
     ("source", "source_{}.csv")],
    ids=["full", "aggregated", "json", "gold", "workset", "source"],
)
def test_member_names(emulator: Emulator, small_job: CrowdJob, report_type: str,
                      member: str) -> None:
    name, data = emulator.report_member(JOB, report_type)
    assert name == member.format(JOB)
    lines = data.decode().splitlines()
    if report_type == "source":
        assert len(lines) == len(small_job.units) + 1
    if report_type == "workset":
        assert len(lines) - 1 == len({j.worker for j in small_job.judgments})


def test_annotations_are_served(emulator: Emulator, small_job: CrowdJob, api_key: str) -> None:
    good = next(j for j in small_job.judgments if j.annotation is not None)
    broken = next(j for j in small_job.judgments if j.annotation is None)
    url = emulator.annotation_url(JOB, good.judgment_id)
    answer = httpx.get(url, headers={"Authorization": f"Token token={api_key}"})
    assert answer.status_code == 200
    assert answer.content == good.annotation
    assert httpx.get(url).status_code == 401
    assert get(emulator, f"/jobs/{JOB}/judgments/{broken.judgment_id}/annotation.png",
               api_key).status_code == 404
    assert emulator.counts["annotation"] == 3


def test_storage_server_records_what_it_saw(small_job: CrowdJob, api_key: str) -> None:
    good = next(j for j in small_job.judgments if j.annotation is not None)
    with Emulator(small_job, api_key=api_key, annotations_on_storage=True,
                  missing_annotations={good.judgment_id}) as emu:
        url = emu.annotation_url(JOB, good.judgment_id)
        assert url.startswith(emu.storage_url)
        assert httpx.get(url, headers={"X-Probe": "1"}).status_code == 404  # made missing
        assert httpx.get(f"{emu.storage_url}/reports/99/f.zip").status_code == 404
        assert httpx.get(f"{emu.storage_url}/other").status_code == 404
    assert emu.storage_requests[0].headers["x-probe"] == "1"
    assert emu.storage_requests[0].query["signature"][0]
    assert emu.counts["storage"] == 3
    assert emu.counts["annotation"] == 0


def test_truncation_drop_and_latency(small_job: CrowdJob, api_key: str) -> None:
    faults = Faults(truncate_rate=1.0, max_faults_per_path=1, latency=0.05)
    with Emulator(small_job, api_key=api_key, faults=faults, report_polls=0) as emu:
        with pytest.raises(httpx.RemoteProtocolError):
            get(emu, f"/jobs/{JOB}.csv?type=full", api_key)
        answer = get(emu, f"/jobs/{JOB}.csv?type=full", api_key)
        assert answer.status_code == 200
        assert answer.elapsed.total_seconds() >= 0.05
    with Emulator(small_job, api_key=api_key, faults=Faults(drop_rate=1.0)) as emu, \
            pytest.raises(httpx.RemoteProtocolError):
        get(emu, f"/jobs/{JOB}.json", api_key)
    assert emu.counts["fault_drop"] == 1


def test_lifecycle_and_arguments(small_job: CrowdJob) -> None:
    with pytest.raises(ValueError, match="needs a non-empty api_key"):
        Emulator(small_job, api_key="")
    emu = Emulator([small_job], api_key="k")
    with pytest.raises(RuntimeError, match="the emulator is not running"):
        _ = emu.url
    assert emu.start() is emu.start()  # idempotent
    url = emu.url
    emu.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_logs_never_show_the_key(emulator: Emulator, api_key: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="cellcrowd")
    httpx.get(f"{emulator.url}/jobs/{JOB}.json?key={api_key}")
    assert "emulator: " in caplog.text
    assert api_key not in caplog.text


# -- the simulated crowd ---------------------------------------------------------------------------


def test_crowd_is_deterministic_and_shaped(job_factory: Callable[..., CrowdJob]) -> None:
    config = CrowdConfig(workers_per_unit=(2, 3), broken_share=0.1, tainted_share=0.25)
    job = job_factory(16, config=config, seed=7)
    assert job == job_factory(16, config=config, seed=7)
    assert job != job_factory(16, config=config, seed=8)
    per_unit = {u.unit_id: [j for j in job.judgments if j.unit_id == u.unit_id]
                for u in job.units}
    assert all(2 <= len(js) <= 3 for js in list(per_unit.values())[:-1])
    assert all(len({j.worker.worker_id for j in js}) == len(js) for js in per_unit.values())
    workers = {j.worker for j in job.judgments}
    assert any(w.tainted for w in workers)
    assert all(0.6 <= w.trust <= 0.99 for w in workers)
    # one re-uploaded unit: same image, created later, broken before and good after
    reup = job.units[-1]
    earlier = [u for u in job.units[:-1] if u.image_url == reup.image_url]
    assert len(earlier) == 1
    assert all(j.broken_link for j in per_unit[earlier[0].unit_id])
    assert [j.broken_link for j in per_unit[reup.unit_id]] == [False]
    assert reup.created_at > earlier[0].created_at
    assert all(j.annotation is None for j in job.judgments if j.broken_link)


def test_crowd_paints_decodable_annotations(job_factory: Callable[..., CrowdJob]) -> None:
    job = job_factory(3, config=CrowdConfig(reupload=False, broken_share=0.0,
                                            workers_per_unit=(1, 1), artifacts=False))
    for j in job.judgments:
        assert j.annotation is not None
        with Image.open(io.BytesIO(j.annotation)) as img:
            image = np.asarray(img)
        assert image.shape == (64, 64, 4)
        assert decode_annotation(image).max() == 3


def test_crowd_with_a_custom_painter() -> None:
    calls: list[int] = []

    def painter(labels: np.ndarray, **kw: object) -> np.ndarray:
        calls.append(int(kw["seed"]))  # type: ignore[call-overload]
        return np.zeros((*labels.shape, 4), np.uint8)

    rows = [SourceRow("e", f"e_x_0_y_0_montage_{m}.png") for m in range(3)]
    job = simulate_crowd(rows, lambda name: np.zeros((4, 4), np.uint16), job_id=1,
                         painter=painter, config=CrowdConfig(workers_per_unit=(1, 1)))
    assert len(calls) == sum(not j.broken_link for j in job.judgments)
    assert len(set(calls)) == len(calls)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers_per_unit": (0, 2)}, "workers_per_unit"),
     ({"workers_per_unit": (2, 20)}, "pool_size"),
     ({"broken_share": 1.5}, "broken_share must be between 0 and 1"),
     ({"trust_range": (0.5, 1.2)}, "trust_range must lie within")],
    ids=["zero-workers", "too-many", "share", "trust"],
)
def test_bad_crowd_config(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CrowdConfig(**kwargs)  # type: ignore[arg-type]


def test_upload_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="upload CSV not found"):
        read_upload_csv(tmp_path / "none.csv")
    (tmp_path / "u.csv").write_text("identifier,url\nexp,a.png\n")
    with pytest.raises(InputError, match="column 'image_url': no 'image_url' column"):
        read_upload_csv(tmp_path / "u.csv")


# -- a prepared working folder --------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> WorkingFolder:
    base = tmp_path_factory.mktemp("prepared")
    movie = synthetic_movie(frames=8, shape=(96, 96), cells=6, seed=1)
    write_movie_frames(movie, base / "raw")
    result = prepare(base / "raw", WorkingFolder(base, "demo"), num_x=2, num_y=2,
                     overlap_perc=10, montage_len=4, row_length=2, truth=movie.labels)
    return result.wf


def test_serve_a_prepared_folder(prepared: WorkingFolder, api_key: str,
                                 tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "demo")
    with serve_job_from_folder(prepared, job_id=5, api_key=api_key, seed=2,
                               report_polls=0) as emu, AppenClient(api_key,
                                                                   base_url=emu.url) as client:
        report = read_report(client.download_report(5, wf.report_csv(5)))
        result = download_annotations(report, wf, job_id=5, client=client,
                                      expected_shape=(112, 112))
    uploaded = read_upload_csv(prepared.upload_csv)
    assert {j.image_url for j in report} == {r.image_url for r in uploaded}
    assert result.failed == 0
    assert set(result.chosen) | set(result.broken) == {j.montage for j in report}
    montage = next(iter(result.chosen))
    truth = read_image(prepared.truth_path(montage))
    painted = decode_annotation(read_image(wf.annotation_path(montage)))
    agree = np.mean((painted > 0) == (truth > 0))
    assert agree > 0.95  # the painter adds only small artifacts


def test_crowd_needs_truth(prepared: WorkingFolder, tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "demo")
    wf.csv.mkdir()
    wf.upload_csv.write_text("identifier,image_url\n")
    with pytest.raises(InputError, match="the upload CSV has no rows"):
        crowd_from_folder(wf, job_id=1)
    rows = prepared.upload_csv.read_text()
    wf.upload_csv.write_text(rows)
    wf.json_logs.mkdir()
    wf.montage_log.write_bytes(prepared.montage_log.read_bytes())
    with pytest.raises(InputError, match="no ground-truth labels for montage 'demo_x_00_y_00_"):
        crowd_from_folder(wf, job_id=1)


def test_serve_forever_until_stopped(prepared: WorkingFolder, api_key: str) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def ready(emu: Emulator) -> None:
        answer = httpx.get(f"{emu.url}/jobs/9/ping.json", headers={
            "Authorization": f"Token token={api_key}"})
        seen.append(str(answer.json()["all_units"]))
        stop.set()

    thread = threading.Thread(target=serve_forever, args=(prepared.base, "demo"), kwargs={
        "job_id": 9, "api_key": api_key, "ready": ready, "stop": stop})
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    rows = read_upload_csv(prepared.upload_csv)
    assert seen == [str(len(rows) + 1)]  # plus the re-uploaded unit
