"""Tests of cellcrowd.resend: units needing another judgment go back to the job once."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.cli import main
from cellcrowd.config import Config, ServiceConfig, load_config
from cellcrowd.errors import InputError, TemporaryServiceError
from cellcrowd.pipeline import run
from cellcrowd.resend import resend_units, units_to_resend
from cellcrowd.sim.crowd import CrowdConfig, CrowdJob, crowd_from_folder
from cellcrowd.sim.demo import Example, ExampleSettings, make_example, save_config
from cellcrowd.sim.emulator import Emulator, Faults
from cellcrowd.sim.synthetic import paint_annotation

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5, seed=2)
KEY = "resend-test-KEY-44e0"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("prepared"), SETTINGS)


def _careless(labels: np.ndarray, *, seed: int, **options: Any) -> np.ndarray:
    """Paint the truth, leaving out a random share of its cells (annotators disagree)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels[labels > 0])
    dropped = rng.choice(ids, size=int(rng.integers(0, len(ids) // 2 + 1)), replace=False)
    return paint_annotation(np.where(np.isin(labels, dropped), 0, labels), seed=seed,
                            **options)


@pytest.fixture(scope="module")
def crowd(example: Example) -> CrowdJob:
    return crowd_from_folder(example.wf, job_id=example.config.job_id, seed=7,
                             config=CrowdConfig(workers_per_unit=(2, 3)), painter=_careless)


def _by_montage(crowd: CrowdJob) -> dict[str, list[object]]:
    out: dict[str, list[object]] = defaultdict(list)
    for j in crowd.judgments:
        out[crowd.units_by_id[j.unit_id].montage].append(j)
    return out


def _all_broken(crowd: CrowdJob) -> set[str]:
    return {m for m, js in _by_montage(crowd).items()
            if all(j.annotation is None for j in js)}  # type: ignore[attr-defined]


def _undownloadable(crowd: CrowdJob) -> tuple[str, set[int]]:
    """A montage with annotations only, and its judgment ids (to answer 404)."""
    for m, js in sorted(_by_montage(crowd).items()):
        if m not in _all_broken(crowd) and all(
                j.annotation is not None for j in js):  # type: ignore[attr-defined]
            return m, {j.judgment_id for j in js}  # type: ignore[attr-defined]
    raise AssertionError("no fully annotated montage")


def _config(example: Example, dest: Path, url: str) -> Config:
    shutil.copytree(example.config.base, dest)
    path = dest / "cellcrowd.toml"
    save_config(example.config.model_copy(update={
        "base": dest, "raw": None, "service": ServiceConfig(api_url=url, poll_interval=0.05)}),
        path)
    return load_config(path)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _scores(wf: Any) -> dict[str, float]:
    """Each montage's mean agreement, from its consensus report."""
    return {p.name[: -len("_consensus.json")]: json.loads(p.read_text())["mean_agreement"]
            for p in wf.labels.glob("*_consensus.json")}


@pytest.mark.slow
def test_resend_sends_what_review_lists_once_and_dry_run_sends_nothing(
    example: Example, crowd: CrowdJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed, missing = _undownloadable(crowd)
    urls = {crowd.units_by_id[j.unit_id].montage: crowd.units_by_id[j.unit_id].image_url
            for j in crowd.judgments}
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    with Emulator(crowd, api_key=KEY, missing_annotations=missing) as emu:
        config = _config(example, tmp_path / "work", emu.url)
        run(config, api_key=lambda: KEY)
        wf = config.working_folder()
        # Units the two commands once chose differently: a low agreement at the
        # configured threshold (resend needed --min-agreement) and labels whose
        # consensus failed although the annotations were downloaded.
        scores = _scores(wf)
        threshold = sorted(scores.values())[len(scores) // 2]
        config = config.with_overrides({"clean.min_agreement": threshold})
        setting = ["--set", f"clean.min_agreement={threshold}"]
        low = {m for m, s in scores.items() if s < threshold}
        relabel = min(set(scores) - low)
        wf.label_path(relabel).unlink()
        expected = _all_broken(crowd) | {failed} | low | {relabel}
        assert low
        assert not low & (_all_broken(crowd) | {failed})

        assert main(["review", str(config.source), *setting]) == 0
        assert main(["resend", str(config.source), "--dry-run", *setting]) == 0
        assert wf.resend_csv(config.job_id).read_text() == wf.review_csv(
            config.job_id).read_text()
        assert {r["image_url"] for r in _csv_rows(wf.resend_csv(config.job_id))} == {
            urls[m] for m in expected}
        assert emu.inbox.rows == {}
        assert not wf.resent.exists()
        assert "to send (dry run)" in capsys.readouterr().out

        first = resend_units(config, api_key=lambda: KEY)
        second = resend_units(config, api_key=lambda: KEY)
        assert main(["resend", str(config.source), *setting]) == 0
    received = emu.inbox.rows[config.job_id]
    assert sorted(r["image_url"] for r in received) == sorted(urls[m] for m in expected)
    assert emu.counts["upload_rows"] == len(expected)
    assert first.sent
    assert {r.montage for r in first.rows} == expected
    assert (second.sent, second.rows, second.already_sent) == (False, (), len(expected))
    assert _csv_rows(wf.resend_csv(config.job_id)) == []
    reasons = {r.montage: r.reason for r in first.rows}
    assert reasons[failed].startswith("failed: no annotation could be downloaded")
    assert reasons[relabel].startswith("failed: no clean labels")
    assert all(reasons[m].startswith("low agreement: ") for m in low)
    assert all(reasons[m] == "broken: every judgment reported a broken link"
               for m in _all_broken(crowd))


@pytest.mark.slow
def test_min_agreement_replaces_the_configured_threshold(example: Example, crowd: CrowdJob,
                                            tmp_path: Path) -> None:
    with Emulator(crowd, api_key=KEY) as emu:
        config = _config(example, tmp_path / "work", emu.url)
        run(config, api_key=lambda: KEY)
        wf = config.working_folder()
        scores = _scores(wf)
        assert len(set(scores.values())) > 1, "the crowd agreed equally everywhere"
        threshold = sorted(scores.values())[len(scores) // 2]
        rows = units_to_resend(config, min_agreement=threshold)
        without = units_to_resend(config, min_agreement=0)
    low = {r.montage for r in rows} - {r.montage for r in without}
    assert low == {m for m, s in scores.items() if s < threshold}
    assert all(r.reason.startswith("low agreement: ") for r in rows if r.montage in low)


def test_errors_leave_nothing_recorded(example: Example, crowd: CrowdJob,
                                       tmp_path: Path) -> None:
    faults = Faults(error_rate=1.0, kinds=frozenset({"upload"}), max_faults_per_path=10)
    with Emulator(crowd, api_key=KEY, faults=faults) as emu:
        config = _config(example, tmp_path / "work", emu.url)
        with pytest.raises(InputError, match="no report yet"):
            resend_units(config, api_key=lambda: KEY)
        run(config, until_stage="report", api_key=lambda: KEY)
        with pytest.raises(InputError, match="no clean labels yet"):
            resend_units(config, api_key=lambda: KEY)
        run(config, api_key=lambda: KEY)
        wf = config.working_folder()
        with pytest.raises(TemporaryServiceError, match="gave up after 1 attempts"):
            resend_units(config, api_key=lambda: KEY)
        assert not wf.resent.exists()
        assert emu.inbox.rows == {}
        wf.resent.write_text("{broken")
        with pytest.raises(InputError, match="unreadable"):
            resend_units(config, api_key=lambda: KEY)
