"""Cell Tracking Challenge folders: round trip, gap splitting, every rule, an outside reader."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellcrowd.errors import InputError, LineageError
from cellcrowd.export.ctc import CTCTrack, ctc_tracks, export_ctc, read_ctc, validate_ctc, write_ctc
from cellcrowd.files import read_image, write_image
from cellcrowd.layout import WorkingFolder


def tracked_movie() -> np.ndarray:
    """Cell 1 divides into 2 and 3 after frame 2; cell 4 misses frame 2; 5 appears in 2."""
    movie = np.zeros((6, 12, 24), dtype=np.int32)
    movie[0:3, 1:9, 1:9] = 1
    movie[3:6, 1:5, 1:9] = 2
    movie[3:6, 5:9, 1:9] = 3
    movie[[0, 1, 3, 4, 5], 2:6, 12:16] = 4
    movie[2:6, 8:11, 18:22] = 5
    return movie


def entry(label: int, frames: list[int], daughters: tuple[int, ...] = (),
          parent: int | None = None) -> dict:
    return {"label": label, "frames": frames, "daughters": list(daughters),
            "capped": bool(daughters), "frame_div": frames[-1] + 1 if daughters else None,
            "parent": parent}


LINEAGE = {
    1: entry(1, [0, 1, 2], (2, 3)),
    2: entry(2, [3, 4, 5], parent=1),
    3: entry(3, [3, 4, 5], parent=1),
    4: entry(4, [0, 1, 3, 4, 5]),
    5: entry(5, [2, 3, 4, 5]),
}
# Cell 4's second run (frames 3-5) becomes track 6 whose parent is 4 (the run before the gap).
TRACKS = ["1 0 2 0", "2 3 5 1", "3 3 5 1", "4 0 1 0", "5 2 5 0", "6 3 5 4"]


def raw_movie(frames: int = 6) -> np.ndarray:
    return (np.arange(frames * 12 * 24) % 3000).reshape(frames, 12, 24).astype(np.uint16)


@pytest.fixture
def ctc_folder(tmp_path: Path) -> Path:
    return write_ctc(tmp_path / "ctc", raw_movie(), tracked_movie(), LINEAGE)


# -- writing and reading ----------------------------------------------------------------


def test_ctc_round_trip_splits_gaps(ctc_folder: Path) -> None:
    tra = ctc_folder / "01_GT" / "TRA"
    assert (tra / "man_track.txt").read_text().splitlines() == TRACKS
    assert sorted(p.name for p in tra.glob("*.tif")) == [f"man_track{t:03d}.tif"
                                                        for t in range(6)]
    assert sorted(p.name for p in (ctc_folder / "01").iterdir()) == [f"t{t:03d}.tif"
                                                                    for t in range(6)]
    mask = read_image(tra / "man_track004.tif")
    assert mask.dtype == np.uint16
    expected = tracked_movie()
    expected[3:][expected[3:] == 4] = 6
    data = read_ctc(ctc_folder)
    np.testing.assert_array_equal(data.masks, expected)
    np.testing.assert_array_equal(data.raw, raw_movie())
    assert [t.line() for t in sorted(data.tracks.values())] == TRACKS
    assert validate_ctc(ctc_folder) == data.tracks


def test_ctc_tracks_name_the_last_run_as_parent_of_daughters() -> None:
    movie = np.zeros((5, 4, 4), dtype=np.int32)
    movie[[0, 2], 0:2, 0:2] = 7  # two runs, then a division
    movie[3:, 0:1, 0:2] = 8
    movie[3:, 1:2, 0:2] = 9
    lineage = {7: entry(7, [0, 2], (8, 9)), 8: entry(8, [3, 4], parent=7),
               9: entry(9, [3, 4], parent=7)}
    masks, tracks = ctc_tracks(movie, lineage)
    assert tracks == [CTCTrack(7, 0, 0, 0), CTCTrack(8, 3, 4, 10), CTCTrack(9, 3, 4, 10),
                      CTCTrack(10, 2, 2, 7)]
    assert masks[2, 0, 0] == 10
    assert masks[0, 0, 0] == 7


def test_frame_numbers_widen_past_999_frames(tmp_path: Path) -> None:
    movie = np.ones((1001, 2, 2), dtype=np.int32)
    folder = write_ctc(tmp_path / "ctc", np.zeros((1001, 2, 2), np.uint8), movie,
                       {1: entry(1, list(range(1001)))}, sequence="02")
    names = sorted(p.name for p in (folder / "02_GT" / "TRA").glob("*.tif"))
    assert names[0] == "man_track0000.tif"
    assert names[-1] == "man_track1000.tif"
    assert (folder / "02" / "t0999.tif").is_file()
    assert validate_ctc(folder, sequence="02") == {1: CTCTrack(1, 0, 1000, 0)}


def test_rewriting_a_shorter_movie_removes_stale_frames(tmp_path: Path) -> None:
    write_ctc(tmp_path, raw_movie(), tracked_movie(), LINEAGE)
    short = {1: entry(1, [0, 1, 2]), 4: entry(4, [0, 1]), 5: entry(5, [2])}
    write_ctc(tmp_path, raw_movie(3), tracked_movie()[:3], short)
    assert len(list((tmp_path / "01_GT" / "TRA").glob("man_track*.tif"))) == 3
    assert len(list((tmp_path / "01").glob("t*.tif"))) == 3
    assert sorted(validate_ctc(tmp_path)) == [1, 4, 5]


def test_export_ctc_from_the_stitched_folder(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    for t, labels in enumerate(tracked_movie()):
        write_image(wf.stitched_frame("annotated", t), labels.astype(np.uint16))
    wf.stitched_lineage.write_text(json.dumps({str(k): v for k, v in LINEAGE.items()}))
    with pytest.raises(InputError, match="a CTC sequence needs the raw movie"):
        export_ctc(wf)
    for t, raw in enumerate(raw_movie()):
        write_image(wf.stitched_frame("raw", t), raw)
    assert export_ctc(wf) == wf.ctc
    assert [t.line() for t in sorted(validate_ctc(wf.ctc).values())] == TRACKS



@pytest.mark.parametrize("channels", [None, 1, 3], ids=["grey", "one-channel", "rgb"])
def test_export_ctc_streams_the_files_write_ctc_writes(tmp_path: Path,
                                                       channels: int | None) -> None:
    raw = raw_movie()
    if channels:
        raw = np.repeat(raw[..., None], channels, axis=-1)
    wf = WorkingFolder(tmp_path / "wf", "exp")
    for t, (labels, raw_frame) in enumerate(zip(tracked_movie(), raw, strict=True)):
        write_image(wf.stitched_frame("annotated", t), labels.astype(np.uint16))
        write_image(wf.stitched_frame("raw", t), raw_frame)
    wf.stitched_lineage.write_text(json.dumps({str(k): v for k, v in LINEAGE.items()}))
    streamed = export_ctc(wf)
    whole = write_ctc(tmp_path / "whole", raw, tracked_movie(), LINEAGE)
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert len(files) == 2 * 6 + 1
    assert files == sorted(p.relative_to(streamed) for p in streamed.rglob("*") if p.is_file())
    for name in files:
        assert (streamed / name).read_bytes() == (whole / name).read_bytes(), name
    masks = np.stack([tifffile.imread(streamed / "01_GT" / "TRA" / f"man_track{t:03d}.tif")
                      for t in range(6)])
    assert masks.dtype == np.uint16
    assert masks[3, 3, 13] == 6
    assert masks[1, 3, 13] == 4
    back = np.stack([tifffile.imread(streamed / "01" / f"t{t:03d}.tif") for t in range(6)])
    np.testing.assert_array_equal(back, raw if channels != 1 else raw[..., 0])


def test_validate_ctc_refuses_masks_of_different_sizes(ctc_folder: Path) -> None:
    mask = ctc_folder / "01_GT" / "TRA" / "man_track002.tif"
    write_image(mask, read_image(mask)[:, :20])
    with pytest.raises(LineageError, match="2-D 16-bit labels of one size") as err:
        validate_ctc(ctc_folder)
    assert err.value.rule == "16-bit labels"


def test_traccuracy_reads_our_folder(ctc_folder: Path, caplog: pytest.LogCaptureFixture
                                     ) -> None:
    """An independent CTC reader (traccuracy, with its format checks) loads the output."""
    from traccuracy.loaders import load_ctc_data

    with caplog.at_level(logging.WARNING):
        graph = load_ctc_data(str(ctc_folder / "01_GT" / "TRA"), run_checks=True)
    assert not [r for r in caplog.records if "non-connected" in r.getMessage()]
    nodes = graph.graph.number_of_nodes()
    assert nodes == int(sum(len(np.unique(f)) - 1 for f in tracked_movie()))
    # Edges: within tracks, two from the division and one across cell 4's gap.
    succ = {n: list(graph.graph.successors(n)) for n in graph.graph.nodes}
    assert sum(len(v) == 2 for v in succ.values()) == 1  # one division
    assert graph.graph.number_of_edges() == nodes - 6 + 3  # 6 tracks, 3 links between


# -- every rule, broken once ------------------------------------------------------------


def _rewrite_tracks(edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / "01_GT" / "TRA" / "man_track.txt"
        path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    return mutate


def _replace_line(label: int, line: str) -> Callable[[Path], None]:
    return _rewrite_tracks(lambda lines: [line if x.split()[0] == str(label) else x
                                          for x in lines])


def _edit_mask(t: int, edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / "01_GT" / "TRA" / f"man_track{t:03d}.tif"
        write_image(path, edit(read_image(path)))
    return mutate


def _unlink(relative: str) -> Callable[[Path], None]:
    return lambda folder: (folder / relative).unlink()


def _drop_label(label: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda mask: np.where(mask == label, 0, mask).astype(mask.dtype)


def _big_label(mask: np.ndarray) -> np.ndarray:
    out = mask.astype(np.int32)
    out[out == 5] = 70_000
    return out


@pytest.mark.parametrize(
    ("mutate", "rule", "match"),
    [
        (_unlink("01_GT/TRA/man_track.txt"), "CTC layout", "no track table"),
        (lambda f: [p.unlink() for p in (f / "01").iterdir()] and (f / "01").rmdir(),
         "CTC layout", "no t\\*.tif raw folder"),
        (_unlink("01_GT/TRA/man_track002.tif"), "frame files", r"found \[0, 1, 3, 4, 5\]"),
        (_unlink("01/t005.tif"), "raw frames", "5 raw frames but 6 masks"),
        (_edit_mask(3, _big_label), "16-bit labels", "masks must be 2-D 16-bit labels"),
        (_replace_line(5, "5 2 x 0"), "track line", "expected four whole numbers"),
        (_replace_line(5, "4 2 5 0"), "track line", "track 4: labels must be positive"),
        (_replace_line(5, "5 5 2 0"), "track line", "B <= E"),
        (_rewrite_tracks(lambda lines: lines[:-1]), "labels in track file",
         "label 6 .* is in the masks but not in man_track.txt"),
        (_replace_line(5, "5 2 4 0"), "first and last frame",
         "track 5 is listed from frame 2 to 4 but is in the masks from 2 to 5"),
        (_edit_mask(4, _drop_label(2)), "contiguity", r"track 2 is absent in frames \[4\]"),
        (_rewrite_tracks(lambda lines: [*lines, "9 0 1 0"]), "tracks in masks",
         "track 9 is in man_track.txt but in no mask"),
        (_replace_line(5, "5 2 5 42"), "parent exists", "names parent 42"),
        (_replace_line(6, "6 3 5 5"), "parent ends before daughter begins",
         "track 6 begins in frame 3 but its parent 5 ends in frame 5"),
    ],
    ids=["no-track-file", "no-raw-folder", "frame-numbers", "raw-count", "16-bit",
         "bad-line", "duplicate-label", "begin-after-end", "label-not-listed", "first-last",
         "contiguity", "track-not-in-masks", "unknown-parent", "parent-too-late"],
)
def test_each_ctc_rule(ctc_folder: Path, mutate: Callable[[Path], object], rule: str,
                       match: str) -> None:
    validate_ctc(ctc_folder)
    mutate(ctc_folder)
    with pytest.raises(LineageError, match=match) as info:
        validate_ctc(ctc_folder)
    assert info.value.rule == rule


def test_write_ctc_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sequence must be digits"):
        write_ctc(tmp_path, raw_movie(), tracked_movie(), LINEAGE, sequence="ab")
    with pytest.raises(ValueError, match=re.escape("raw has shape (5, 12, 24)")):
        write_ctc(tmp_path, raw_movie(5), tracked_movie(), LINEAGE)
    bad = {k: v for k, v in LINEAGE.items() if k != 5}
    with pytest.raises(LineageError, match="labels have entries"):
        write_ctc(tmp_path, raw_movie(), tracked_movie(), bad)
    assert not list(tmp_path.iterdir())  # nothing written before the checks pass


def test_tracks_beyond_16_bits_are_refused() -> None:
    movie = np.zeros((3, 2, 2), dtype=np.int32)
    movie[[0, 2], 0, 0] = 65_535  # a gap: its second run would need label 65536
    with pytest.raises(LineageError, match="labels up to 65536"):
        ctc_tracks(movie, {65_535: entry(65_535, [0, 2])})
