"""DeepCell .trk/.trks: round trips, the file as DeepCell reads it, and every lineage rule."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd.errors import InputError, LineageError
from cellcrowd.export.trk import (
    export_trk,
    read_trk,
    read_trks,
    validate_lineage,
    write_trk,
    write_trks,
)
from cellcrowd.files import write_image
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


def entry(label: int, frames: list[int], daughters: Sequence[int] = (),
          parent: int | None = None) -> dict[str, Any]:
    return {"label": label, "frames": frames, "daughters": list(daughters),
            "capped": bool(daughters), "frame_div": frames[-1] + 1 if daughters else None,
            "parent": parent}


LINEAGE = {
    1: entry(1, [0, 1, 2], [2, 3]),
    2: entry(2, [3, 4, 5], parent=1),
    3: entry(3, [3, 4, 5], parent=1),
    4: entry(4, [0, 1, 3, 4, 5]),
    5: entry(5, [2, 3, 4, 5]),
}


def raw_movie(frames: int = 6, channels: int | None = None) -> np.ndarray:
    shape = (frames, 12, 24) + ((channels,) if channels else ())
    return (np.arange(np.prod(shape)) % 3000).reshape(shape).astype(np.uint16)


def deepcell_load(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """What DeepCell's load_trks does: tarfile, np.load of each member, json."""
    with tarfile.open(path, mode="r") as trks:
        raw = np.load(io.BytesIO(trks.extractfile("raw.npy").read()))  # type: ignore[union-attr]
        tracked = np.load(io.BytesIO(trks.extractfile("tracked.npy").read()))  # type: ignore[union-attr]
        name = "lineages.json" if "lineages.json" in trks.getnames() else "lineage.json"
        lineage = json.loads(trks.extractfile(name).read().decode())  # type: ignore[union-attr]
    return raw, tracked, lineage


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [None, 2], ids=["grey", "two-channels"])
def test_trk_round_trip(tmp_path: Path, channels: int | None) -> None:
    raw, tracked = raw_movie(channels=channels), tracked_movie()
    path = write_trk(tmp_path / "movie.trk", raw, tracked, LINEAGE)
    data = read_trk(path)
    assert data.raw.shape == (6, 12, 24, channels or 1)
    assert data.raw.dtype == np.uint16
    np.testing.assert_array_equal(data.raw.reshape(raw.shape), raw)
    assert data.tracked.shape == (6, 12, 24, 1)
    assert data.tracked.dtype == np.int32
    np.testing.assert_array_equal(data.tracked[..., 0], tracked)
    assert data.lineage == LINEAGE
    raw2, tracked2, lineage2 = deepcell_load(path)
    np.testing.assert_array_equal(raw2, data.raw)
    np.testing.assert_array_equal(tracked2, data.tracked)
    assert lineage2 == {str(k): v for k, v in LINEAGE.items()}  # JSON keys are strings
    with tarfile.open(path, mode="r:gz") as tar:  # a gzip tar, as DeepCell writes it
        assert sorted(tar.getnames()) == ["lineage.json", "raw.npy", "tracked.npy"]


def test_trk_bytes_are_reproducible(tmp_path: Path) -> None:
    a = write_trk(tmp_path / "a.trk", raw_movie(), tracked_movie(), LINEAGE)
    b = write_trk(tmp_path / "b.trk", raw_movie(), tracked_movie()[..., None],
                  {str(k): v for k, v in LINEAGE.items()})
    assert a.read_bytes() == b.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_trks_round_trip_pads_shorter_movies(tmp_path: Path) -> None:
    short = tracked_movie()[:3]
    short_lineage = {1: entry(1, [0, 1, 2]), 4: entry(4, [0, 1]), 5: entry(5, [2])}
    path = write_trks(tmp_path / "movies.trks", [raw_movie(), raw_movie(3)],
                      [tracked_movie(), short], [LINEAGE, short_lineage])
    data = read_trks(path)
    assert data.raw.shape == (2, 6, 12, 24, 1)
    assert data.tracked.shape == (2, 6, 12, 24, 1)
    np.testing.assert_array_equal(data.tracked[1, :3, ..., 0], short)
    assert not data.tracked[1, 3:].any()
    assert not data.raw[1, 3:].any()
    assert data.lineages == [LINEAGE, short_lineage]
    for movie, lineage in zip(data.tracked, data.lineages, strict=True):
        validate_lineage(movie, lineage)  # padding keeps both valid
    _, tracked, lineages = deepcell_load(path)
    assert isinstance(lineages, list)
    assert len(lineages) == 2
    assert tracked.shape[0] == 2
    single = read_trks(write_trk(tmp_path / "one.trk", raw_movie(), tracked_movie(), LINEAGE))
    assert single.raw.shape[0] == 1
    assert single.lineages == [LINEAGE]


def test_export_trk_from_the_stitched_folder(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    for t, labels in enumerate(tracked_movie()):
        write_image(wf.stitched_frame("annotated", t), labels.astype(np.uint16))
    wf.stitched_lineage.write_text(json.dumps({str(k): v for k, v in LINEAGE.items()}))
    with pytest.raises(InputError, match=r"a \.trk needs the raw movie"):
        export_trk(wf)
    for t, raw in enumerate(raw_movie()):
        write_image(wf.stitched_frame("raw", t), raw)
    data = read_trk(export_trk(wf))
    np.testing.assert_array_equal(data.tracked[..., 0], tracked_movie())
    np.testing.assert_array_equal(data.raw[..., 0], raw_movie())
    assert data.lineage == LINEAGE



def _stitched_folder(tmp_path: Path, raw: np.ndarray, lineage: dict[int, Any]) -> WorkingFolder:
    wf = WorkingFolder(tmp_path, "exp")
    for t, (labels, raw_frame) in enumerate(zip(tracked_movie(), raw, strict=True)):
        write_image(wf.stitched_frame("annotated", t), labels.astype(np.uint16))
        write_image(wf.stitched_frame("raw", t), raw_frame)
    wf.stitched_lineage.write_text(json.dumps({str(k): v for k, v in lineage.items()}))
    return wf


@pytest.mark.parametrize(("channels", "dtype"), [(None, np.uint16), (None, np.float32),
                                                  (1, np.uint16), (3, np.uint8)],
                         ids=["grey", "float", "one-channel", "rgb"])
def test_export_trk_streams_the_bytes_write_trk_writes(tmp_path: Path, channels: int | None,
                                                       dtype: type) -> None:
    raw = raw_movie(channels=channels).astype(dtype)
    wf = _stitched_folder(tmp_path, raw, LINEAGE)
    streamed = export_trk(wf).read_bytes()
    whole = write_trk(tmp_path / "whole.trk", raw, tracked_movie(), LINEAGE).read_bytes()
    assert streamed == whole
    raw_back, tracked_back, lineage_back = deepcell_load(wf.trk)
    assert raw_back.dtype == dtype
    assert tracked_back.dtype == np.int32
    np.testing.assert_array_equal(raw_back, raw if channels else raw[..., None])
    np.testing.assert_array_equal(tracked_back[..., 0], tracked_movie())
    assert {int(k): v for k, v in lineage_back.items()} == LINEAGE


def test_export_trk_keeps_no_file_when_the_lineage_does_not_fit(tmp_path: Path) -> None:
    lineage = copy.deepcopy(LINEAGE)
    lineage[5]["frames"] = [3, 4, 5]  # cell 5 is also in frame 2
    wf = _stitched_folder(tmp_path, raw_movie(), lineage)
    with pytest.raises(LineageError, match="entry 5: 'frames'"):
        export_trk(wf)
    assert not wf.trk.exists()
    assert not list(wf.trk.parent.glob("*.trk*"))  # no temporary file left either


def test_export_trk_refuses_a_frame_of_another_size(tmp_path: Path) -> None:
    wf = _stitched_folder(tmp_path, raw_movie(), LINEAGE)
    write_image(wf.stitched_frame("raw", 4), raw_movie()[4, :, :20])
    with pytest.raises(InputError, match=r"this frame is \(12, 20\)"):
        export_trk(wf)
    assert not wf.trk.exists()


# -- every rule, broken once --------------------------------------------------------------

Mutation = Callable[[dict[Any, Any]], None]


def _set(label: int, key: str, value: Any) -> Mutation:
    def mutate(lineage: dict[Any, Any]) -> None:
        lineage[label][key] = value
    return mutate


def _delete_key(lineage: dict[Any, Any]) -> None:
    del lineage[5]["capped"]


def _extra_entry(lineage: dict[Any, Any]) -> None:
    lineage[9] = entry(9, [0])


def _missing_entry(lineage: dict[Any, Any]) -> None:
    del lineage[5]


def _late_daughter(lineage: dict[Any, Any]) -> None:
    lineage[4]["daughters"] = [5]
    lineage[5]["parent"] = 4


def _bad_key(lineage: dict[Any, Any]) -> None:
    lineage["five"] = lineage.pop(5)


def _not_a_dict(lineage: dict[Any, Any]) -> None:
    lineage[5] = [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("mutate", "rule", "match"),
    [
        (_delete_key, "entry fields", "entry 5: has no capped"),
        (_not_a_dict, "entry fields", "entry 5 is list"),
        (_bad_key, "keys are labels", "key 'five'"),
        (_set(5, "label", 6), "label field", "entry 5: its 'label' field says 6"),
        (_extra_entry, "entries have labels", "entry 9: this label is not in the tracked"),
        (_missing_entry, "labels have entries", r"labels \[5\] are in the tracked movie"),
        (_set(4, "frames", [0, 1, 2, 3, 4, 5]), "frames", "entry 4: 'frames' is"),
        (_set(1, "daughters", [2, 3, 7]), "daughters exist", "daughter 7 has no lineage"),
        (_set(3, "parent", None), "parent and daughters agree",
         "entry 1: daughter 3 names None"),
        (_set(1, "daughters", [2]), "parent and daughters agree",
         "entry 3: parent 1 does not list it"),
        (_late_daughter, "daughters start after the parent",
         "daughter 5 starts in frame 2 but the parent ends in frame 5"),
        (_set(5, "parent", 77), "parent exists", "entry 5: parent 77 has no lineage entry"),
        (_set(1, "frame_div", 2), "frame_div", "entry 1: 'frame_div' is 2, expected 3"),
        (_set(4, "frame_div", 6), "frame_div", "entry 4: 'frame_div' is 6, expected None"),
        (_set(1, "capped", False), "capped", "entry 1: divides but 'capped' is not true"),
    ],
    ids=["missing-key", "not-a-dict", "bad-key", "label-field", "extra-entry",
         "missing-entry", "frames", "unknown-daughter", "daughter-parent", "parent-daughters",
         "late-daughter", "unknown-parent", "frame-div", "frame-div-none", "capped"],
)
def test_each_lineage_rule(tmp_path: Path, mutate: Mutation, rule: str, match: str) -> None:
    lineage: dict[Any, Any] = copy.deepcopy(LINEAGE)
    mutate(lineage)
    with pytest.raises(LineageError, match=match) as info:
        validate_lineage(tracked_movie(), lineage)
    assert info.value.rule == rule
    assert f"(rule: {rule})" in str(info.value)
    with pytest.raises(LineageError, match=match):
        write_trk(tmp_path / "bad.trk", raw_movie(), tracked_movie(), lineage)
    assert not (tmp_path / "bad.trk").exists()


def test_non_strict_validation_accepts_the_other_frame_div_convention() -> None:
    lineage = copy.deepcopy(LINEAGE)
    lineage[1]["frame_div"] = 2  # the parent's last frame, as some tools record it
    validate_lineage(tracked_movie(), lineage, strict=False)


# -- bad arguments and bad files --------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: write_trk(p / "m.trks", raw_movie(), tracked_movie(), LINEAGE),
         ValueError, "must end in '.trk'"),
        (lambda p: write_trk(p / "m.trk", raw_movie(5), tracked_movie(), LINEAGE),
         ValueError, "raw has shape"),
        (lambda p: write_trk(p / "m.trk", raw_movie(), tracked_movie()[0], LINEAGE),
         ValueError, "must be \\(frames, rows, cols\\)"),
        (lambda p: write_trk(p / "m.trk", raw_movie(), tracked_movie() * 1.0, LINEAGE),
         TypeError, "integer labels"),
        (lambda p: write_trk(p / "m.trk", np.zeros((1, 2, 2)),
                             np.full((1, 2, 2), 2**31, np.int64), {2**31: entry(2**31, [0])}),
         ValueError, "does not fit int32"),
        (lambda p: write_trks(p / "m.trk", [raw_movie()], [tracked_movie()], [LINEAGE]),
         ValueError, "must end in '.trks'"),
        (lambda p: write_trks(p / "m.trks", [raw_movie()], [], [LINEAGE]),
         ValueError, "one raw, tracked and lineage per movie"),
        (lambda p: write_trks(p / "m.trks", [raw_movie(), raw_movie(channels=2)],
                              [tracked_movie(), tracked_movie()], [LINEAGE, LINEAGE]),
         ValueError, "share rows, cols and channels"),
        (lambda p: write_trks(p / "m.trks", [raw_movie(), raw_movie()],
                              [tracked_movie(), tracked_movie()], [LINEAGE, {}]),
         LineageError, "movie 1: labels"),
    ],
    ids=["trk-suffix", "raw-shape", "tracked-ndim", "tracked-float", "int32", "trks-suffix",
         "counts", "channels", "trks-lineage"],
)
def test_write_rejects_bad_arguments(tmp_path: Path, call: Callable[[Path], Any],
                                     error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(tmp_path)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _tar_with_folder(path: Path) -> Path:
    """A tar whose ``tracked.npy`` is a folder, not a file."""
    with tarfile.open(path, mode="w:gz") as tar:
        for name, data in {"raw.npy": _npy(np.zeros(2)), "lineage.json": b"{}"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("tracked.npy")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return path


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "reader", "match"),
    [
        (lambda p: p / "absent.trk", read_trk, "track file not found"),
        (lambda p: (p / "junk.trk").write_bytes(b"not a tar") and p / "junk.trk", read_trk,
         "cannot read this track file"),
        (lambda p: _tar(p / "x.trk", {"raw.npy": _npy(np.zeros(2)), "lineage.json": b"{}"}),
         read_trk, "no tracked.npy"),
        (lambda p: _tar(p / "x.trk", {"raw.npy": _npy(np.zeros(2)),
                                      "tracked.npy": _npy(np.zeros(2))}),
         read_trk, "no lineage.json"),
        (lambda p: _tar(p / "x.trks", {"raw.npy": _npy(np.zeros(2)),
                                       "tracked.npy": _npy(np.zeros(2)),
                                       "lineages.json": b"[{}, {}]"}),
         read_trk, "holds 2 movies: read it with read_trks"),
        (lambda p: _tar(p / "x.trk", {"raw.npy": _npy(np.zeros(2)),
                                      "tracked.npy": _npy(np.zeros(2)),
                                      "lineage.json": b"[1]"}),
         read_trk, "not a JSON object"),
        (lambda p: _tar(p / "x.trks", {"raw.npy": _npy(np.zeros(2)),
                                       "tracked.npy": _npy(np.zeros(2)),
                                       "lineages.json": b"[1, 2]"}),
         read_trks, "must hold a list of lineage objects"),
        (lambda p: _tar(p / "x.trk", {"raw.npy": b"garbage", "tracked.npy": b"",
                                      "lineage.json": b"{}"}),
         read_trk, "cannot read this track file"),
        (lambda p: _tar_with_folder(p / "x.trk"), read_trk, "tracked.npy is not a regular file"),
    ],
    ids=["missing", "not-a-tar", "no-tracked", "no-lineage", "several-movies",
         "lineage-not-object", "trks-not-list", "bad-npy", "member-is-folder"],
)
def test_read_rejects_bad_files(tmp_path: Path, make: Callable[[Path], Path],
                                reader: Callable[[Path], Any], match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=match):
        reader(path)
