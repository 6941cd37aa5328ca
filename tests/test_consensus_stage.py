"""The clean stage with several annotators per montage: consensus, reports, reported drops.

One synthetic job (10 frames of 96x96, 2x2 tiles, montages of 5 frames: 8 montages) is
served by the emulator with three workers per unit and no tainted workers or broken
links. The first worker of every unit paints one cell that is not there; the consensus
must drop it (found by 1 of 3 annotators), name it, and give the truth back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd import pipeline
from cellcrowd.appen.report import read_report
from cellcrowd.config import Config, example_config, load_config
from cellcrowd.consensus import ConsensusReport, DroppedCell
from cellcrowd.errors import ConfigError, InputError
from cellcrowd.files import read_image
from cellcrowd.geometry import MontageLayout
from cellcrowd.labels import clean_annotation_file
from cellcrowd.logs import read_montage_log
from cellcrowd.pipeline import run, status
from cellcrowd.sim.crowd import CrowdConfig
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config
from cellcrowd.sim.synthetic import paint_annotation
from cellcrowd.sim.testing import same_up_to_relabel
from cellcrowd.stages import clean as clean_stage
from cellcrowd.stages.cleanjob import dropped_units

SETTINGS = ExampleSettings(frames=10, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)
CROWD = CrowdConfig(workers_per_unit=(3, 3), tainted_share=0.0, broken_share=0.0,
                    reupload=False)
#: The painter's ``seed`` is ``crowd seed * 100_003 + index of the judgment``.
SEED = 0
FAKE = 8  # side of the square a careless worker adds


def _careless(labels: np.ndarray, *, layout: MontageLayout | None = None, seed: int = 0,
              **kw: Any) -> np.ndarray:
    """The first judgment of every unit (index % 3 == 0) adds a cell to the first frame."""
    labels = np.array(labels)
    if (seed - SEED * 100_003) % 3 == 0 and layout is not None:
        rows, cols = next(layout.iter_slices())
        frame = labels[rows, cols]
        step = FAKE // 2
        for y in range(0, frame.shape[0] - FAKE, step):
            free = [x for x in range(0, frame.shape[1] - FAKE, step)
                    if not frame[y:y + FAKE, x:x + FAKE].any()]
            if free:
                frame[y:y + FAKE, free[0]:free[0] + FAKE] = int(labels.max()) + 1
                break
    return paint_annotation(labels, layout=layout, seed=seed, **kw)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("consensus-prepared"), SETTINGS)


@pytest.fixture(scope="module")
def job(example: Example) -> Iterator[tuple[Any, Config]]:
    with emulated_job(example, api_key="consensus-key", seed=SEED, crowd=CROWD,
                      painter=_careless) as served:
        yield served


@pytest.fixture
def cfg(job: tuple[Any, Config], example: Example, tmp_path: Path) -> Config:
    dest = tmp_path / "work"
    shutil.copytree(example.config.base, dest)
    save_config(job[1].model_copy(update={"base": dest, "raw": None}),
                dest / "cellcrowd.toml")
    return load_config(dest / "cellcrowd.toml")


def _fake_judgments(server: Any, job_id: int) -> dict[str, str]:
    """Montage -> id of the judgment that painted a cell that is not there."""
    crowd = server.jobs[job_id]
    out = {}
    for index, j in enumerate(crowd.judgments):
        if index % 3 == 0:
            out[crowd.units_by_id[j.unit_id].montage] = str(j.judgment_id)
    return out


def test_several_annotators_are_merged_into_the_truth(
    job: tuple[Any, Config], cfg: Config
) -> None:
    server, _ = job
    fakes = _fake_judgments(server, cfg.job_id)
    # One montage loses its careless judgment to a failed download: merged from two.
    crowd = server.jobs[cfg.job_id]
    two = sorted(fakes)[0]
    server.missing_annotations = frozenset({int(fakes[two])})
    try:
        summary = run(cfg)
    finally:
        server.missing_annotations = frozenset()
    wf = pipeline.working_folder(cfg)
    judgments = read_report(wf.report_csv(cfg.job_id))
    montages = sorted({j.montage for j in judgments})
    assert len(montages) == 8
    assert all(sum(j.montage == m for j in judgments) == 3 for m in montages)

    clean = summary.stage("clean")
    assert clean.counts["montages_merged"] == clean.counts["cleaned"] == 8
    assert clean.counts["cells_dropped"] == 7
    assert clean.counts["judgments_left_out"] == 1
    assert 0 < clean.counts["mean_agreement_pct"] < 100  # the careless workers disagree
    skipped = {u.unit: u.reason for u in clean.skipped}
    unit = next(j.unit_id for j in crowd.judgments if str(j.judgment_id) == fakes[two])
    assert skipped.pop(f"{two} (unit {unit}, judgment {fakes[two]})").startswith(
        "download failed")

    for montage in montages:
        labels = read_image(wf.label_path(montage))
        assert same_up_to_relabel(labels, read_image(wf.truth_path(montage))), montage
        assert wf.label_path(montage) in clean.outputs
        report = json.loads(wf.consensus_report_path(montage).read_text())
        assert wf.consensus_report_path(montage) in clean.outputs
        assert report["montage"] == montage
        ids = [j["judgment_id"] for j in report["judgments"]]
        for j in report["judgments"]:
            cleaned = wf.judgment_label_path(montage, j["unit_id"], j["judgment_id"])
            assert cleaned.is_file()
            assert cleaned in clean.outputs
            assert cleaned.name == j["labels"]
        assert report["consensus_cells"] == len(np.unique(labels)) - 1
        if montage == two:
            assert report["annotators"] == 2
            assert fakes[montage] not in ids
            assert report["dropped"] == []
            assert report["mean_agreement"] == 1.0
            continue
        assert report["annotators"] == 3
        (drop,) = report["dropped"]
        assert ids[drop["annotator"]] == fakes[montage]
        assert drop["pixels"] == FAKE * FAKE
        assert report["mean_agreement"] < 1.0
        key = f"{montage}: cell {drop['label']} of judgment {fakes[montage]}"
        assert skipped.pop(key) == ("dropped: found by 1 of 3 annotators (more than 50% of "
                                    "them, or reliable enough ones, needed)")
    assert skipped == {}  # nothing else was left out

    # The rerun retries the failed download, which now works: the montage is merged from
    # three judgments, the careless cell dropped, and the labels (so the movies) stay.
    labels = wf.label_path(two).read_bytes()
    again = run(cfg)
    # (the OME-Zarr and GEFF carry the consensus' agreement, so they follow the clean stage)
    assert again.ran == ["fetch", "clean", "movies", "omezarr", "geff", "qc"]
    assert again.stage("clean").counts["cells_dropped"] == 8
    assert json.loads(wf.consensus_report_path(two).read_text())["annotators"] == 3
    assert wf.label_path(two).read_bytes() == labels
    assert run(cfg).ran == []


def test_consensus_off_cleans_the_chosen_annotation_as_before(
    job: tuple[Any, Config], cfg: Config, tmp_path: Path
) -> None:
    run(cfg, until_stage="clean")
    wf = pipeline.working_folder(cfg)
    merged = sorted(wf.labels.glob("*_consensus.json"))
    assert len(merged) == 8
    single = cfg.with_overrides({"clean.consensus": False})
    st = status(single).stage("clean")
    assert st.state == "stale"
    assert "settings changed: consensus" in st.reason
    summary = run(single, until_stage="clean")
    clean = summary.stage("clean")
    assert clean.status == "ran"
    assert "montages_merged" not in clean.counts
    assert clean.skipped == ()
    # Only the label montages, each the chosen annotation cleaned, and what cleaning did;
    # the consensus files go.
    labels = sorted(wf.labels.glob("*_labels.png"))
    assert sorted(clean.outputs) == sorted([*labels, wf.clean_stats_path])
    assert not wf.consensus_workers_path.exists()
    assert not any(p.exists() for p in merged)
    assert not any(wf.labels.glob("judgments/*.png"))
    log = read_montage_log(wf.montage_log)
    with_fake = 0
    for path in labels:
        montage = path.name[: -len("_labels.png")]
        expected = tmp_path / f"{montage}.png"
        clean_annotation_file(wf.annotation_path(montage), expected, montage_log=log)
        np.testing.assert_array_equal(read_image(path), read_image(expected))
        with_fake += not same_up_to_relabel(read_image(path), read_image(wf.truth_path(montage)))
    # The fetch stage chose the most trusted worker: sometimes the careless one.
    fakes = _fake_judgments(job[0], cfg.job_id)
    judgments = read_report(wf.report_csv(cfg.job_id))
    chosen_careless = sum(
        max((j for j in judgments if j.montage == m), key=lambda j: j.trust or 0).judgment_id
        == fakes[m] for m in fakes)
    assert with_fake == chosen_careless


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        pytest.param("clean.min_iou", 0, "clean.min_iou", id="iou-zero"),
        pytest.param("clean.min_iou", 1.5, "clean.min_iou", id="iou-above-one"),
        pytest.param("clean.min_support", 1.0, "clean.min_support", id="support-one"),
        pytest.param("clean.min_support", -0.1, "clean.min_support", id="support-negative"),
        pytest.param("clean.consensus", "maybe", "clean.consensus", id="consensus-not-bool"),
    ],
)
def test_consensus_settings_are_validated(key: str, value: object, match: str) -> None:
    cfg = Config(base=Path("/data"), identifier="exp", job_id=1)
    with pytest.raises(ConfigError, match=match):
        cfg.with_overrides({key: value})


def test_consensus_settings_defaults_example_and_fingerprint(cfg: Config) -> None:
    import tomllib

    clean = tomllib.loads(example_config())["clean"]
    assert (clean["consensus"], clean["min_iou"], clean["min_support"]) == (True, 0.5, 0.5)
    assert tomllib.loads(example_config())["outputs"]["qc"] is True
    defaults = Config(base=Path("/data"), identifier="exp", job_id=1).clean
    assert (defaults.consensus, defaults.min_iou, defaults.min_support) == (True, 0.5, 0.5)
    single = cfg.with_overrides({"clean.consensus": False})
    for key, value in (("min_iou", 0.7), ("min_support", 0.3)):
        settings = clean_stage.STAGE.settings(cfg.with_overrides({f"clean.{key}": value}))
        assert settings[key] == value
        assert settings != clean_stage.STAGE.settings(cfg)
        # without the consensus the thresholds are unused, and changing them redoes nothing
        assert clean_stage.STAGE.settings(single.with_overrides(
            {f"clean.{key}": value})) == clean_stage.STAGE.settings(single)


def _report(weights: tuple[float, ...], dropped: DroppedCell, finders: int
            ) -> ConsensusReport:
    return ConsensusReport(annotators=len(weights), weights=weights,
                           cells_per_annotator=(1,) * len(weights), consensus_cells=0,
                           dropped=(dropped,), agreement=(), min_support=0.5,
                           finders=(finders,))


class _J:
    def __init__(self, judgment_id: str) -> None:
        self.judgment_id = judgment_id


@pytest.mark.parametrize(
    ("weights", "cell", "finders", "reason"),
    [
        pytest.param((0.9, 0.6, 0.8), DroppedCell(1, 4, 30, 0.6 / 2.3), 1,
                     "dropped: found by 1 of 3 annotators (more than 50% of the weight needed)",
                     id="trust-weighted"),
        pytest.param((1.0, 1.0, 1.0, 1.0), DroppedCell(0, 2, 12, 0.5), 2,
                     "dropped: found by 2 of 4 annotators (more than 50% of the weight needed)",
                     id="half-is-not-enough"),
        # 3 of 6 (the weights alone cannot tell 0 and 1 from 0, 2 and 3); weight 0 is out
        pytest.param((1.0, 2.0, 1.0, 1.0, 1.0, 0.0), DroppedCell(0, 3, 9, 0.5), 3,
                     "dropped: found by 3 of 5 annotators (more than 50% of the weight needed)",
                     id="count-from-the-consensus"),
        pytest.param((1.0, 1.0, 1.0), DroppedCell(2, 7, 20, 2 / 3, "overruled"), 2,
                     "dropped: found by 2 of 3 annotators, but other cells won every one of "
                     "its pixels", id="overruled"),
    ],
)
def test_dropped_cells_are_named(
    weights: tuple[float, ...], cell: DroppedCell, finders: int, reason: str
) -> None:
    js: list[Any] = [_J(f"j{i}") for i in range(len(weights))]
    (unit,) = dropped_units("m", js, _report(weights, cell, finders), "vote")
    assert unit.stage == "clean"
    assert unit.unit == f"m: cell {cell.label} of judgment j{cell.annotator}"
    assert unit.reason == reason


def test_review_lists_units_with_low_agreement_or_no_labels(
    job: tuple[Any, Config], cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    from cellcrowd.cli import main

    run(cfg, until_stage="clean")
    wf = pipeline.working_folder(cfg)
    judgments = read_report(wf.report_csv(cfg.job_id))
    rows = {j.montage: (j.identifier, j.image_url) for j in judgments}
    agreement = {m: json.loads(wf.consensus_report_path(m).read_text())["mean_agreement"]
                 for m in rows}
    threshold = float(np.median(list(agreement.values())))
    failed = sorted(rows)[-1]
    wf.label_path(failed).unlink()  # as if its consensus had failed
    config = str(cfg.base / "cellcrowd.toml")
    assert main(["review", config, "--set", f"clean.min_agreement={threshold}"]) == 0
    out = capsys.readouterr().out
    expected = sorted({m for m, a in agreement.items() if a < threshold} | {failed})
    assert 0 < len(expected) < len(rows)
    lines = wf.review_csv(cfg.job_id).read_text().splitlines()
    assert lines[0] == "identifier,image_url"
    assert lines[1:] == [",".join(rows[m]) for m in expected]
    assert f"{failed}: failed: no clean labels" in out
    assert f"{len(expected)} unit(s) to upload again" in out
    # Nothing below 0 agreement and every label back: no CSV, the old one removed.
    run(cfg, until_stage="clean")
    assert main(["review", config, "--set", "clean.min_agreement=0"]) == 0
    assert "nothing to review" in capsys.readouterr().out
    assert not wf.review_csv(cfg.job_id).exists()


def test_review_names_an_unreadable_consensus_report(cfg: Config) -> None:
    from cellcrowd.review import write_review_csv

    run(cfg, until_stage="clean")
    wf = pipeline.working_folder(cfg)
    broken = sorted(wf.labels.glob("*_consensus.json"))[0]
    broken.write_text("{}")
    with pytest.raises(InputError, match=r"unreadable consensus report .*'mean_agreement'"):
        write_review_csv(wf, cfg.job_id)
