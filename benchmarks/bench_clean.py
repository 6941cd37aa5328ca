"""Speed (and correctness) of the local harvest: cleaning, then movies and npz.

Run from the repository root::

    python benchmarks/bench_clean.py            # about a minute
    python benchmarks/bench_clean.py --quick    # a few seconds

Part 1 — cleaning. Synthetic movies (512x512 frames, about 110 cells, cut into
2x2 tiles of 256x256, so 20-40 cells per tile frame) are laid out in montages
of 10 frames, 5 per row (512x1280 px), painted as a crowd would paint them
(cellcrowd.sim.synthetic.paint_annotation: specks touching other cells, specks
inside cells, holes, stray colours) and decoded. Each montage is cleaned by

* ours: cellcrowd.labels.clean_montage (per frame, per cell), and
* the BASELINE: the original notebook's approach as FORMATS.md section 4
  describes it, reimplemented below (binary mask; small holes filled, small
  objects dropped on the mask; relabel).

Printed: time per montage, montages/s and Mpx/s of both, the time ratio
ours/baseline (below 1: ours is faster), and correctness: the share of
montages whose result equals the ground truth up to relabelling, for the
painted montages and (not timed) for paintings without artifacts, which a
correct clean-up must leave alone.

Part 2 — movies and npz. A prepared working folder (synthetic movie, ground
truth label montages as the cleaned labels) goes through
montages_to_movies + raw_to_movies + write_parts_npz, serially and with
LocalExecutor(2); printed per step with the ratio parallel/serial (below 1:
the pool helps; one task per part for the npz files).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.morphology import remove_small_holes, remove_small_objects
from skimage.segmentation import relabel_sequential

from cellcrowd.executor import Executor, LocalExecutor
from cellcrowd.export.npz import write_parts_npz
from cellcrowd.files import read_image, write_image
from cellcrowd.geometry import MontageLayout, TileGrid
from cellcrowd.labels import clean_montage, decode_annotation
from cellcrowd.layout import WorkingFolder
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.prepare import prepare
from cellcrowd.sim.synthetic import paint_annotation, synthetic_movie, write_movie_frames

MIN_SIZE, MAX_HOLE = 10, 64


# -- the BASELINE: the original notebook's clean-up (FORMATS.md section 4) ---------------------

_NEW_SKIMAGE = "max_size" in inspect.signature(remove_small_objects).parameters


def baseline_clean_montage(labels: NDArray[np.integer]) -> NDArray[np.int64]:
    """BASELINE, not cellcrowd: the original approach, reimplemented from its description.

    On the binary mask of the whole montage: fill background regions under 64 px
    (4-connected), drop foreground components under 10 px, then relabel to
    1..n in sorted order. Pixels the mask gained (filled holes) take the id of
    the nearest labelled pixel; pixels it lost become background. Its faults:
    a fragment touching another cell survives (the mask is connected), a speck
    of another id inside a cell keeps its wrong id, gaps between cells and
    small background regions at the edges get filled.
    """
    mask = labels > 0
    if _NEW_SKIMAGE:  # scikit-image >= 0.26: inclusive max_size
        mask = remove_small_holes(mask, max_size=MAX_HOLE - 1)
        mask = remove_small_objects(mask, max_size=MIN_SIZE - 1)
    else:  # pragma: no cover - older scikit-image
        mask = remove_small_holes(mask, area_threshold=MAX_HOLE)
        mask = remove_small_objects(mask, min_size=MIN_SIZE)
    out = np.where(mask, labels, 0).astype(np.int64)
    gained = mask & (labels == 0)
    if gained.any():
        index = ndimage.distance_transform_edt(labels == 0, return_distances=False,
                                               return_indices=True)
        out[gained] = labels[tuple(index)][gained]
    relabelled: NDArray[np.int64] = relabel_sequential(out)[0]  # type: ignore[no-untyped-call]
    return relabelled


# -- helpers ----------------------------------------------------------------------------------


def same_up_to_relabel(a: NDArray[np.integer], b: NDArray[np.integer]) -> bool:
    """True when ``a`` and ``b`` have the same background and a one-to-one id mapping."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg].astype(np.int64), b[fg].astype(np.int64)]), axis=1)
    return bool(pairs.shape[1] == np.unique(a[fg]).size == np.unique(b[fg]).size)


@dataclass(frozen=True)
class Case:
    annotation: NDArray[np.int32]  # decoded crowd annotation (with artifacts)
    plain: NDArray[np.int32]  # decoded painting of the truth without artifacts
    truth: NDArray[np.int64]
    layout: MontageLayout


def make_cases(seeds: Sequence[int], frames: int) -> list[Case]:
    """Painted montages of 256x256 tiles: 10 frames per montage, 5 per row."""
    cases = []
    for seed in seeds:
        movie = synthetic_movie(frames=frames, shape=(512, 512), cells=110, divisions=10,
                                seed=seed)
        grid = TileGrid.for_frame((512, 512), num_x=2, num_y=2, overlap_perc=0)
        layout = MontageLayout(grid.tile_shape, length=10, row_length=5)
        for pos in grid.positions:
            tiles = np.stack([grid.tile(frame, pos) for frame in movie.labels])
            for start in range(0, frames, layout.length):
                stack = layout.make(tiles[start:start + layout.length])
                truth = relabel_sequential(stack)[0]  # type: ignore[no-untyped-call]
                painted = paint_annotation(truth, layout=layout, seed=seed * 1000 + start)
                plain = paint_annotation(truth, layout=layout, artifacts=False)
                cases.append(Case(decode_annotation(painted), decode_annotation(plain),
                                  truth.astype(np.int64), layout))
    return cases


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line]
    for i, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) if j else c.ljust(w)
                             for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


# -- part 1: cleaning -------------------------------------------------------------------------


def bench_clean(quick: bool) -> str:
    seeds, frames, repeats = ((1,), 10, 1) if quick else ((1, 2, 3), 20, 3)
    cases = make_cases(seeds, frames)
    pixels = sum(c.annotation.size for c in cases)

    def ours() -> list[NDArray[np.uint16]]:
        return [clean_montage(c.annotation, c.layout, min_size=MIN_SIZE, max_hole=MAX_HOLE)[0]
                for c in cases]

    def baseline() -> list[NDArray[np.int64]]:
        return [baseline_clean_montage(c.annotation) for c in cases]

    results: dict[str, Sequence[NDArray[np.integer]]] = {
        "ours (clean_montage)": ours(), "baseline (original)": baseline()}
    plain: dict[str, Sequence[NDArray[np.integer]]] = {
        "ours (clean_montage)": [clean_montage(c.plain, c.layout, min_size=MIN_SIZE,
                                               max_hole=MAX_HOLE)[0] for c in cases],
        "baseline (original)": [baseline_clean_montage(c.plain) for c in cases],
    }
    times = {"ours (clean_montage)": best_time(ours, repeats),
             "baseline (original)": best_time(baseline, repeats)}
    rows = []
    for name, t in times.items():
        correct = sum(same_up_to_relabel(r, c.truth)
                      for r, c in zip(results[name], cases, strict=True))
        untouched = sum(same_up_to_relabel(r, c.truth)
                        for r, c in zip(plain[name], cases, strict=True))
        rows.append((name, f"{t / len(cases) * 1000:.1f}", f"{len(cases) / t:.1f}",
                     f"{pixels / t / 1e6:.1f}",
                     f"{correct}/{len(cases)} ({100 * correct / len(cases):.0f}%)",
                     f"{untouched}/{len(cases)} ({100 * untouched / len(cases):.0f}%)"))
    shape = cases[0].annotation.shape
    ratio = times["ours (clean_montage)"] / times["baseline (original)"]
    title = (f"1. Cleaning: {len(cases)} painted montages of {shape[0]}x{shape[1]} px "
             f"(10 frames of 256x256), best of {repeats}")
    return (table(title, ("method", "ms/montage", "montages/s", "Mpx/s",
                          "= truth (crowd artifacts)", "= truth (no artifacts)"), rows)
            + f"\ntime ratio ours/baseline: {ratio:.2f} ({_verdict(ratio)}; correctness above)")


def _verdict(ratio: float) -> str:
    if ratio < 0.9:
        return "ours faster"
    return "ours slower" if ratio > 1.1 else "about the same speed (within 10%)"


# -- part 2: movies and npz -------------------------------------------------------------------


def build_folder(base: Path, quick: bool) -> WorkingFolder:
    frames, shape, tiles = (20, (256, 256), 2) if quick else (40, (384, 384), 3)
    movie = synthetic_movie(frames=frames, shape=shape, cells=30 if quick else 60,
                            divisions=2, seed=7)
    write_movie_frames(movie, base / "raw")
    result = prepare(base / "raw", WorkingFolder(base, "bench"), num_x=tiles, num_y=tiles,
                     overlap_perc=10, montage_len=10, row_length=5, truth=movie.labels)
    wf = result.wf
    for key in result.montages:  # the ground truth stands in for cleaned labels
        name = wf.montage_name(key)
        write_image(wf.label_path(name), read_image(wf.truth_path(name)))
    return wf


def _npz_digest(wf: WorkingFolder) -> str:
    digest = hashlib.sha256()
    for path in sorted(wf.npz.glob("*.npz")):
        with np.load(path) as data:
            for key in ("X", "y"):
                digest.update(np.ascontiguousarray(data[key]).tobytes())
    return digest.hexdigest()


def _run_movies(wf: WorkingFolder, executor: Executor | None) -> tuple[dict[str, float], str]:
    for folder in (wf.movies, wf.npz):
        shutil.rmtree(folder, ignore_errors=True)
    steps: dict[str, float] = {}
    start = time.perf_counter()
    montages_to_movies(wf, executor=executor)
    steps["montages_to_movies"] = time.perf_counter() - start
    start = time.perf_counter()
    raw_to_movies(wf, executor=executor)
    steps["raw_to_movies"] = time.perf_counter() - start
    start = time.perf_counter()
    write_parts_npz(wf, executor=executor)
    steps["write_parts_npz"] = time.perf_counter() - start
    return steps, _npz_digest(wf)


def bench_movies(quick: bool) -> str:
    repeats = 1 if quick else 2
    with tempfile.TemporaryDirectory(prefix="cellcrowd-bench-") as tmp:
        wf = build_folder(Path(tmp), quick)
        montages = len(list(wf.labels.glob("*.png")))
        raw_frames = len(list(wf.raw.iterdir()))
        serial: dict[str, float] = {}
        parallel: dict[str, float] = {}
        digests = set()
        start = time.perf_counter()
        executor = LocalExecutor(2)
        list(executor.map(abs, [-1, -2]))  # start the pool (timed on its own row)
        startup = time.perf_counter() - start
        try:
            for _ in range(repeats):
                for steps, ex in ((serial, None), (parallel, executor)):
                    got, digest = _run_movies(wf, ex)
                    digests.add(digest)
                    for name, t in got.items():
                        steps[name] = min(steps.get(name, float("inf")), t)
        finally:
            executor.close()
    rows: list[tuple[str, str, str, str]] = [
        (name, f"{serial[name]:.2f}", f"{parallel[name]:.2f}",
         f"{parallel[name] / serial[name]:.2f}") for name in serial]
    rows.append(("pool start-up (once)", "-", f"{startup:.2f}", "-"))
    total_s = sum(serial.values())
    total_p = sum(parallel.values()) + startup
    rows.append(("total", f"{total_s:.2f}", f"{total_p:.2f}", f"{total_p / total_s:.2f}"))
    title = (f"2. Movies and npz: {montages} label montages, {raw_frames} raw frames, "
             f"serial vs LocalExecutor(2) on {os.cpu_count()} CPUs, best of {repeats} (s)")
    same = "yes" if len(digests) == 1 else "NO (outputs differ!)"
    return (table(title, ("step", "serial", "2 workers", "ratio 2w/serial"), rows)
            + f"\nnpz X and y identical in every run: {same}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data: a few seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cellcrowd").setLevel(logging.ERROR)  # missing-montage notes etc.
    start = time.perf_counter()
    print(bench_clean(args.quick), flush=True)
    print()
    print(bench_movies(args.quick), flush=True)
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s"
          f"{', --quick' if args.quick else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
