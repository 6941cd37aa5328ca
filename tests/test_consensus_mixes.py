"""The consensus beats every single annotator on emulator jobs with careful and careless workers.

Each job (8 montages of 5 frames of 80x80 tiles, real-looking nuclei) is served by the
emulator; its workers draw in the styles of :mod:`cellcrowd.sim.annotators`
(careful: about 1 px of boundary noise; careless: 15 % of cells missed, 7 % of
neighbouring pairs merged, 2-3 px sloppy borders, specks), every defect drawn at
random, and their report trust is random (0.6-0.99), unrelated to their style.
``cellcrowd run`` harvests the job up to the clean stage with the default
``[clean] strategy = "reliability"``.

For every worker, over the units that worker did, the consensus must have an object
F1 (cells paired by Hungarian assignment, matched at IoU >= 0.5 against the truth)
and a mean IoU (over truth cells) at least those of the worker; the careless
workers must get the lowest reliability. The mixes: three workers of whom one is
careless; two per unit from a pool of two careful and one careless (a careful and a
careless one disagree on most units); five workers of whom three are careless.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd import pipeline
from cellcrowd.agreement import annotator_agreement
from cellcrowd.cellmatch import compact
from cellcrowd.config import Config, load_config
from cellcrowd.files import read_image
from cellcrowd.pipeline import run
from cellcrowd.sim.annotators import CAREFUL, CARELESS, AnnotatorStyle
from cellcrowd.sim.crowd import CrowdConfig
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config

SETTINGS = ExampleSettings(frames=10, shape=(150, 150), cells=10, divisions=1,
                           montage_len=5, row_length=5, seed=3)
MIXES: dict[str, tuple[tuple[AnnotatorStyle, ...], int]] = {
    "3 with one careless": ((CAREFUL, CAREFUL, CARELESS), 3),
    "2 that disagree": ((CAREFUL, CAREFUL, CARELESS), 2),
    "5 with a careless majority": ((CAREFUL, CAREFUL, CARELESS, CARELESS, CARELESS), 5),
}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("mixes-prepared"), SETTINGS)


def _score(truths: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[float, float]:
    """Object F1 at IoU 0.5 and mean IoU over the truth cells, pooled over montages."""
    matched = truth_cells = found_cells = 0
    iou_sum = 0.0
    for truth, label in zip(truths, labels, strict=True):
        t, p = compact(truth.ravel()), compact(label.ravel())
        a = annotator_agreement(0, 1.0, t, p)
        matched += a.matched
        truth_cells += t.count
        found_cells += p.count
        iou_sum += a.mean_iou * t.count
    return 2 * matched / (truth_cells + found_cells), iou_sum / truth_cells


@pytest.fixture(scope="module", params=list(MIXES))
def harvested(request: pytest.FixtureRequest, example: Example,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Config]]:
    styles, per_unit = MIXES[request.param]
    crowd = CrowdConfig(workers_per_unit=(per_unit, per_unit), pool_size=len(styles),
                        tainted_share=0.0, broken_share=0.0, reupload=False, styles=styles)
    with emulated_job(example, api_key="mixes-key", seed=7, crowd=crowd) as (server, cfg):
        dest = tmp_path_factory.mktemp("mix") / "work"
        shutil.copytree(example.config.base, dest)
        save_config(cfg.model_copy(update={"base": dest, "raw": None}), dest / "cellcrowd.toml")
        cfg = load_config(dest / "cellcrowd.toml")
        run(cfg, until_stage="clean")
        yield request.param, server.jobs[cfg.job_id], cfg


def test_consensus_beats_every_single_annotator(harvested: tuple[str, Any, Config]) -> None:
    mix, crowd, cfg = harvested
    wf = pipeline.working_folder(cfg)
    by_worker: dict[str, list[tuple[str, Path]]] = {}
    style = {}
    for j in crowd.judgments:
        montage = crowd.units_by_id[j.unit_id].montage
        worker = str(j.worker.worker_id)
        style[worker] = j.worker.style
        by_worker.setdefault(worker, []).append(
            (montage, wf.judgment_label_path(montage, j.unit_id, j.judgment_id)))
    workers = json.loads(wf.consensus_workers_path.read_text())
    reliability = {w["worker_id"]: w["reliability"] for w in workers["workers"]}
    print(f"\n{mix}: worker style reliability | single F1 IoU | consensus F1 IoU")
    for worker, done in sorted(by_worker.items()):
        truths = [read_image(wf.truth_path(m)) for m, _ in done]
        single = _score(truths, [read_image(p) for _, p in done])
        merged = _score(truths, [read_image(wf.label_path(m)) for m, _ in done])
        print(f"  {worker} {style[worker]:8} {reliability[worker]:.3f} | "
              f"{single[0]:.3f} {single[1]:.3f} | {merged[0]:.3f} {merged[1]:.3f}")
        assert merged[0] >= single[0], (mix, worker, "F1")
        assert merged[1] >= single[1], (mix, worker, "mean IoU")
    careless = [reliability[w] for w in by_worker if style[w] == "careless"]
    careful = [reliability[w] for w in by_worker if style[w] == "careful"]
    assert max(careless) < min(careful)
    assert {u["montage"] for u in workers["units"]} == {m for d in by_worker.values()
                                                          for m, _ in d}
