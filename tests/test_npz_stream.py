"""The streamed whole-movie ``.npz`` files: the same bytes as the arrays written whole."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.errors import InputError
from cellcrowd.export.npz import (
    TrainingArrays,
    build_training_arrays,
    save_npz,
    write_full_movie_npz,
    write_part_npz,
    write_stitched_movie_npz,
)
from cellcrowd.export.npz_arrays import part_movies
from cellcrowd.export.npzstream import NpyStream
from cellcrowd.files import read_image, use_write_settings, write_image, write_npz
from cellcrowd.geometry import Position
from cellcrowd.layout import WorkingFolder
from cellcrowd.movies import montages_to_movies, raw_to_movies
from cellcrowd.npzfile import read_npy_frames
from cellcrowd.pipeline import working_folder
from cellcrowd.sim.demo import ExampleSettings, make_example
from cellcrowd.stitch import link_parts, read_stitched, stitch_movies

try:
    import isal  # noqa: F401
    CODECS = ["zlib", "isal"]
except ImportError:  # pragma: no cover - the fast extra is not installed
    CODECS = ["zlib"]

#: (codec, level, compressed): every way the settings write an ``.npz`` member.
SETTINGS = [(codec, level, True) for codec in CODECS for level in (1, 6)] + [("zlib", 1, False)]
SETTING_IDS = [f"{c}-{lv}" if z else "stored" for c, lv, z in SETTINGS]


def _frames(array: np.ndarray, step: int) -> Iterator[np.ndarray]:
    for start in range(0, array.shape[0], step):
        yield array[start:start + step]


@pytest.mark.parametrize(("codec", "level", "compressed"), SETTINGS, ids=SETTING_IDS)
def test_streamed_member_is_byte_identical(tmp_path: Path, codec: str, level: int,
                                           compressed: bool) -> None:
    # 17.6 MB: the frames cross numpy's 16 MiB write boundary mid-frame
    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 50, (5, 110, 80), dtype=np.int32), 10, axis=1)
    y = np.repeat(y, 10, axis=2)
    x = rng.random((3, 4, 5, 6), dtype=np.float32)
    empty = np.zeros((0, 4, 4), np.uint16)
    with use_write_settings(codec=codec, npz_level=level):
        whole = write_npz(tmp_path / "whole.npz", {"y": y, "x": x, "e": empty, "n": np.int64(3)},
                          compressed=compressed)
        streamed = write_npz(tmp_path / "streamed.npz", {
            "y": NpyStream(y.shape, y.dtype, _frames(y, 1)),
            "x": NpyStream(x.shape, x.dtype, (f[None] for f in x.astype(np.float64))),
            "e": NpyStream(empty.shape, empty.dtype, iter(())),
            "n": np.int64(3),
        }, compressed=compressed)
    assert streamed.read_bytes() == whole.read_bytes()
    with np.load(streamed) as data:
        np.testing.assert_array_equal(data["y"], y)
        assert data["x"].dtype == np.float32


@pytest.mark.parametrize(("blocks", "match"), [
    ([np.zeros((2, 3), np.int32)], r"held 24 bytes, not 36"),
    ([np.zeros((2, 3), np.int32)] * 2, r"held more than 48 bytes, not 36"),
], ids=["short", "long"])
def test_a_stream_of_the_wrong_length_leaves_no_file(tmp_path: Path, blocks: list[np.ndarray],
                                                     match: str) -> None:
    path = tmp_path / "a.npz"
    with pytest.raises(ValueError, match=match):
        write_npz(path, {"y": NpyStream((3, 3), np.int32, blocks)})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"held (more than )?\d+ items, not 9"):
        NpyStream((3, 3), np.int32, blocks).array()


def test_a_stream_read_into_memory_is_the_array() -> None:
    y = np.arange(60, dtype=np.int64).reshape(5, 3, 4)
    streamed = NpyStream(y.shape, np.int32, _frames(y, 2)).array()
    assert streamed.dtype == np.int32
    np.testing.assert_array_equal(streamed, y)


def test_a_stream_cannot_hold_objects() -> None:
    with pytest.raises(ValueError, match="cannot hold Python objects"):
        NpyStream((1,), object, [])


@pytest.mark.parametrize(("codec", "level", "compressed"), SETTINGS, ids=SETTING_IDS)
def test_frames_read_back_one_at_a_time_are_the_array(tmp_path: Path, codec: str, level: int,
                                                      compressed: bool) -> None:
    rng = np.random.default_rng(2)
    for dtype in (np.uint16, np.int32, np.float32):
        array = (rng.random((5, 33, 17)) * 60_000).astype(dtype)
        with use_write_settings(codec=codec, npz_level=level):
            write_npz(tmp_path / "a.npz", {"y": array, "z": np.zeros(3)}, compressed=compressed)
        frames = list(read_npy_frames(tmp_path / "a.npz", "y"))
        assert [f.shape for f in frames] == [(33, 17)] * 5
        np.testing.assert_array_equal(np.stack(frames), array)
        assert frames[0].dtype == dtype
    with pytest.raises(ValueError, match="no array 'x'"):
        next(read_npy_frames(tmp_path / "a.npz", "x"))
    with pytest.raises(ValueError, match="not a C-order array of frames"):
        next(read_npy_frames(tmp_path / "a.npz", "z"))  # one dimension: no frames


def test_frames_of_a_short_member_name_where_they_stop(tmp_path: Path) -> None:
    array = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5)
    data = np.lib.format.header_data_from_array_1_0(array)
    with (zipfile.ZipFile(tmp_path / "short.npz", "w", zipfile.ZIP_DEFLATED) as zf,
          zf.open("y.npy", "w") as member):  # the header says 4 frames, 2.5 follow
        np.lib.format.write_array_header_1_0(member, data)
        member.write(array.tobytes()[:array.nbytes * 5 // 8])
    frames = read_npy_frames(tmp_path / "short.npz", "y")
    np.testing.assert_array_equal(next(frames), array[0])
    np.testing.assert_array_equal(next(frames), array[1])
    with pytest.raises(ValueError, match="ends in frame 2 of 4"):
        next(frames)


MOVIE = ExampleSettings(frames=12, shape=(80, 80), cells=5, divisions=1, montage_len=4,
                        row_length=4)  # 2x2 tiles, 3 parts of 4 frames


@pytest.fixture(scope="module")
def stitched_job(tmp_path_factory: pytest.TempPathFactory) -> WorkingFolder:
    """A 3-part movie whose label montages are the truth, ids ranked per montage (so a
    cell's id changes between parts), cut into movies and stitched."""
    example = make_example(tmp_path_factory.mktemp("movie"), MOVIE)
    wf = working_folder(example.config)
    for path in sorted(wf.truth.glob("*_truth.png")):
        _, ranked = np.unique(read_image(path), return_inverse=True)
        write_image(wf.label_path(path.name[: -len("_truth.png")]),
                    ranked.reshape(read_image(path).shape).astype(np.uint16))
    montages_to_movies(wf)
    raw_to_movies(wf)
    stitch_movies(wf)
    return wf


def _whole_full_movie(wf: WorkingFolder, path: Path, link: bool, compressed: bool) -> Path:
    """The full-movie file as it was written before streaming: every array in memory."""
    per_part = [build_training_arrays(d) for d in sorted(wf.movies.glob("part*"))]
    xs, ys = [], []
    for i in range(len(per_part[0].positions)):
        xs.append(np.concatenate([a.X[i] for a in per_part]))
        labels = [a.y[i, ..., 0] for a in per_part]
        movie = link_parts(labels)[0] if link else np.concatenate(labels)
        ys.append(movie.astype(np.int32)[..., None])
    starts = np.cumsum([0] + [a.X.shape[1] for a in per_part[:-1]]).astype(np.int64)
    return save_npz(path, TrainingArrays(np.stack(xs), np.stack(ys), per_part[0].positions, []),
                    part=-1, identifier=wf.identifier, frame_offset=0, compressed=compressed,
                    extra={"linked": np.bool_(link), "part_starts": starts})


def _whole_stitched_movie(wf: WorkingFolder, path: Path, compressed: bool) -> Path:
    raw, labels, lineage = read_stitched(wf)
    assert raw is not None
    arrays = TrainingArrays(raw[None, ..., None].astype(np.float32),
                            labels.astype(np.int32)[None, ..., None], ["stitched"], [])
    text = json.dumps({str(k): v for k, v in sorted(lineage.items())}, sort_keys=True)
    return save_npz(path, arrays, part=-1, identifier=wf.identifier, frame_offset=0,
                    compressed=compressed,
                    extra={"linked": np.bool_(True), "lineage": np.str_(text)})


@pytest.mark.parametrize(("codec", "level", "compressed"), SETTINGS, ids=SETTING_IDS)
def test_whole_movie_files_are_the_bytes_of_the_arrays_written_whole(
    stitched_job: WorkingFolder, tmp_path: Path, codec: str, level: int, compressed: bool
) -> None:
    wf = stitched_job
    with use_write_settings(codec=codec, npz_level=level):
        for link in (True, False):
            streamed = write_full_movie_npz(wf, link=link, compressed=compressed).read_bytes()
            whole = _whole_full_movie(wf, tmp_path / f"full{link}.npz", link, compressed)
            assert streamed == whole.read_bytes(), link
        streamed = write_stitched_movie_npz(wf, compressed=compressed).read_bytes()
        whole = _whole_stitched_movie(wf, tmp_path / "stitched.npz", compressed)
        assert streamed == whole.read_bytes()
    with zipfile.ZipFile(wf.npz_full_movie) as archive:
        assert archive.namelist()[:2] == ["X.npy", "y.npy"]


def test_full_movie_parts_must_have_one_frame_size(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    for part, shape in ((1, (6, 7)), (2, (6, 8))):
        write_image(wf.raw_tile_frame(part, Position(0, 0), 0), np.ones(shape, np.uint16))
        write_image(wf.annotated_frame(part, Position(0, 0), 0), np.ones(shape, np.uint16))
    with pytest.raises(InputError, match=r"part 2 are 6x8 with 1 channels but those of part 1 "
                                         r"are 6x7 with 1"):
        write_full_movie_npz(wf)
    assert not wf.npz_full_movie.exists()


def _parts(wf: WorkingFolder, count: int) -> None:
    """``count`` hand-written parts of one position, 4 frames of 512^2 each (4 MB of X)."""
    rng = np.random.default_rng(count)
    for part in range(count):
        for f in range(4):
            write_image(wf.raw_tile_frame(part, Position(0, 0), f),
                        rng.integers(0, 999, (512, 512), dtype=np.uint16))
            write_image(wf.annotated_frame(part, Position(0, 0), f),
                        np.full((512, 512), f % 3, np.uint16))


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_full_movie_memory_does_not_grow_with_the_movie(tmp_path: Path) -> None:
    peaks: dict[tuple[int, bool], int] = {}
    for count in (6, 12):
        wf = WorkingFolder(tmp_path / str(count), "exp")
        _parts(wf, count)
        for link in (True, False):
            peaks[count, link] = _peak(
                lambda wf=wf, link=link: write_full_movie_npz(wf, link=link))  # type: ignore[misc]
    x_bytes = 12 * 4 * 512 * 512 * 4  # X of the 12-part movie: 50 MB (written whole: 2-3x)
    assert peaks[12, True] < 1.15 * peaks[6, True], peaks
    assert peaks[12, False] < 1.15 * peaks[6, False], peaks
    # less than the movie's X (written whole it was held two or three times): a part,
    # one 16 MiB write and its deflated bytes; linking adds its work on one part
    assert peaks[12, False] < x_bytes, peaks


def _positions(wf: WorkingFolder, count: int) -> None:
    """One part of ``count`` positions, 4 frames of 512^2 each (4 MB of X per position)."""
    rng = np.random.default_rng(count)
    for x in range(count):
        for f in range(4):
            write_image(wf.raw_tile_frame(1, Position(x, 0), f),
                        rng.integers(0, 999, (512, 512), dtype=np.uint16))
            write_image(wf.annotated_frame(1, Position(x, 0), f),
                        rng.integers(0, 40, (512, 512), dtype=np.uint16))


@pytest.mark.parametrize(("codec", "level", "compressed"), SETTINGS, ids=SETTING_IDS)
def test_part_file_is_the_bytes_of_the_arrays_written_whole(
    tmp_path: Path, codec: str, level: int, compressed: bool
) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    _positions(wf, 5)  # X 21 MB: positions cross numpy's 16 MiB writes mid-frame
    with use_write_settings(codec=codec, npz_level=level):
        streamed = write_part_npz(wf, 1, compressed=compressed).read_bytes()
        movies, _ = part_movies(wf.part_dir(1))  # stacked here, position by position
        stacked = TrainingArrays(np.stack([m.read_raw(None) for m in movies.values()]),
                                 np.stack([m.read_labels() for m in movies.values()]),
                                 list(movies), [])
        whole = save_npz(tmp_path / "whole.npz", stacked, part=1, identifier="exp",
                         frame_offset=-1, compressed=compressed)
    np.testing.assert_array_equal(build_training_arrays(wf.part_dir(1)).X, stacked.X)
    assert streamed == whole.read_bytes()


def test_part_memory_does_not_grow_with_its_positions(tmp_path: Path) -> None:
    peaks = {}
    for count in (4, 8):
        wf = WorkingFolder(tmp_path / str(count), "exp")
        _positions(wf, count)
        peaks[count] = _peak(lambda wf=wf: write_part_npz(wf, 1))  # type: ignore[misc]
    assert peaks[8] < 1.15 * peaks[4], peaks
    assert peaks[8] < 8 * 4 * 512 * 512 * 4, peaks  # less than the part's X (34 MB)


def test_a_bad_position_met_while_writing_leaves_no_part_file(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    _positions(wf, 3)
    write_image(wf.raw_tile_frame(1, Position(2, 0), 3), np.ones((512, 500), np.uint16))
    with pytest.raises(InputError, match=r"x_02_y_00/raw: frame .*frame_003.tif is "
                                         r"\(512, 500\)"):
        write_part_npz(wf, 1)
    assert not wf.npz_part(1).exists()
    leftovers = list(wf.npz_part(1).parent.glob("*")) if wf.npz_part(1).parent.exists() else []
    assert not leftovers  # no temporary file left either
