"""The QC page of a 1,000-montage job, rendered in headless Chromium.

The job's working folder is written directly (fast, no service): ``prepare`` cuts a
synthetic movie into 1,000 small montages; the cleaned labels are the truth
montages, except for units given defects drawn at random: broken links, failed
downloads, empty labels, extra cells, and a consensus of three workers (one of
them careless by a random amount) with its report beside the labels. The page is
loaded from disk with JavaScript on; the test reads the DOM after the script ran
and writes a screenshot of the top of the page next to it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellcrowd.consensus import merge_label_files
from cellcrowd.files import read_image, write_image
from cellcrowd.labels import clean_annotation_file
from cellcrowd.layout import WorkingFolder
from cellcrowd.logs import read_montage_log
from cellcrowd.prepare import prepare
from cellcrowd.qc import PAGE_SIZE, collect_qc, write_qc
from cellcrowd.sim.synthetic import paint_annotation, synthetic_movie, write_movie_frames

JOB = 77
FRAMES, LENGTH = 500, 2  # 2x2 positions x 250 montages = 1,000 units
WORKERS = ("w01", "w02", "w03", "w04", "w05")
@dataclass(frozen=True)
class Job:
    wf: WorkingFolder
    names: list[str]
    broken: set[str]
    failed: set[str]
    empty: set[str]
    crowded: set[str]
    merged: dict[str, float]  # montage -> mean agreement (F1) of its workers
    cleaned: dict[str, tuple[int, int]]  # montage -> (pixels removed, pixels filled)


def _merge(wf: WorkingFolder, name: str, truth: np.ndarray, layout: object,
           rng: np.random.Generator, index: int) -> float:
    """Three workers' labels (one misses a random share of cells), merged; report written."""
    workers = rng.choice(len(WORKERS), 3, replace=False)
    paths = []
    for k in range(3):
        labels = truth.copy()
        if k == 2:  # careless: misses each cell with a probability drawn from 0..0.9
            ids = np.unique(truth[truth > 0])
            labels[np.isin(labels, ids[rng.random(ids.size) < rng.uniform(0, 0.9)])] = 0
        path = wf.judgment_label_path(name, index, 10 * index + k)
        write_image(path, labels.astype(np.uint16))
        paths.append(path)
    report = merge_label_files(paths, wf.label_path(name), layout=layout)  # type: ignore[arg-type]
    used = [a.f1 for a in report.agreement if a.weight > 0]
    mean = sum(used) / len(used)
    judgments = [{"unit_id": index, "judgment_id": 10 * index + k,
                  "worker_id": WORKERS[w], "trust": 0.9, "tainted": False,
                  "labels": p.name} for k, (w, p) in enumerate(zip(workers, paths, strict=True))]
    wf.consensus_report_path(name).write_text(json.dumps(
        {"montage": name, "judgments": judgments, "mean_agreement": mean,
         **report.to_dict()}), encoding="utf-8")
    return mean


def _defects(names: list[str], rng: np.random.Generator) -> list[set[str]]:
    """Disjoint random sets of units: broken, failed, empty, crowded, merged, cleaned."""
    order = list(rng.permutation(names))
    sizes = [int(rng.integers(3, 9)) for _ in range(4)] + [30, 40]
    out, start = [], 0
    for size in sizes:
        out.append(set(order[start:start + size]))
        start += size
    return out


def _write_job_csvs(wf: WorkingFolder, broken: set[str], failed: set[str]) -> None:
    with open(wf.broken_links_csv(JOB), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["_unit_id", "_id", "image_url", "broken_link"])
        writer.writerows([[i, i, f"https://bucket.example/{n}.png", "true"]
                          for i, n in enumerate(sorted(broken))])
    with open(wf.failures_csv(JOB), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["montage", "unit", "judgment", "url", "reason"])
        writer.writerows([[n, i, i, f"https://x.example/{i}.png", "HTTP 500"]
                          for i, n in enumerate(sorted(failed))])


def _crowd(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The truth with up to 24 extra 3x3 cells, each on empty ground."""
    labels = truth.astype(np.uint16)
    top = int(labels.max())
    for _ in range(int(rng.integers(8, 25))):
        y, x = (int(rng.integers(0, s - 3)) for s in labels.shape)
        if not labels[y:y + 3, x:x + 3].any():
            top += 1
            labels[y:y + 3, x:x + 3] = top
    return labels


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    base = tmp_path_factory.mktemp("qc1000") / "job"
    movie = synthetic_movie(frames=FRAMES, shape=(64, 64), cells=8, divisions=0, seed=5)
    write_movie_frames(movie, base / "raw")
    result = prepare(base / "raw", WorkingFolder(base, "big"), num_x=2, num_y=2,
                     overlap_perc=0, montage_len=LENGTH, row_length=2, truth=movie.labels)
    wf, log = result.wf, read_montage_log(result.wf.montage_log)
    names = [wf.montage_name(k) for k in result.montages]
    rng = np.random.default_rng(12)
    broken, failed, empty, crowded, merged, cleaned = _defects(names, rng)
    wf.labels.mkdir(parents=True)
    agreements, stats = {}, {}
    for i, name in enumerate(names):
        if name in broken | failed:
            continue  # no annotation came back
        truth = read_image(wf.truth_path(name))
        if name in merged:
            agreements[name] = _merge(wf, name, truth, result.layout, rng, i)
        elif name in cleaned:  # a painted annotation, really cleaned
            write_image(wf.annotation_path(name), paint_annotation(truth, layout=result.layout,
                                                                    seed=i))
            s = clean_annotation_file(wf.annotation_path(name), wf.label_path(name),
                                      montage_log=log)
            stats[name] = (s.pixels_removed, s.pixels_filled)
        else:
            labels = _crowd(truth, rng) if name in crowded else truth * (name not in empty)
            Image.fromarray(labels.astype(np.uint16)).save(wf.label_path(name))
    wf.clean_stats_path.write_text(json.dumps({"version": 1, "montages": {
        n: {"pixels_removed": r, "pixels_filled": f} for n, (r, f) in stats.items()}}))
    wf.consensus_workers_path.write_text(json.dumps({"workers": [
        {"worker_id": w, "reliability": round(float(rng.uniform(0.3, 1.0)), 3)}
        for w in WORKERS]}))
    _write_job_csvs(wf, broken, failed)
    return Job(wf, names, broken, failed, empty, crowded, agreements, stats)


class _Dom(HTMLParser):
    """Unit rows (data-unit, data-kinds, hidden), section ids, svg ids and polylines."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.units: list[tuple[str, str, bool]] = []
        self.ids: set[str] = set()
        self.svgs: list[str] = []
        self.polylines: dict[str, int] = {}
        self.page_text = ""
        self._in_page = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if attr.get("id"):
            self.ids.add(str(attr["id"]))
        if tag == "tr" and "data-unit" in attr:
            self.units.append((str(attr["data-unit"]), str(attr.get("data-kinds")),
                               "hidden" in attr))
        elif tag == "svg":
            self.svgs.append(str(attr.get("id")))
        elif tag == "polyline" and self.svgs:
            self.polylines[self.svgs[-1]] = self.polylines.get(self.svgs[-1], 0) + 1
        self._in_page = attr.get("id") == "unit-page"

    def handle_data(self, data: str) -> None:
        if self._in_page:
            self.page_text += data


@pytest.fixture(scope="module")
def page(job: Job, browse: Callable[..., str], tmp_path_factory: pytest.TempPathFactory) -> _Dom:
    files = write_qc(collect_qc(job.wf, job_id=JOB))
    url = files.index.resolve().as_uri()
    tmp = tmp_path_factory.mktemp("chromium")
    dom = _Dom(browse(tmp, "--dump-dom", url))
    shot = files.index.with_name("top.png")
    browse(tmp, f"--screenshot={shot}", "--window-size=1280,1600", url)
    return dom


def test_every_unit_is_on_the_page_and_paged(job: Job, page: _Dom) -> None:
    assert len(job.names) == 1000
    assert sorted(u for u, _, _ in page.units) == sorted(job.names)
    shown = [u for u, _, hidden in page.units if not hidden]
    assert len(shown) == PAGE_SIZE  # the script ran: one page of units showing
    assert page.units[:PAGE_SIZE] == [(u, k, False) for u, k, _ in page.units[:PAGE_SIZE]]
    assert re.fullmatch(rf"units 1–{PAGE_SIZE} of 1000 \(page 1 of {1000 // PAGE_SIZE}\)",
                        page.page_text.strip())


def test_units_that_need_a_look_come_first(job: Job, page: _Dom) -> None:
    kinds = {u: set(k.split(" ")) - {""} for u, k, _ in page.units}
    flagged = [bool(kinds[u]) for u, _, _ in page.units]
    assert flagged == sorted(flagged, reverse=True)  # every unit with a problem first
    for planted, kind in ((job.broken, "broken"), (job.failed, "failed"),
                          (job.empty, "empty"), (job.crowded, "cell")):
        assert all(kind in " ".join(kinds[u]) for u in planted), kind
    low = {u for u, a in job.merged.items() if a < 0.7}
    assert {u for u in job.merged if "agreement" in kinds[u]} == low
    assert 0 < len(low) < len(job.merged)  # the careless worker's misses span the threshold


def test_sections_plots_and_tables(job: Job, page: _Dom) -> None:
    for section in ("advice", "plots", "units", "workers", "stages", "parts", "job",
                    "stitched", "exports"):
        assert f"{section}-section" in page.ids
    assert {"plot-cells", "plot-agreement", "plot-workers"} <= set(page.svgs)
    assert page.polylines["plot-cells"] == 4  # one line per position
    rows = list(csv.DictReader(job.wf.qc_units_csv.read_text(encoding="utf-8").splitlines()))
    assert [r["montage"] for r in rows] == [u for u, _, _ in page.units]
    by_name = {r["montage"]: r for r in rows}
    for name, (removed, filled) in job.cleaned.items():
        assert (by_name[name]["pixels removed"], by_name[name]["pixels filled"]) == (
            str(removed), str(filled))
    broken = by_name[sorted(job.broken)[0]]
    assert job.wf.reupload_csv(JOB).name in broken["advice"]
    assert "cannot help" in broken["advice"]
    workers = list(csv.DictReader(job.wf.qc_workers_csv.read_text(encoding="utf-8").splitlines()))
    listed = json.loads(job.wf.consensus_workers_path.read_text())["workers"]
    assert {w["worker"]: float(w["reliability"]) for w in workers} == {
        w["worker_id"]: w["reliability"] for w in listed}
    seen = {j["worker_id"] for m in job.merged
            for j in json.loads(job.wf.consensus_report_path(m).read_text())["judgments"]}
    assert {w["worker"] for w in workers if w["agreement"]} == seen


def test_screenshot_of_the_top_of_the_page(job: Job, page: _Dom) -> None:
    with Image.open(job.wf.qc / "top.png") as im:
        assert im.size == (1280, 1600)
        grey = np.asarray(im.convert("L"))
    assert grey.std() > 10  # text and plots, not a blank page


def test_the_filter_shows_the_units_of_one_kind(job: Job, page: _Dom,
                                                 browse: Callable[..., str],
                                                 tmp_path: Path) -> None:
    # A copy of the page that picks "broken" in the filter, as a person would.
    pick = ('<script>var k = document.getElementById("unit-kind"); k.value = "broken"; '
            "k.onchange();</script></body>")
    copy = job.wf.qc / "filtered.html"
    copy.write_text(job.wf.qc_index.read_text(encoding="utf-8").replace("</body>", pick),
                    encoding="utf-8")
    try:
        dom = _Dom(browse(tmp_path, "--dump-dom", copy.resolve().as_uri()))
    finally:
        copy.unlink()
    assert {u for u, _, hidden in dom.units if not hidden} == job.broken
    assert dom.page_text.strip().endswith(f"of {len(job.broken)} (page 1 of 1)")
