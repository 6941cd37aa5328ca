"""A whole movie through every local stage, stitched and linked, against its ground truth.

A synthetic movie of 60 frames (drifting, growing, dividing cells; two divisions
fall exactly on the part boundaries) is prepared as 3x3 tiles with 10% overlap
and montages of 20 frames (3 parts). Every truth montage is painted as a crowd
annotation with artifacts, cleaned, chopped into movies, then stitched into
full frames and linked across parts. The stitched movie must match the truth
object for object, keep the truth's frame-to-frame links, and find its
divisions; its .trk and CTC exports must validate.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.executor import LocalExecutor
from cellcrowd.export.ctc import export_ctc, validate_ctc
from cellcrowd.export.trk import export_trk, read_trk, validate_lineage
from cellcrowd.files import read_image, write_image
from cellcrowd.geometry import Position
from cellcrowd.labels import CleanTask, clean_annotations
from cellcrowd.layout import WorkingFolder, part_of_montage
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import montages_to_movies
from cellcrowd.prepare import prepare
from cellcrowd.sim.synthetic import (
    SyntheticMovie,
    paint_annotation,
    synthetic_movie,
    write_movie_frames,
)
from cellcrowd.stitch import read_stitched, stitch_movies

FRAMES, SHAPE, LENGTH = 60, (192, 192), 20
SEED = 22  # its divisions include daughters first seen in frames 20 and 40 (part starts)


def best_match(truth: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, float]]:
    """For every truth cell of one frame: the output cell with the highest IoU, and the IoU."""
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    l_ids, l_inv = np.unique(labels, return_inverse=True)
    pairs = t_inv.ravel().astype(np.int64) * l_ids.size + l_inv.ravel()
    inter = np.bincount(pairs, minlength=t_ids.size * l_ids.size).reshape(t_ids.size, -1)
    area_t, area_l = inter.sum(axis=1), inter.sum(axis=0)
    iou = inter / (area_t[:, None] + area_l[None, :] - inter)
    iou[:, l_ids == 0] = 0
    best = iou.argmax(axis=1)
    return {int(t): (int(l_ids[best[i]]), float(iou[i, best[i]]))
            for i, t in enumerate(t_ids) if t}


def divisions_found(movie: SyntheticMovie, labels: np.ndarray, lineage: dict,
                    matches: list[dict[int, tuple[int, float]]]) -> tuple[int, int, int]:
    """(true divisions found, true divisions, divisions reported)."""
    found = 0
    for parent, first in movie.division_frames.items():
        out_parent = matches[first - 1][parent][0]
        out_daughters = sorted(matches[first][d][0] for d in movie.daughters(parent))
        found += lineage[out_parent]["daughters"] == out_daughters
    reported = sum(1 for e in lineage.values() if e["daughters"])
    return found, len(movie.division_frames), reported


@pytest.mark.slow
def test_whole_movie_is_stitched_linked_and_exported(tmp_path: Path) -> None:
    start = time.perf_counter()
    movie = synthetic_movie(frames=FRAMES, shape=SHAPE, cells=20, divisions=8, seed=SEED)
    assert {20, 40} <= set(movie.division_frames.values())
    write_movie_frames(movie, tmp_path / "raw")
    prep = prepare(tmp_path / "raw", WorkingFolder(tmp_path, "whole"), num_x=3, num_y=3,
                   overlap_perc=10, montage_len=LENGTH, row_length=5, truth=movie.labels)
    wf = prep.wf
    assert len(prep.montages) == 27
    log = read_montage_log(wf.montage_log)
    tasks = []
    for i, key in enumerate(prep.montages):
        name = wf.montage_name(key)
        painted = paint_annotation(read_image(wf.truth_path(name)), layout=prep.layout, seed=i)
        tasks.append(CleanTask(write_image(wf.annotation_path(name), painted),
                               wf.label_path(name), log))
    assert all(r.ok for r in clean_annotations(tasks))
    assert not montages_to_movies(wf).missing
    prepared = time.perf_counter()

    result = stitch_movies(wf)
    stitched = time.perf_counter()
    raw, labels, lineage = read_stitched(wf)
    assert raw is not None
    np.testing.assert_array_equal(raw, movie.raw)
    assert labels.shape == movie.labels.shape
    assert result.link.starts == (0, 20, 40)
    assert not result.missing
    assert not result.conflicts

    # Object for object: >= 99% of the true cells of every frame found at IoU >= 0.9.
    matches = [best_match(movie.labels[t], labels[t]) for t in range(FRAMES)]
    worst = min(np.mean([iou >= 0.9 for _, iou in m.values()]) for m in matches)
    assert worst >= 0.99

    # Links: a true cell in frames t and t+1 has one output id in both (incl. part starts).
    kept = total = 0
    for t in range(FRAMES - 1):
        for cell in matches[t].keys() & matches[t + 1].keys():
            total += 1
            kept += matches[t][cell][0] == matches[t + 1][cell][0]
    across = [matches[s - 1][c][0] == matches[s][c][0]
              for s in (20, 40) for c in matches[s - 1].keys() & matches[s].keys()]
    assert kept / total >= 0.99
    assert all(across)

    # Divisions, inside parts and on part boundaries.
    found, true, reported = divisions_found(movie, labels, lineage, matches)
    recall, precision = found / true, found / max(reported, 1)
    print(f"\ncells matched (worst frame) {worst:.3f}; links kept {kept}/{total}; "
          f"divisions: recall {recall:.2f} ({found}/{true}), precision {precision:.2f} "
          f"({found}/{reported}); prepare+paint+clean+movies {prepared - start:.1f}s, "
          f"stitch+link {stitched - prepared:.1f}s")
    # Every annotation is exact after cleaning, so every division must be found and none
    # invented; one miss would already put recall at 7/8.
    assert recall == 1.0
    assert precision == 1.0

    # A process pool gives the same files.
    pool = LocalExecutor(workers=2)
    try:
        again = stitch_movies(wf, executor=pool)
    finally:
        pool.close()
    assert again.lineage == lineage
    np.testing.assert_array_equal(read_stitched(wf)[1], labels)

    # Exports.
    data = read_trk(export_trk(wf))
    np.testing.assert_array_equal(data.tracked[..., 0], labels)
    assert data.lineage == lineage
    validate_lineage(data.tracked, data.lineage)
    tracks = validate_ctc(export_ctc(wf))
    assert sum(1 for t in tracks.values() if t.parent) >= 2 * true

    # A tile of montage 1's part lost (e.g. a broken link): reported, its core empty, the
    # rest intact.
    lost, second = Position(1, 1), part_of_montage(1)
    shutil.rmtree(wf.annotated_dir(second, lost))
    result = stitch_movies(wf)
    assert [(part, pos) for part, pos, _ in result.missing] == [(second, lost)]
    labels = read_stitched(wf)[1]
    (fy, fx), _ = prep.grid.core_window(lost)
    assert not labels[20:40, fy, fx].any()
    for t in range(FRAMES):
        cells = set(np.unique(movie.labels[t]).tolist()) - {0}
        if 20 <= t < 40:  # cells with no pixel in the lost tile's core
            cells -= set(np.unique(movie.labels[t, fy, fx]).tolist())
        found = best_match(movie.labels[t], labels[t])
        assert np.mean([found[c][1] >= 0.9 for c in cells]) >= 0.99
