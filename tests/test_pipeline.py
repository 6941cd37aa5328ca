"""Tests of cellcrowd.pipeline: stage order, the manifest, skipping, resuming, status.

One synthetic job is prepared per module (20 frames of 96x96, 2x2 tiles, montages of 5
frames: 16 montages in 4 parts) and served by the emulator; every test works on its own
copy of the prepared folder.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest

from cellcrowd import pipeline
from cellcrowd.appen.report import read_report
from cellcrowd.config import Config, OutputsConfig, load_config
from cellcrowd.errors import ConfigError, InputError, PipelineError
from cellcrowd.executor import LocalExecutor
from cellcrowd.export.npz import load_npz
from cellcrowd.files import read_image
from cellcrowd.layout import parse_montage_name, part_numbers, position_name
from cellcrowd.logs import read_montage_log
from cellcrowd.pipeline import STAGES, engine, run, status
from cellcrowd.pipeline.lock import hold_lock
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config
from cellcrowd.sim.testing import assert_same_up_to_relabel
from cellcrowd.stages import HARVEST
from helpers import file_hashes

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("prepared"), SETTINGS)


@pytest.fixture(scope="module")
def job(example: Example) -> Iterator[tuple[Any, Config]]:
    with emulated_job(example, api_key="test-key-123") as served:
        yield served


def _copy(example: Example, dest: Path, served: Config) -> Config:
    """A copy of the prepared folder, configured for the job ``served``."""
    shutil.copytree(example.config.base, dest)
    save_config(served.model_copy(update={"base": dest, "raw": None}), dest / "cellcrowd.toml")
    cfg = load_config(dest / "cellcrowd.toml")
    assert cfg.base == dest
    return cfg


@pytest.fixture
def cfg(job: tuple[Any, Config], example: Example, tmp_path: Path) -> Config:
    return _copy(example, tmp_path / "work", job[1])



def _label_with_truth(cfg: Config) -> None:
    """Stand in for report/fetch/clean: the truth montages as cleaned labels."""
    wf = cfg.working_folder()
    for path in sorted(wf.truth.glob("*_truth.png")):
        target = wf.label_path(path.name[: -len("_truth.png")])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


class Recorder:
    """A Progress that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def start(self, stage: str, total: int | None) -> None:
        self.calls.append(("start", stage, total))

    def advance(self, stage: str, count: int) -> None:
        self.calls.append(("advance", stage, count))

    def finish(self, run: pipeline.StageRun) -> None:
        self.calls.append(("finish", run.name, run.status))


# -- the whole harvest ----------------------------------------------------------------------


def test_the_report_is_parsed_once_per_run(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cellcrowd.appen.report as report_module

    parsed: list[Path] = []
    real = report_module.read_report

    def counting(path: Any, **kw: Any) -> Any:
        parsed.append(Path(path))
        return real(path, **kw)

    monkeypatch.setattr(report_module, "read_report", counting)
    summary = run(cfg, until_stage="clean")
    assert summary.ran == ["report", "fetch", "clean"]
    assert parsed == [cfg.working_folder().report_csv(cfg.job_id)]
    # A new report (another file's content) is parsed again.
    run(cfg, until_stage="clean", force=["report"])
    assert len(parsed) == 2


def test_full_run_writes_every_output_and_a_rerun_does_nothing(
    job: tuple[Any, Config], cfg: Config, example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellcrowd.qc import sources

    def read_again(path: Path) -> None:
        raise AssertionError(f"the qc stage read {path} again: the run holds its entries")

    monkeypatch.setattr(sources, "_read_entries", read_again)
    server, _ = job
    progress = Recorder()
    summary = run(cfg, progress=progress)
    assert summary.ran == list(STAGES)
    wf = pipeline.working_folder(cfg)
    report = summary.stage("report")
    judgments = read_report(wf.report_csv(cfg.job_id))
    assert report.counts["judgments"] == len(judgments)
    assert summary.stage("fetch").counts  # downloads counted
    assert summary.stage("clean").counts["cleaned"] >= 1
    for part in part_numbers(4):
        assert wf.npz_part(part).is_file() or any(
            u.unit == f"part{part}" for u in summary.skipped_units)
    assert wf.trk.is_file()
    assert (wf.ctc / "01_GT" / "TRA" / "man_track.txt").is_file()
    finished = [c[1] for c in progress.calls if c[0] == "finish"]
    assert finished == list(STAGES)
    clean_total = [c[2] for c in progress.calls if c[0] == "start" and c[1] == "clean"][-1]
    assert clean_total == sum(
        c[2] for c in progress.calls if c[0] == "advance" and c[1] == "clean")

    # The labels match the truth up to relabelling, montage by montage.
    labels = _label_files(summary, wf)
    assert len(labels) == summary.stage("clean").counts["cleaned"] >= 4
    for label_path in labels:
        name = label_path.name[: -len("_labels.png")]
        assert_same_up_to_relabel(read_image(label_path), read_image(wf.truth_path(name)))

    # The QC report is the last stage: a page naming the montages, and its overlays.
    qc = summary.stage("qc")
    assert qc.status == "ran"
    assert wf.qc_index in qc.outputs
    page = wf.qc_index.read_text(encoding="utf-8")
    for label_path in labels:
        assert label_path.name[: -len("_labels.png")] in page
    overlays = [p for p in qc.outputs if p.name.endswith("_overlay.png")]
    assert overlays
    assert all(p.is_file() and p.parent == wf.qc for p in overlays)
    assert qc.counts["overlays"] == len(overlays)
    thumb = r'<img class="thumb" loading="lazy" src="(?P<src>[^"]+)"'
    shown = {m["src"] for m in re.finditer(thumb, page)}
    assert len(shown) == qc.counts["montages"]  # every unit has a thumbnail
    assert {wf.qc / unquote(src) for src in shown} <= set(qc.outputs)
    assert {wf.qc_units_csv, wf.qc_workers_csv} <= set(qc.outputs)
    merged = re.search(r"montages merged from several judgments</td>\s*<td[^>]*>(\d+)<", page)
    assert merged is not None
    assert int(merged[1]) == summary.stage("clean").counts["montages_merged"] >= 1

    # Broken links flow through: the montage is named, and its position leaves its part.
    broken = [u.unit for u in report.skipped if u.reason.startswith("broken link")]
    assert broken, "the emulated crowd re-uploads one unit that stays broken"
    for name in broken:
        key = parse_montage_name(name)
        pos = position_name(key.position, wf.padding)
        assert f"part{key.part} {pos}" in {u.unit for u in summary.stage("movies").skipped}
        assert pos in load_npz(wf.npz_part(key.part)).missing_positions
        assert not wf.label_path(name).exists()

    before = file_hashes(cfg.base, skip_folders=(), skip_names={"lock"})
    seen = dict(server.counts)
    again = run(cfg, api_key=_no_key)
    assert again.ran == []
    assert {s.status for s in again.stages} == {"up-to-date"}
    assert dict(server.counts) == seen  # not one request, annotation or report
    assert file_hashes(cfg.base, skip_folders=(), skip_names={"lock"}) == before
    assert again.skipped_units == summary.skipped_units
    st = status(cfg)
    assert st.left == []
    assert st.done == list(STAGES)


def test_failed_downloads_are_named_retried_and_flow_through(
    example: Example, tmp_path: Path
) -> None:
    with emulated_job(example, api_key="other-key-456") as (server, served):
        cfg = _copy(example, tmp_path / "work", served)
        crowd = server.jobs[cfg.job_id]
        target = crowd.units[0].montage
        ids = [j.judgment_id for j in crowd.judgments
               if crowd.units_by_id[j.unit_id].montage == target and not j.broken_link]
        server.missing_annotations = frozenset(ids)
        summary = run(cfg)
        fetch = summary.stage("fetch")
        assert fetch.counts["failed"] == len(ids) >= 1
        assert {u.unit.split(" ")[0] for u in fetch.skipped} == {target}
        assert all("download failed" in u.reason for u in fetch.skipped)
        wf = pipeline.working_folder(cfg)
        assert wf.failures_csv(cfg.job_id) in fetch.outputs
        clean_skips = {u.unit: u.reason for u in summary.stage("clean").skipped}
        assert "no annotation could be downloaded" in clean_skips[target]
        key = parse_montage_name(target)
        assert position_name(key.position, wf.padding) in load_npz(
            wf.npz_part(key.part)).missing_positions
        st = status(cfg)
        assert st.stage("fetch").state == "stale"
        assert "retrying: " in st.stage("fetch").reason
        # A rerun retries the failed downloads only; still failing, nothing else changes.
        before = server.counts["annotation"]
        again = run(cfg)
        assert again.ran == ["fetch"]
        assert server.counts["annotation"] - before == len(ids)
        # Once the service serves them, the montage comes back everywhere.
        server.missing_annotations = frozenset()
        third = run(cfg)
        assert third.stage("fetch").counts["failed"] == 0
        assert "clean" in third.ran
        assert wf.label_path(target).is_file()
        assert not wf.failures_csv(cfg.job_id).exists()


def _label_files(summary: pipeline.RunSummary, wf: Any) -> list[Path]:
    """The clean stage's label montages (not its per-judgment files or reports)."""
    return [p for p in summary.stage("clean").outputs
            if p.parent == wf.labels and p.name.endswith("_labels.png")]


def _no_key() -> str:
    raise AssertionError("the API key must not be asked for when nothing is to be done")


def test_changing_min_size_redoes_clean_and_only_what_depends_on_it(
    job: tuple[Any, Config], cfg: Config
) -> None:
    server, _ = job
    run(cfg)
    seen = dict(server.counts)
    first = file_hashes(cfg.base / "demo_labels", skip_folders=(), skip_names={"lock"})
    changed = cfg.with_overrides({"clean.min_size": 400})
    st = status(changed)
    assert st.stage("clean").state == "stale"
    assert "settings changed: min_size" in st.stage("clean").reason
    assert st.stage("movies").state == "waiting"
    assert st.stage("report").state == st.stage("fetch").state == "done"
    summary = run(changed, api_key=_no_key)
    assert summary.stage("report").status == summary.stage("fetch").status == "up-to-date"
    assert summary.stage("clean").status == "ran"
    assert summary.stage("movies").status == "ran"  # labels changed: cells under 400 px gone
    assert dict(server.counts) == seen
    assert file_hashes(cfg.base / "demo_labels", skip_folders=(), skip_names={"lock"}) != first
    # and back: the original outputs, byte for byte
    run(cfg, api_key=_no_key)
    assert file_hashes(cfg.base / "demo_labels", skip_folders=(), skip_names={"lock"}) == first


def test_other_report_types_and_the_v3_api(job: tuple[Any, Config], cfg: Config) -> None:
    full = run(cfg)
    units = full.stage("report").counts["units"]
    wf = pipeline.working_folder(cfg)
    cleaned = _label_files(full, wf)
    for report_type, version in (("aggregated", "v1"), ("json", "v3")):
        other = cfg.with_overrides({"service.report_type": report_type,
                                    "service.api_version": version})
        summary = run(other)
        assert summary.ran[:3] == ["report", "fetch", "clean"], report_type
        counts = summary.stage("report").counts
        assert counts["units"] == units
        if report_type == "aggregated":
            assert counts["judgments"] == units  # one row per unit
        else:
            assert counts["judgments"] == full.stage("report").counts["judgments"]
        assert _label_files(summary, wf) == cleaned
        wf = pipeline.working_folder(other)
        assert wf.report_csv(cfg.job_id, report_type).is_file()
        # the previous type's report is no longer an output of the report stage
        assert not wf.report_csv(cfg.job_id, "full").exists()


def test_status_of_a_fresh_folder_and_failed_stage(cfg: Config) -> None:
    st = status(cfg)
    assert [s.state for s in st.stages] == ["pending"] * len(STAGES)
    assert st.stage("report").reason == "never run"
    assert st.left == list(STAGES)
    with pytest.raises(ConfigError, match="no API key"):
        run(cfg, api_key=lambda: (_ for _ in ()).throw(ConfigError("no API key given")))
    failed = status(cfg).stage("report")
    assert failed.state == "failed"
    assert "no API key" in failed.reason


def test_from_until_force_and_outputs_off(cfg: Config) -> None:
    _label_with_truth(cfg)
    off = cfg.with_overrides({"outputs.trk": False, "outputs.ctc": False,
                              "outputs.omezarr": False, "outputs.geff": False})
    summary = run(off, from_stage="movies", until_stage="npz")
    assert [s.status for s in summary.stages] == ["not-selected"] * 3 + ["ran", "ran"] + [
        "not-selected", "disabled", "disabled", "disabled", "disabled", "not-selected"]
    wf = pipeline.working_folder(cfg)
    data = load_npz(wf.npz_part(1))
    assert data.X.shape == (4, 5, *read_montage_log(wf.montage_log).layout(
        (data.X.shape[2], data.X.shape[3])).frame_shape, 1)
    assert data.y.dtype == np.int32
    forced = run(off, from_stage="movies", until_stage="npz", force=["npz"])
    assert forced.stage("movies").status == "up-to-date"
    assert forced.stage("npz").status == "ran"
    assert forced.stage("npz").reason == "forced"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"from_stage": "download"}, "unknown stage 'download'", id="unknown"),
        pytest.param({"force": ["zip"]}, "unknown stage 'zip'", id="unknown-force"),
        pytest.param({"from_stage": "npz", "until_stage": "clean"},
                     "--from npz comes after --until clean", id="backwards"),
    ],
)
def test_bad_stage_names(cfg: Config, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        run(cfg, **kwargs)


def test_outputs_are_checked_and_stale_files_removed(cfg: Config) -> None:
    _label_with_truth(cfg)
    full = cfg.with_overrides({"outputs.npz_full_movie": True})
    run(full, from_stage="movies")
    wf = pipeline.working_folder(cfg)
    wf.npz_part(2).unlink()
    st = status(full)
    assert st.stage("npz").state == "stale"
    assert "demo_part2.npz is missing" in st.stage("npz").reason
    # report/fetch/clean never ran here, so movies would wait for clean in a full run
    assert st.stage("movies").state == "waiting"
    assert "clean" in st.stage("movies").reason
    wf.trk.write_bytes(b"changed")
    assert "was changed" in status(full).stage("trk").reason
    summary = run(full, from_stage="movies")
    assert summary.ran == ["npz", "trk"]  # same bytes again: nothing after them reruns
    assert wf.npz_part(2).is_file()
    # Turning the full movie off redoes npz and stitch (which writes the stitched movie's
    # .npz), and their old files go.
    assert wf.npz_full_movie.is_file()
    assert wf.npz_stitched_movie.is_file()
    summary = run(cfg, from_stage="movies")
    assert summary.ran == ["npz", "stitch", "trk", "ctc", "omezarr", "geff", "qc"]
    assert not wf.npz_full_movie.exists()
    assert not wf.npz_stitched_movie.exists()
    assert wf.npz_part(2).is_file()


def test_changed_input_file_and_stage_failure_are_recorded(cfg: Config) -> None:
    _label_with_truth(cfg)
    run(cfg, from_stage="movies", until_stage="movies")
    wf = pipeline.working_folder(cfg)
    frames = sorted(wf.raw.iterdir())
    frames[-1].unlink()
    st = status(cfg).stage("movies")
    assert st.state == "stale"
    assert "input files changed" in st.reason
    with pytest.raises(InputError, match="the logs describe 20 frames"):
        run(cfg, from_stage="movies", until_stage="movies")
    st = status(cfg).stage("movies")
    assert st.state == "failed"
    assert "20 frames" in st.reason


def test_os_errors_become_pipeline_errors(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: Any) -> Any:
        raise OSError("disk full")

    table = dataclasses.replace(HARVEST, stages=tuple(
        dataclasses.replace(s, run=broken) if s.name == "movies" else s
        for s in HARVEST.stages))
    with pytest.raises(PipelineError, match="stage movies failed: disk full"):
        engine.run(cfg, table, from_stage="movies", until_stage="movies")
    assert "disk full" in status(cfg).stage("movies").reason


def test_interrupted_stage_and_unreadable_manifest(
    cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    _label_with_truth(cfg)
    run(cfg, from_stage="movies", until_stage="movies")
    wf = pipeline.working_folder(cfg)
    data = json.loads(wf.manifest.read_text())
    data["stages"]["movies"]["state"] = "running"
    wf.manifest.write_text(json.dumps(data))
    assert status(cfg).stage("movies").state == "interrupted"
    wf.manifest.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="cellcrowd.pipeline"):
        assert status(cfg).stage("movies").state == "pending"
    assert "unreadable" in caplog.text
    wf.manifest.write_text(json.dumps({"version": 999, "stages": {}}))
    with caplog.at_level(logging.WARNING, logger="cellcrowd.pipeline"):
        assert status(cfg).stage("movies").state == "pending"
    assert "another cellcrowd version" in caplog.text


def test_a_second_run_on_the_same_folder_is_refused(cfg: Config) -> None:
    wf = cfg.working_folder()
    assert pipeline.lock_holder(wf) is None
    with hold_lock(wf):
        assert (pipeline.lock_holder(wf) or "").startswith(f"pid {os.getpid()} on ")
        with pytest.raises(PipelineError,
                           match=rf"another cellcrowd run is using .*\(pid {os.getpid()} on "):
            run(cfg)
    assert pipeline.lock_holder(wf) is None


class Watcher:
    """A StageObserver that records what it is told (and the stage's manifest state)."""

    def __init__(self, calls: list[tuple[str, str, Any]], manifest: Path) -> None:
        self.calls, self.manifest = calls, manifest

    def started(self, stage: str) -> None:
        self.calls.append(("started", stage, 0))

    def advanced(self, stage: str, count: int) -> None:
        self.calls.append(("advanced", stage, count))

    def written(self, stage: str) -> None:
        state = json.loads(self.manifest.read_text())["stages"][stage]["state"]
        self.calls.append(("written", stage, state))


def test_observers_see_a_stage_start_advance_and_write_before_it_is_recorded(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    _label_with_truth(cfg)
    calls: list[tuple[str, str, Any]] = []
    made: list[Watcher] = []

    def make() -> Watcher:
        made.append(Watcher(calls, cfg.working_folder().manifest))
        return made[-1]

    monkeypatch.setattr(engine, "observers", [make])
    run(cfg, from_stage="movies", until_stage="movies")
    run(cfg, from_stage="movies", until_stage="movies")  # up to date: nothing to tell
    assert len(made) == 2  # one per run
    assert calls[0] == ("started", "movies", 0)
    assert calls[-1] == ("written", "movies", "running")  # not yet recorded as done
    items = [n for kind, _, n in calls if kind == "advanced"]
    assert sum(items) == 16 + SETTINGS.frames  # label montages and raw frames
    assert {stage for _, stage, _ in calls} == {"movies"}


def _pausing_cli() -> Any:
    """tests/pausing_cli.py as a module (tests are not a package)."""
    path = Path(__file__).with_name("pausing_cli.py")
    spec = importlib.util.spec_from_file_location("pausing_cli", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pause_hook_spec_is_checked() -> None:
    launcher = _pausing_cli()
    with pytest.raises(ValueError, match="expected 'stage:N' or 'stage:end'"):
        launcher.Pause.factory({launcher.PAUSE_ENV: "clean:x"})
    proc = subprocess.run([sys.executable, str(Path(launcher.__file__)), "--help"],
                          env={**os.environ, launcher.PAUSE_ENV: "clean:x"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "expected 'stage:N' or 'stage:end'" in proc.stderr


def test_pause_hook_sleeps_and_signals(
    monkeypatch: pytest.MonkeyPatch, cfg: Config, tmp_path: Path
) -> None:
    _label_with_truth(cfg)
    signal = tmp_path / "paused"
    launcher = _pausing_cli()
    make = launcher.Pause.factory({launcher.PAUSE_ENV: "movies:3",
                                   launcher.SIGNAL_ENV: str(signal),
                                   launcher.SECONDS_ENV: "0"})
    monkeypatch.setattr(engine, "observers", [make])
    run(cfg, from_stage="movies", until_stage="movies")
    assert signal.read_text().startswith("movies after 3 items")


def test_full_movie_npz_and_executor(cfg: Config) -> None:
    _label_with_truth(cfg)
    full = cfg.with_overrides({"outputs.npz_full_movie": True})
    ex = LocalExecutor(2)
    try:
        run(full, from_stage="movies", until_stage="npz", executor=ex)
    finally:
        ex.close()
    wf = pipeline.working_folder(cfg)
    data = load_npz(wf.npz_full_movie)
    parts = [load_npz(wf.npz_part(p)) for p in part_numbers(4)]
    assert data.X.shape[1] == SETTINGS.frames
    assert data.positions == parts[0].positions
    assert data.linked
    np.testing.assert_array_equal(data.X[:, 15:20], parts[3].X)
    # ids are joined across parts (renumbered), so each part is a relabelling of its npz
    for i in range(len(data.positions)):
        assert_same_up_to_relabel(data.y[i, 5:10], parts[1].y[i])
    assert not wf.npz_stitched_movie.exists()  # the stitch stage writes that one


def test_one_executor_serves_runs_in_two_folders(
        job: tuple[Any, Config], example: Example, tmp_path: Path) -> None:
    """The pool starts during the first run, inside its folder's confinement; the second
    run's tasks still write in the second folder (their own confinement comes with them)."""
    first, second = (_copy(example, tmp_path / name, job[1]) for name in ("first", "second"))
    for c in (first, second):
        _label_with_truth(c)
    with LocalExecutor(2) as ex:
        runs = [run(c, from_stage="movies", until_stage="npz", executor=ex)
                for c in (first, second)]
    for summary in runs:
        assert [st.name for st in summary.stages if st.status == "ran"] == ["movies", "npz"]
        assert [u for st in summary.stages for u in st.skipped] == []
    made = [file_hashes(c.base, skip_names={"cellcrowd.toml"}) for c in (first, second)]
    assert any(name.startswith("movies/") for name in made[1])
    assert any(name.endswith(".npz") for name in made[1])
    assert made[0] == made[1]


def test_outputs_config_validation() -> None:
    assert OutputsConfig(trk=False, ctc=False, stitched=False).stitched is False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_stage_files_are_synced_once_before_the_manifest_records_them(
        cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from cellcrowd import files

    _label_with_truth(cfg)
    wf = pipeline.working_folder(cfg)
    per_file: list[int] = []
    real_fsync = os.fsync

    synced: list[tuple[set[str], str]] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not synced and f"{os.sep}movies{os.sep}" in target:
            per_file.append(fd)  # a movie file synced on its own, before the stage's sync
        real_fsync(fd)

    def sync_paths(paths: Any) -> int:
        paths = [Path(p) for p in paths]
        state = json.loads(wf.manifest.read_text())["stages"]["movies"]["state"]
        synced.append(({p.name for p in paths}, state))
        return files.sync_paths(paths)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(engine, "sync_paths", sync_paths)
    serial = cfg.with_overrides({"executor.workers": 1})  # fsyncs counted in this process
    summary = run(serial, from_stage="movies", until_stage="movies", force=["movies"])
    assert per_file == []
    assert len(synced) == 1
    names, state = synced[0]
    assert state == "running"  # synced before the manifest says done
    assert names == {p.name for p in summary.stage("movies").outputs}


def test_stage_entries_write_what_json_writes_and_parse_each_entry_afresh() -> None:
    from cellcrowd.pipeline.manifest import StageEntries

    rng = np.random.default_rng(5)

    def entry(n: int) -> dict[str, Any]:
        files = {f"movies/p{i}/é{i}.png": [int(rng.integers(1 << 40)), f"{i:064x}"]
                 for i in range(n)}
        return {"state": "done", "outputs": files, "counts": {"files": n, "z": 1},
                "inputs": {"files": {"/elsewhere/log.json": [3, "ab"], "rel.txt": [1, "c"]}},
                "units": {"u": {"key": "k", "outputs": sorted(files)}}, "skipped": [],
                "outputs_digest": "d" * 64, "retry": None}

    data = {"version": 1, "zeta": [1.5, None], "stages": {"movies": entry(50), "a\"b": 7,
                                                           "clean": entry(3)}}
    text = json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    entries = StageEntries.parse(text)
    assert entries.text() == text
    assert entries.entry("movies") == data["stages"]["movies"]  # type: ignore[index]
    assert entries.entry("movies") is not entries.entry("movies")  # a fresh copy each time
    assert entries.head("movies") == {"state": "done", "counts": {"files": 50, "z": 1},
                                      "skipped": [], "outputs_digest": "d" * 64,
                                      "retry": None}
    assert entries.field("movies", "outputs") == data["stages"]["movies"]["outputs"]  # type: ignore[index]
    assert entries.field("movies", "counts") == {"files": 50, "z": 1}
    assert entries.field("movies", "nothing") is None
    assert entries.head("a\"b") is None
    assert entries.entry("a\"b") == 7
    assert entries.entry("npz") is None
    assert entries.head("npz") is None
    assert entries.outside_inputs() == {"/elsewhere/log.json"}
    data["stages"]["npz"] = npz = entry(1)  # type: ignore[index]
    entries.put("npz", npz)
    entries.put("clean", {"state": "running"})
    data["stages"]["clean"] = {"state": "running"}  # type: ignore[index]
    assert entries.text() == json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    assert entries.names() == ["a\"b", "clean", "movies", "npz"]  # as read, then new
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        StageEntries.parse("[1]")
    empty = {"version": 1, "stages": {}}
    assert StageEntries(empty).text() == json.dumps(empty, sort_keys=True,
                                                    separators=(",", ":")) + "\n"


def test_a_manifest_text_made_in_pieces_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    from cellcrowd.pipeline.manifest import _write_pieces

    pieces = ["", "ab", "é" * 5, "", "漢字", "x" * 30, "\n"]
    path = tmp_path / "out.json"
    _write_pieces(path, iter(pieces))
    assert path.read_bytes() == "".join(pieces).encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left

    def broken() -> Iterator[str]:
        yield "half"
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        _write_pieces(path, broken())
    assert path.read_bytes() == "".join(pieces).encode("utf-8")  # the old file is kept
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
