"""Tests of the QC report: numbers checked against the files, overlays, escaping, missing stages."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from cellcrowd.errors import InputError
from cellcrowd.executor import LocalExecutor
from cellcrowd.export.npz import write_parts_npz
from cellcrowd.files import read_image, write_image
from cellcrowd.job import Job
from cellcrowd.labels import CleanResult, CleanStats, clean_annotation_file
from cellcrowd.layout import MontageKey, WorkingFolder, part_of_montage
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.prepare import prepare
from cellcrowd.qc import (
    PALETTE,
    PANEL_GAP,
    THUMB_SIDE,
    WorkerQc,
    cells_per_frame,
    collect_qc,
    fill_overlay,
    outline_overlay,
    overlay_panels,
    stretch_to_uint8,
    thumbnail,
    write_qc,
    write_qc_report,
)
from cellcrowd.sim.synthetic import paint_annotation, synthetic_movie, write_movie_frames

JOB = 4242
FRAMES, LENGTH, ROW = 6, 4, 2  # two parts: 4 frames, then 2 (a partial montage)
SKIPPED = (1, 1, 1)  # x, y, montage left without annotation/labels
EVIL = "<script>alert('qc')</script>"
BROKEN = ("exp_x_01_y_00_montage_01", "exp_x_00_y_01_montage_00")  # in the fixture's CSV


# -- reading the page back --------------------------------------------------------------------


class _Page(HTMLParser):
    """Tables (by id, rows of cell texts), list items (by list id), images, all text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.lists: dict[str, list[str]] = {}
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._list: str | None = None
        self._item: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if attr.get("id"):
            self.ids.append(str(attr["id"]))
        if tag == "table":
            self._table = str(attr.get("id"))
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "ul":
            self._list = str(attr.get("id"))
            self.lists[self._list] = []
        elif tag == "li":
            self._item = []
        elif tag == "img":
            self.images.append(attr)
        elif tag == "a" and attr.get("href"):
            self.links.append(unquote(str(attr["href"])))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._item is not None and self._list is not None:
            self.lists[self._list].append("".join(self._item).strip())
            self._item = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._item is not None:
            self._item.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        header, *body = self.tables[table]
        return [dict(zip(header, row, strict=True)) for row in body]

    @property
    def text(self) -> str:
        return "".join(self.texts)


def _page(wf: WorkingFolder) -> _Page:
    return _Page(wf.qc_index.read_text(encoding="utf-8"))


# -- a small harvested working folder -----------------------------------------------------------


@dataclass(frozen=True)
class Harvest:
    wf: WorkingFolder
    labels: np.ndarray  # the synthetic movie's label frames (T, H, W)
    stats: dict[str, CleanStats]


def _build(base: Path, identifier: str = "exp", *, harvest: bool = True) -> Harvest:
    movie = synthetic_movie(frames=FRAMES, shape=(64, 64), cells=5, divisions=1, seed=3)
    write_movie_frames(movie, base / "raw")
    result = prepare(base / "raw", WorkingFolder(base, identifier), num_x=2, num_y=2,
                     overlap_perc=10, montage_len=LENGTH, row_length=ROW, truth=movie.labels)
    wf = result.wf
    stats: dict[str, CleanStats] = {}
    if not harvest:
        return Harvest(wf, movie.labels, stats)
    log = read_montage_log(wf.montage_log)
    for i, key in enumerate(result.montages):
        if (key.x, key.y, key.montage) == SKIPPED:
            continue
        name = wf.montage_name(key)
        truth = read_image(wf.truth_path(name)).astype(np.int32)
        write_image(wf.annotation_path(name), paint_annotation(truth, layout=result.layout,
                                                                seed=i))
        stats[name] = clean_annotation_file(wf.annotation_path(name), wf.label_path(name),
                                            montage_log=log)
    montages_to_movies(wf)
    raw_to_movies(wf)
    write_parts_npz(wf)
    for t, frame in enumerate(movie.labels):  # the stitched movie: the ground truth itself
        write_image(wf.stitched_frame("annotated", t), frame.astype(np.uint16))
    return Harvest(wf, movie.labels, stats)


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture(scope="module")
def harvest(tmp_path_factory: pytest.TempPathFactory) -> Harvest:
    h = _build(tmp_path_factory.mktemp("qc") / "job")
    wf = h.wf
    url = "https://bucket.example/exp_x_1_y_0_montage_1.png"
    _write_csv(wf.broken_links_csv(JOB), [
        ["_unit_id", "_id", "image_url", "broken_link"],
        ["11", "101", url, "true"], ["11", "102", url, "true"],
        ["12", "103", "https://bucket.example/exp_x_0_y_1_montage_0.png", "true"],
    ])
    _write_csv(wf.failures_csv(JOB), [
        ["montage", "unit", "judgment", "url", "reason"],
        ["exp_x_00_y_00_montage_00", "7", "70", "https://x.example/a.png?key=SECRET123",
         EVIL],
    ])
    write_qc_report(wf, job_id=JOB, summary={"clean": h.stats, "note": EVIL,
                                             "generated": "2024-01-02 03:04"})
    return h


def _frames_of(montage: np.ndarray, real: int) -> np.ndarray:
    """Cut a montage of LENGTH frames, ROW per row, no buffers, by hand."""
    rows = -(-LENGTH // ROW)
    h, w = montage.shape[0] // rows, montage.shape[1] // ROW
    return np.stack([montage[(k // ROW) * h:(k // ROW + 1) * h, (k % ROW) * w:(k % ROW + 1) * w]
                     for k in range(real)])


def _distinct(a: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(a)))


# -- the numbers ------------------------------------------------------------------------------


def test_montage_table_matches_the_label_files(harvest: Harvest) -> None:
    wf = harvest.wf
    rows = {r["montage"]: r for r in _page(wf).rows("units")}
    keys = [MontageKey("exp", x, y, m) for m in range(2) for x in range(2) for y in range(2)]
    assert sorted(rows) == sorted(wf.montage_name(k) for k in keys)
    for key in keys:
        name = wf.montage_name(key)
        row = rows[name]
        assert (row["part"], row["position"]) == (str(key.part),
                                                  f"x_{key.x:02d}_y_{key.y:02d}")
        if (key.x, key.y, key.montage) == SKIPPED:
            assert (row["annotation"], row["cleaned labels"], row["cells"]) == ("no", "no", "—")
            continue
        labels = np.asarray(Image.open(wf.label_path(name)))
        real = min(LENGTH, FRAMES - LENGTH * key.montage)
        per_frame = [_distinct(f) for f in _frames_of(labels, real)]
        assert row["raw montage"] == row["annotation"] == row["cleaned labels"] == "yes"
        assert int(row["cells"]) == _distinct(labels)
        assert (int(row["min cells/frame"]), int(row["max cells/frame"])) == (
            min(per_frame), max(per_frame))
        assert int(row["pixels removed"]) == harvest.stats[name].pixels_removed
        assert int(row["pixels filled"]) == harvest.stats[name].pixels_filled
        assert "broken link" not in row["problem"]  # its other judgments were used
        assert "unusable" not in row["needs"]


def test_last_partial_montage_counts_only_its_real_frames(harvest: Harvest) -> None:
    wf = harvest.wf
    name = wf.montage_name(MontageKey("exp", 0, 0, 1))
    row = {r["montage"]: r for r in _page(wf).rows("units")}[name]
    # Frames 2 and 3 of the last montage are blank cells: a min of 0 would be wrong.
    assert int(row["min cells/frame"]) > 0


def test_parts_table_matches_movies_and_npz(harvest: Harvest) -> None:
    wf = harvest.wf
    rows = {int(r["part"]): r for r in _page(wf).rows("parts")}
    first, second = part_of_montage(0), part_of_montage(1)
    assert sorted(rows) == [first, second]
    for part, row in rows.items():
        part_dir = wf.part_dir(part)
        annotated = sorted(p.parent.name for p in part_dir.glob("*/annotated")
                           if any(p.iterdir()))
        raw = sorted(p.parent.name for p in part_dir.glob("*/raw") if any(p.iterdir()))
        assert int(row["expected positions"]) == 4
        assert int(row["annotated positions"]) == len(annotated)
        assert int(row["raw positions"]) == len(raw) == 4
        with np.load(wf.npz_part(part)) as data:
            assert row["X shape"] == str(data["X"].shape)
            assert row["y shape"] == str(data["y"].shape)
        assert row["npz"] == wf.npz_part(part).name
    assert rows[first]["missing positions"] == "none"
    assert rows[second]["missing positions"] == "x_01_y_01"
    assert (rows[first]["annotated frames per position"],
            rows[second]["annotated frames per position"]) == ("4", "2")


def test_stitched_table_counts_cells_per_frame(harvest: Harvest) -> None:
    page = _page(harvest.wf)
    expected = [_distinct(frame) for frame in harvest.labels]
    rows = page.rows("stitched")
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert [int(r["cells"]) for r in rows] == expected
    bars = [len(r[""]) for r in rows]
    assert bars[int(np.argmax(expected))] == 30
    spark = re.search(r'id="sparkline">([^<]*)<', harvest.wf.qc_index.read_text("utf-8"))
    assert spark is not None
    assert len(spark[1]) == FRAMES
    assert set(spark[1]) <= set("▁▂▃▄▅▆▇█")
    assert spark[1][int(np.argmax(expected))] == "█"
    assert f"{_distinct(harvest.labels)} distinct cells" in page.text


def test_broken_links_and_failures_are_listed(harvest: Harvest) -> None:
    page = _page(harvest.wf)
    broken = page.rows("broken-links")
    assert [(r["montage"], r["judgments"]) for r in broken] == [
        ("exp_x_00_y_01_montage_00", "1"), ("exp_x_01_y_00_montage_01", "2")]
    (failure,) = page.rows("failures")
    assert failure["reason"] == EVIL
    assert "SECRET123" not in harvest.wf.qc_index.read_text(encoding="utf-8")
    job = {r["stage"]: r for r in page.rows("stages")}["job"]
    assert job["status"] == "partial"
    assert "2 montage(s) with broken links, 1 failed download(s)" in job["details"]


def test_stages_and_missing_list(harvest: Harvest) -> None:
    page = _page(harvest.wf)
    status = {r["stage"]: r["status"] for r in page.rows("stages")}
    assert status == {
        "logs": "done", "montages": "done", "annotations": "partial", "labels": "partial",
        "movies (annotated)": "partial", "movies (raw)": "done", "npz": "done",
        "stitched": "done", "trk": "missing", "ctc": "missing", "job": "partial"}
    skipped = harvest.wf.montage_name(MontageKey("exp", *SKIPPED))
    assert any(skipped in item and "cleaned label" in item for item in page.lists["missing"])


def test_run_summary_is_shown_escaped(harvest: Harvest) -> None:
    text = harvest.wf.qc_index.read_text(encoding="utf-8")
    assert "<script>alert" not in text.lower()
    assert "&lt;script&gt;" in text
    run = {r["item"]: r["value"] for r in _page(harvest.wf).rows("run")}
    assert run["note"] == EVIL
    assert run["generated"] == "2024-01-02 03:04"


# -- overlays ---------------------------------------------------------------------------------


def test_overlays_exist_with_the_right_size_and_pixels(harvest: Harvest) -> None:
    wf = harvest.wf
    page = _page(wf)
    sources = [link for link in page.links if link.endswith("_overlay.png")]
    labelled = sorted(p.name for p in wf.labels.iterdir())
    assert len(sources) == len(labelled) == 7
    thumbs = [unquote(str(img["src"])) for img in page.images]
    assert len(thumbs) == 8  # every unit, the one without labels too (its raw montage)
    for src in thumbs:
        with Image.open(wf.qc / src) as im:
            assert max(im.size) <= THUMB_SIDE
            assert (wf.qc / src).parent in (wf.qc, wf.qc_thumbnail("x").parent)
    for src in sources:
        path = wf.qc / src
        montage = src.removesuffix("_overlay.png")
        labels = np.asarray(Image.open(wf.label_path(montage)))
        with Image.open(path) as im:
            assert im.mode == "RGB"
            assert im.size == (2 * labels.shape[1] + PANEL_GAP, labels.shape[0])
            overlay = np.asarray(im)
        left, right = overlay[:, :labels.shape[1]], overlay[:, labels.shape[1] + PANEL_GAP:]
        coloured = (left[..., 0] != left[..., 1]) | (left[..., 1] != left[..., 2])
        assert not coloured[labels == 0].any()  # outlines lie on cells only
        assert set(np.unique(labels[coloured])) == set(np.unique(labels[labels > 0]))
        painted = np.asarray(Image.open(wf.annotation_path(montage)))[..., 3] != 0
        white = (right == 255).all(axis=2)
        np.testing.assert_array_equal(white, painted & (labels == 0))  # what cleaning removed


def test_overlays_are_evenly_spaced_and_old_ones_removed(harvest: Harvest,
                                                         tmp_path: Path) -> None:
    base = tmp_path / "copy"
    shutil.copytree(harvest.wf.base, base)
    wf = WorkingFolder(base, "exp")
    write_qc_report(wf, max_overlays=3)
    names = [m.name for m in collect_qc(wf).montages if m.labels]
    chosen = [names[0], names[3], names[6]]
    assert sorted(p.name for p in wf.qc.glob("*.png")) == sorted(
        f"{n}_overlay.png" for n in chosen)
    assert sorted(link for link in _page(wf).links if link.endswith("_overlay.png")) == sorted(
        f"{n}_overlay.png" for n in chosen)
    write_qc_report(wf, max_overlays=0)
    assert not list(wf.qc.glob("*.png"))
    page = _page(wf)
    assert not [link for link in page.links if link.endswith("_overlay.png")]
    assert len(page.images) == 8  # thumbnails are never capped


def test_rerun_is_byte_identical(harvest: Harvest, tmp_path: Path) -> None:
    base = tmp_path / "copy"
    shutil.copytree(harvest.wf.base, base)
    wf = WorkingFolder(base, "exp")
    write_qc_report(wf, job_id=JOB, summary={"n": 1})
    first = {p: p.read_bytes() for p in sorted(wf.qc.rglob("*")) if p.is_file()}
    names = [p.name.removesuffix("_labels.png") for p in wf.labels.glob("*_labels.png")]
    assert {wf.qc_index, wf.qc_units_csv, wf.qc_workers_csv} | {
        wf.qc_overlay(n) for n in names} <= set(first)
    write_qc_report(wf, job_id=JOB, summary={"n": 1})
    assert {p: p.read_bytes() for p in sorted(wf.qc.rglob("*")) if p.is_file()} == first


def test_images_drawn_on_worker_processes_are_the_same_files(harvest: Harvest,
                                                              tmp_path: Path) -> None:
    files = {}
    for workers in (1, 2):
        base = tmp_path / str(workers)
        shutil.copytree(harvest.wf.base, base)
        wf = WorkingFolder(base, "exp")
        with LocalExecutor(workers) as executor:
            written = write_qc(collect_qc(wf, job_id=JOB), executor=executor)
            assert workers == 1 or len(executor.worker_pids()) == 2  # a pool drew them
        assert written.overlays
        files[workers] = {p.relative_to(base): p.read_bytes()
                          for p in sorted(wf.qc.rglob("*")) if p.is_file()}
    assert files[1] == files[2]


def test_numbers_read_on_worker_processes_are_the_numbers_read_here(
        harvest: Harvest, tmp_path: Path) -> None:
    """collect_qc's reads (each montage's labels, each stitched frame) on a pool give the
    same summary as here, a broken montage and a broken stitched frame included."""
    base = tmp_path / "copy"
    shutil.copytree(harvest.wf.base, base)
    wf = WorkingFolder(base, "exp")
    broken = wf.montage_name(MontageKey("exp", 0, 0, 0))
    wf.label_path(broken).write_bytes(b"not a png")
    wf.stitched_frame("annotated", 2).write_bytes(b"not a png either")
    here = collect_qc(wf, job_id=JOB)
    with LocalExecutor(2) as executor:
        pooled = collect_qc(wf, job_id=JOB, executor=executor)
        assert len(executor.worker_pids()) == 2
    assert pooled.montages == here.montages
    assert pooled.stitched == here.stitched
    errors = {m.name: m.error for m in here.montages if m.error}
    assert list(errors) == [broken]
    assert "cannot read this image" in errors[broken]
    assert here.stitched is not None
    assert here.stitched.error is not None
    assert here.stitched.cells_per_frame == tuple(
        _distinct(frame) for frame in harvest.labels[:2])  # the frames before the broken one
    assert here.stitched.cells == _distinct(harvest.labels[:2])
    assert [m.cells for m in here.montages if m.name != broken] == [
        m.cells for m in collect_qc(harvest.wf, job_id=JOB).montages if m.name != broken]


# -- partial and broken folders -----------------------------------------------------------------


def test_prepare_only_folder_says_what_is_missing_and_escapes_names(tmp_path: Path) -> None:
    identifier = "bad<img src=x onerror=alert(1)>"
    h = _build(tmp_path / "job", identifier, harvest=False)
    path = write_qc_report(WorkingFolder(tmp_path / "job", identifier))
    text = path.read_text(encoding="utf-8")
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    page = _Page(text)
    status = {r["stage"]: r["status"] for r in page.rows("stages")}
    assert status["logs"] == status["montages"] == "done"
    for stage in ("annotations", "labels", "movies (annotated)", "movies (raw)", "npz",
                  "stitched", "trk", "ctc"):
        assert status[stage] == "missing", stage
    missing = " | ".join(page.lists["missing"])
    for hint in ("cellcrowd fetch", "cellcrowd clean", "cellcrowd movies", "cellcrowd npz",
                 "cellcrowd stitch", "no job id given"):
        assert hint in missing
    rows = page.rows("units")
    assert len(rows) == 8
    assert {r["montage"] for r in rows} == {
        h.wf.montage_name(MontageKey(identifier, x, y, m))
        for x in range(2) for y in range(2) for m in range(2)}
    assert all(r["raw montage"] == "yes" and r["cells"] == "—" for r in rows)
    assert len(page.images) == 8  # thumbnails of the raw montages
    assert not [link for link in page.links if link.endswith("_overlay.png")]


def test_empty_folder_gets_a_report(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    qc = collect_qc(wf)
    assert qc.montages == ()
    assert qc.parts == ()
    assert qc.stitched is None
    assert {s.name: s.status for s in qc.stages}["logs"] == "missing"
    write_qc_report(wf)
    page = _page(wf)
    assert "No montages" in page.text
    assert "No stitched movie" in page.text


def test_unreadable_files_are_reported_not_fatal(harvest: Harvest, tmp_path: Path) -> None:
    base = tmp_path / "copy"
    shutil.copytree(harvest.wf.base, base)
    wf = WorkingFolder(base, "exp")
    name = wf.montage_name(MontageKey("exp", 0, 0, 0))
    wf.label_path(name).write_bytes(b"not a png")
    first, second = part_of_montage(0), part_of_montage(1)
    wf.npz_part(second).write_bytes(b"not an npz")
    rgb = wf.montage_name(MontageKey("exp", 0, 1, 0))
    write_image(wf.label_path(rgb), np.zeros((8, 8, 3), np.uint8))
    np.savez(wf.npz_part(first), X=np.zeros(2))
    write_qc_report(wf)
    page = _page(wf)
    rows = {r["montage"]: r for r in page.rows("units")}
    assert "cannot read this image" in rows[name]["problem"]
    assert "must be a 2-D label image" in rows[rgb]["problem"]
    part1 = {r["part"]: r for r in page.rows("parts")}[str(first)]
    assert "no y array" in part1["problem"]
    part2 = {r["part"]: r for r in page.rows("parts")}[str(second)]
    assert "cannot read" in part2["problem"]
    assert part2["X shape"] == "—"
    assert any("could not be read" in item for item in page.lists["missing"])


def test_clean_results_in_the_summary_fill_the_pixel_columns(harvest: Harvest) -> None:
    wf = harvest.wf
    name = wf.montage_name(MontageKey("exp", 1, 0, 0))
    result = CleanResult(name, wf.annotation_path(name), wf.label_path(name),
                         CleanStats(cells=3, pixels_removed=17, pixels_filled=5))
    qc = collect_qc(wf, summary={"clean": [result]})
    (row,) = [m for m in qc.montages if m.name == name]
    assert (row.pixels_removed, row.pixels_filled) == (17, 5)
    assert all(m.pixels_removed is None for m in qc.montages if m.name != name)
    assert qc.totals()["labels"] == 7
    assert qc.totals()["npz_files"] == 2
    assert qc.stage("npz").status == "done"
    assert any(line.startswith("labels: partial") for line in qc.lines())
    with pytest.raises(KeyError):
        qc.stage("nope")


def test_precollected_summary_is_used(harvest: Harvest, tmp_path: Path) -> None:
    base = tmp_path / "copy"
    shutil.copytree(harvest.wf.base, base)
    wf = WorkingFolder(base, "exp")
    qc = collect_qc(wf, job_id=JOB, max_overlays=1)
    write_qc_report(wf, qc=qc)
    assert len(list(wf.qc.glob("*_overlay.png"))) == 1
    assert "broken-links" in _page(wf).tables


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_overlays": -1}, ValueError, "max_overlays must be 0 or more"),
        ({"job_id": 1, "qc": "placeholder"}, ValueError, "either qc"),
    ],
    ids=["negative-overlays", "qc-and-job-id"],
)
def test_bad_arguments(harvest: Harvest, kwargs: dict[str, object], error: type[Exception],
                       match: str) -> None:
    if kwargs.get("qc") == "placeholder":
        kwargs = {**kwargs, "qc": collect_qc(harvest.wf, max_overlays=0)}
    with pytest.raises(error, match=match):
        write_qc_report(harvest.wf, **kwargs)  # type: ignore[arg-type]


def test_missing_working_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="working folder not found"):
        write_qc_report(WorkingFolder(tmp_path / "nope", "exp"))


# -- array helpers ------------------------------------------------------------------------------


def test_cells_per_frame_matches_unique() -> None:
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 6, (5, 7, 9)).astype(np.uint16)
    stack[2] = 0
    assert cells_per_frame(stack).tolist() == [_distinct(f) for f in stack]


def test_stretch_is_monotonic_and_saturates() -> None:
    image = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    out = stretch_to_uint8(image)
    assert out.dtype == np.uint8
    assert (np.diff(out.ravel().astype(int)) >= 0).all()
    assert out.min() == 0
    assert out.max() == 255
    assert (stretch_to_uint8(np.full((3, 3), 7)) == 0).all()  # flat images do not divide by 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32])
def test_integer_images_stretch_as_their_float_copies(dtype: type) -> None:
    """Integers are not copied to float64 for the percentiles: the stretch is the same."""
    rng = np.random.default_rng(7)
    top = min(int(np.iinfo(dtype).max), 2**31 - 1)
    for _ in range(20):
        shape = tuple(int(v) for v in rng.integers(1, 60, 2))
        image = rng.integers(0, top, shape, endpoint=True).astype(dtype)
        low = float(rng.uniform(0, 50))
        percentiles = (low, float(rng.uniform(low + 0.1, 100)))
        np.testing.assert_array_equal(
            stretch_to_uint8(image, percentiles=percentiles),
            stretch_to_uint8(image.astype(np.float64), percentiles=percentiles))


def test_overlays_do_not_modify_inputs_and_cycle_the_palette() -> None:
    image = np.arange(36, dtype=np.uint16).reshape(6, 6)
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = len(PALETTE) + 1  # wraps round to colour 0
    before = (image.copy(), labels.copy())
    out = outline_overlay(image, labels)
    assert (out[1, 1] == PALETTE[0]).all()
    assert not (out[2, 2] == PALETTE[0]).all()
    filled = fill_overlay(image, labels, alpha=1.0)
    assert (filled[labels > 0] == PALETTE[0]).all()
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cells_per_frame(np.zeros((3, 3), int)), "integer \\(T, H, W\\) stack"),
        (lambda: stretch_to_uint8(np.zeros((2, 2, 2))), "2-D grey image"),
        (lambda: stretch_to_uint8(np.zeros((2, 2)), percentiles=(50, 10)), "percentiles"),
        (lambda: outline_overlay(np.zeros((2, 2)), np.zeros((2, 3), int)), "same size"),
        (lambda: outline_overlay(np.zeros((2, 2)), np.zeros((2, 2))), "integer label image"),
        (lambda: outline_overlay(np.zeros((2, 2)), np.zeros((2, 2), int),
                                 palette=np.zeros((2, 4), np.uint8)), "palette"),
        (lambda: fill_overlay(np.zeros((2, 2)), np.zeros((2, 2), int), alpha=2), "alpha"),
        (lambda: overlay_panels(np.zeros((2, 2)), None, None), "labels or an annotation"),
        (lambda: overlay_panels(np.zeros((2, 2)), np.zeros((2, 2), int), np.zeros((2, 3), int)),
         "must be the same size"),
        (lambda: thumbnail(np.zeros((4, 4)), 2), "thumbnail needs"),
    ],
    ids=["cells-2d", "stretch-3d", "stretch-percentiles", "overlay-shape", "overlay-float",
         "overlay-palette", "fill-alpha", "panels-none", "panels-shape", "thumbnail-grey"],
)
def test_array_helpers_refuse_bad_input(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


# -- agreement, workers, cleaning stats, manifest ------------------------------------------------


def _copy(harvest: Harvest, tmp_path: Path) -> WorkingFolder:
    base = tmp_path / "copy"
    shutil.copytree(harvest.wf.base, base)
    return WorkingFolder(base, "exp")


def _consensus_report(workers: list[str], f1: list[float], low: list[bool]
                      ) -> dict[str, object]:
    """A consensus report as the clean stage writes it (with per-cell records)."""
    return {"judgments": [{"unit_id": "1", "judgment_id": str(i), "worker_id": w}
                          for i, w in enumerate(workers)],
            "agreement": [{"annotator": i, "weight": 1.0, "f1": v} for i, v in enumerate(f1)],
            "mean_agreement": sum(f1) / len(f1),
            "cells": [{"id": i + 1, "support": 0.5, "low_support": v} for i, v in enumerate(low)]}


def test_reports_beside_the_labels_fill_agreement_workers_and_pixels(
        harvest: Harvest, tmp_path: Path) -> None:
    wf = _copy(harvest, tmp_path)
    rng = np.random.default_rng(7)
    names = [m.name for m in collect_qc(wf).montages if m.labels][:3]
    scores = {n: [float(v) for v in rng.uniform(0.2, 1.0, 2)] for n in names}
    pairs = [["a", "b"], ["b", "c"], ["a", "c"]]
    low = {n: [bool(v) for v in rng.random(int(rng.integers(0, 6))) < 0.5] for n in names}
    for name, workers in zip(names, pairs, strict=True):
        wf.consensus_report_path(name).write_text(
            json.dumps(_consensus_report(workers, scores[name], low[name])), encoding="utf-8")
    wf.consensus_workers_path.write_text(json.dumps({"workers": [
        {"worker_id": "a", "reliability": 0.25}, {"worker_id": "b", "reliability": 0.75}]}))
    stats = {n: {"pixels_removed": int(rng.integers(0, 99)), "pixels_filled": 3} for n in names}
    wf.clean_stats_path.write_text(json.dumps({"version": 1, "montages": stats}))
    write_qc_report(wf)
    page = _page(wf)
    units = {r["montage"]: r for r in page.rows("units")}
    for name in names:
        mean = sum(scores[name]) / 2
        assert units[name]["agreement"] == f"{mean:.3f}"
        assert units[name]["judgments"] == "2"
        assert units[name]["low-support cells"] == str(sum(low[name]))
        assert ("low agreement" in units[name]["needs"]) == (mean < 0.7)
        assert int(units[name]["pixels removed"]) == stats[name]["pixels_removed"]
    workers = {r["worker"]: r for r in page.rows("workers")}
    assert sorted(workers) == ["a", "b", "c"]
    assert (workers["a"]["reliability"], workers["c"]["reliability"]) == ("0.250", "—")
    for worker in "abc":
        mine = [scores[n][p.index(worker)] for n, p in zip(names, pairs, strict=True)
                if worker in p]
        assert int(workers[worker]["units"]) == len(mine)
        assert workers[worker]["agreement"] == f"{sum(mine) / len(mine):.3f}"
    assert wf.qc_workers_csv.read_text(encoding="utf-8").splitlines()[1].startswith("a,0.25,2,")


def test_absent_or_broken_report_files_show_dashes(harvest: Harvest, tmp_path: Path) -> None:
    wf = _copy(harvest, tmp_path)
    name = next(m.name for m in collect_qc(wf).montages if m.labels)
    wf.consensus_report_path(name).write_text("{not json", encoding="utf-8")
    wf.consensus_workers_path.write_text(json.dumps({"w9": {"units": "many"}}))
    wf.clean_stats_path.write_text(json.dumps({name: "nothing"}))
    qc = collect_qc(wf)
    (row,) = [m for m in qc.montages if m.name == name]
    assert (row.agreement, row.judgments, row.pixels_removed) == (None, None, None)
    assert qc.workers == (WorkerQc("w9", 0, None, None),)
    write_qc_report(wf, qc=qc)
    assert _page(wf).rows("workers") == [
        {"worker": "w9", "reliability": "—", "units": "0", "agreement": "—"}]


def _manifest(wf: WorkingFolder, stages: dict[str, dict[str, object]]) -> None:
    wf.manifest.parent.mkdir(parents=True, exist_ok=True)
    wf.manifest.write_text(json.dumps({"version": 1, "stages": stages}), encoding="utf-8")


def test_the_manifest_says_which_outputs_a_stage_wrote(harvest: Harvest, tmp_path: Path) -> None:
    wf = _copy(harvest, tmp_path)
    labelled = sorted(p for p in wf.labels.glob("*_labels.png"))
    recorded = labelled[: len(labelled) // 2]
    npz = wf.npz_part(0)
    _manifest(wf, {
        "clean": {"state": "done", "outputs": {p.relative_to(wf.base).as_posix(): [0, ""]
                                               for p in recorded}},
        "npz": {"state": "done", "outputs": {npz.relative_to(wf.base).as_posix(): [0, ""]}},
        "stitch": {"state": "failed", "error": "disk full"},
        "qc": {"state": "running"},  # the stage making this report
    })
    qc = collect_qc(wf)
    assert {m.labels_path for m in qc.montages if m.labels} == set(recorded)
    assert [p.npz for p in qc.parts] == [npz, None]  # part 1's file is not recorded
    assert any("stage stitch is failed: disk full" in m for m in qc.missing)
    assert [(r.name, r.state, r.error) for r in qc.runs] == [
        ("clean", "done", None), ("npz", "done", None), ("stitch", "failed", "disk full")]
    assert qc.stitched is None  # the stitch stage recorded no frames
    assert not any("stage qc" in m for m in qc.missing)
    (link,) = qc.exports
    assert (link.stage, link.path) == ("npz", npz)
    assert f'np.load("npz/{npz.name}")' in str(link.snippet)
    write_qc_report(wf, qc=qc)
    assert f"../npz/{npz.name}" in _page(wf).links


def test_entries_the_caller_holds_are_used_instead_of_the_file(
        harvest: Harvest, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cellcrowd.pipeline.manifest import StageEntries

    wf = _copy(harvest, tmp_path)
    labelled = sorted(p for p in wf.labels.glob("*_labels.png"))
    held = labelled[1::2]
    wf.manifest.parent.mkdir(parents=True, exist_ok=True)
    wf.manifest.write_text("{not json", encoding="utf-8")  # never read: the entries are given
    entries = StageEntries({"version": 1, "stages": {
        "clean": {"state": "done", "outputs": {p.relative_to(wf.base).as_posix(): [0, ""]
                                               for p in held}},
        "qc": {"state": "running"}}})
    with caplog.at_level(logging.WARNING, logger="cellcrowd.qc"):
        qc = collect_qc(wf, recorded=entries)
    assert {m.labels_path for m in qc.montages if m.labels} == set(held)
    assert [(r.name, r.state) for r in qc.runs] == [("clean", "done")]
    assert "manifest" not in caplog.text


def test_trk_and_ctc_come_from_the_manifest(harvest: Harvest, tmp_path: Path) -> None:
    wf = _copy(harvest, tmp_path)
    wf.trk.parent.mkdir(parents=True, exist_ok=True)
    wf.trk.write_bytes(b"left by an earlier run")
    (wf.ctc / "01").mkdir(parents=True)
    (wf.ctc / "01" / "t000.tif").write_bytes(b"")

    def states() -> dict[str, str]:
        return {s.name: s.status for s in collect_qc(wf).stages if s.name in ("trk", "ctc")}

    assert states() == {"trk": "done", "ctc": "done"}  # no record: the files are looked at
    _manifest(wf, {"trk": {"state": "failed", "error": "bad lineage"},
                   "ctc": {"state": "done", "outputs": {"ctc/01/t000.tif": [0, ""]}}})
    assert states() == {"trk": "missing", "ctc": "done"}  # the failed stage's file is stale


def test_a_given_job_is_used_instead_of_the_logs(harvest: Harvest, tmp_path: Path) -> None:
    wf = _copy(harvest, tmp_path)
    job = Job.load(wf)
    shutil.rmtree(wf.json_logs)
    assert collect_qc(wf).montages == ()
    qc = collect_qc(wf, job=job)
    assert [m.name for m in qc.montages] == [m.name for m in collect_qc(harvest.wf).montages]
    assert {s.name: s.status for s in qc.stages}["logs"] == "done"


def test_problems_carry_advice_and_come_first(harvest: Harvest, tmp_path: Path) -> None:
    wf = _copy(harvest, tmp_path)
    still_broken, used_others = BROKEN
    wf.label_path(still_broken).unlink()  # no judgment of it came back
    write_qc_report(wf, job_id=JOB)
    qc = collect_qc(wf, job_id=JOB)
    by_name = {m.name: m for m in qc.montages}
    (broken,) = [p for p in by_name[still_broken].problems if p.kind == "broken"]
    assert qc.wf.reupload_csv(JOB).name in broken.advice
    assert "fetch" not in broken.advice.replace("fetching again cannot help", "")
    assert "broken" not in [p.kind for p in by_name[used_others].problems]
    skipped = qc.wf.montage_name(MontageKey("exp", *SKIPPED))
    assert [p.kind for p in by_name[skipped].problems] == ["not harvested"]
    order = qc.by_attention()
    scores = [m.attention for m in order]
    assert scores == sorted(scores, reverse=True)
    assert order[0].name == still_broken  # weight 5 beats the others
    units = list(csv.DictReader(qc.wf.qc_units_csv.read_text("utf-8").splitlines()))
    assert [u["montage"] for u in units] == [m.name for m in order]


def test_thumbnail_is_the_block_mean_and_never_enlarged() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 90, 3)).astype(np.uint8)
    small = thumbnail(rgb, 30)
    step = -(-90 // 30)
    assert small.shape == (37 // step, 90 // step, 3)
    block = rgb[step:2 * step, 2 * step:3 * step].reshape(-1, 3).mean(axis=0)
    np.testing.assert_array_equal(small[1, 2], np.rint(block).astype(np.uint8))
    h, w = small.shape[0] * step, small.shape[1] * step
    means = rgb[:h, :w].astype(np.float64).reshape(h // step, step, w // step, step, 3)
    np.testing.assert_array_equal(small, np.rint(means.mean(axis=(1, 3))).astype(np.uint8))
    white = np.full((500, 640, 3), 255, np.uint8)  # the largest sums: no overflow
    assert (thumbnail(white, 5) == 255).all()
    np.testing.assert_array_equal(thumbnail(rgb, 500), rgb)


def test_overlays_made_in_row_blocks_are_the_overlays_made_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The overlays' float temporaries are made a few rows at a time (a 2048^2 montage
    would need hundreds of MB at once): the pixels are those of one block."""
    from cellcrowd.qc import overlay

    rng = np.random.default_rng(4)
    raw = rng.integers(0, 4000, (61, 47)).astype(np.uint16)
    labels = rng.integers(0, 9, (61, 47)) * (rng.random((61, 47)) < 0.6)
    whole = (overlay_panels(raw, labels, labels), stretch_to_uint8(raw))
    monkeypatch.setattr(overlay, "_BLOCK_PIXELS", 100)  # blocks of 2 rows
    assert overlay._row_blocks(raw.shape)[1] == slice(2, 4)
    np.testing.assert_array_equal(overlay_panels(raw, labels, labels), whole[0])
    np.testing.assert_array_equal(stretch_to_uint8(raw), whole[1])


def test_thumbnail_is_the_rounded_block_mean() -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (95, 61, 3)).astype(np.uint8)
    small = thumbnail(rgb, 20)  # blocks of 5 x 5, the last rows and columns left out
    blocks = rgb[:95, :60].reshape(19, 5, 12, 5, 3).astype(np.float64)
    np.testing.assert_array_equal(small, np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8))
