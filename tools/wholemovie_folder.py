"""Build the whole-movie folder of tests/test_wholemovie.py outside pytest, to compare versions.

Usage::

    python tools/wholemovie_folder.py OUT                      # make inputs, then harvest
    python tools/wholemovie_folder.py OUT --inputs-from OLD    # harvest OLD's inputs again

The first form makes the synthetic movie (60 frames of 192x192, 3x3 tiles, 10% overlap,
montages of 20 frames), prepares it and paints every truth montage as a crowd
annotation, then cleans, cuts into movies, writes the part npz files, stitches, and
exports ``.trk`` and CTC. The second form copies ``raw/``, ``json_logs/`` and the
painted annotations from an earlier folder and redoes only the harvest, so two
versions of the code can be compared on the same inputs with::

    python tools/compare_outputs.py OLD OUT
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from cellcrowd.executor import LocalExecutor
from cellcrowd.export.ctc import export_ctc
from cellcrowd.export.npz import write_parts_npz
from cellcrowd.export.trk import export_trk
from cellcrowd.files import read_image, write_image
from cellcrowd.labels import CleanTask, clean_annotations
from cellcrowd.layout import WorkingFolder
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.stitch import stitch_movies

FRAMES, SHAPE, LENGTH, SEED, IDENTIFIER = 60, (192, 192), 20, 22, "whole"
INPUTS = ("raw", "json_logs", f"{IDENTIFIER}_annotations")


def make_inputs(out: Path) -> None:
    """The synthetic movie, prepared, with every truth montage painted as an annotation."""
    from cellcrowd.prepare import prepare

    try:
        from cellcrowd.sim.synthetic import paint_annotation, synthetic_movie, write_movie_frames
    except ImportError:  # before the simulators moved to cellcrowd.sim
        from cellcrowd.synthetic import (  # type: ignore[no-redef]
            paint_annotation,
            synthetic_movie,
            write_movie_frames,
        )
    movie = synthetic_movie(frames=FRAMES, shape=SHAPE, cells=20, divisions=8, seed=SEED)
    write_movie_frames(movie, out / "raw")
    prep = prepare(out / "raw", WorkingFolder(out, IDENTIFIER), num_x=3, num_y=3,
                   overlap_perc=10, montage_len=LENGTH, row_length=5, truth=movie.labels)
    wf = prep.wf
    for i, key in enumerate(prep.montages):
        name = wf.montage_name(key)
        painted = paint_annotation(read_image(wf.truth_path(name)), layout=prep.layout, seed=i)
        write_image(wf.annotation_path(name), painted)


def copy_inputs(old: Path, out: Path) -> None:
    for name in INPUTS:
        shutil.copytree(old / name, out / name)


def harvest(out: Path) -> None:
    wf = WorkingFolder(out, IDENTIFIER)
    log = read_montage_log(wf.montage_log)
    suffix = "_annotation"
    names = sorted(p.stem[: -len(suffix)] for p in wf.annotations.glob(f"*{suffix}.png"))
    tasks = [CleanTask(wf.annotation_path(n), wf.label_path(n), log) for n in names]
    bad = [r for r in clean_annotations(tasks) if not r.ok]
    if bad:
        raise SystemExit(f"{len(bad)} annotations failed to clean")
    montages_to_movies(wf)
    raw_to_movies(wf)
    pool = LocalExecutor(workers=2)
    try:
        write_parts_npz(wf, executor=pool)
        stitch_movies(wf, executor=pool)
    finally:
        pool.close()
    export_trk(wf)
    export_ctc(wf)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--inputs-from", type=Path, default=None,
                        help="copy raw/, json_logs/ and the annotations from this folder")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    args.out.mkdir(parents=True)
    if args.inputs_from is None:
        make_inputs(args.out)
    else:
        copy_inputs(args.inputs_from, args.out)
    harvest(args.out)
    print(f"whole-movie folder in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
