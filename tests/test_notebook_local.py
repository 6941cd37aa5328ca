"""The seed notebook's local cells (steps 3-5), run with cellcrowd.notebook's functions."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.errors import InputError
from cellcrowd.export.npz import load_npz
from cellcrowd.files import list_images, read_image, sha256_file, write_image
from cellcrowd.geometry import Position
from cellcrowd.labels import decode_annotation
from cellcrowd.layout import WorkingFolder, montage_of_part, part_numbers
from cellcrowd.notebook import (
    all_montages_chopper,
    clean_montages,
    convert_grayscale_all,
    make_training_data,
    raw_movie_maker,
    read_json_params_montage,
    relabel_montages,
)
from cellcrowd.prepare import PrepareResult, prepare
from cellcrowd.sim.synthetic import (
    SyntheticMovie,
    paint_annotation,
    synthetic_movie,
    write_movie_frames,
)
from cellcrowd.sim.testing import assert_same_up_to_relabel

IDENTIFIER = "3D_post_annotation_example"


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[SyntheticMovie, PrepareResult, dict[Path, str]]:
    """A working folder as the seed expects it after step 2: logs, raw, annotations."""
    movie = synthetic_movie(frames=10, shape=(64, 80), cells=5, divisions=1, seed=5)
    write_movie_frames(movie, tmp_path / "raw")
    prep = prepare(tmp_path / "raw", WorkingFolder(tmp_path, IDENTIFIER), num_x=2, num_y=1,
                   overlap_perc=10, montage_len=4, row_length=3, truth=movie.labels)
    hashes = {}
    for i, key in enumerate(prep.montages):
        name = prep.wf.montage_name(key)
        image = paint_annotation(read_image(prep.wf.truth_path(name)), encoding="rgb",
                                 layout=prep.layout, seed=i)
        path = write_image(prep.wf.annotation_path(name), image)
        hashes[path] = sha256_file(path)
    return movie, prep, hashes


def test_seed_notebook_cells(
    prepared: tuple[SyntheticMovie, PrepareResult, dict[Path, str]], tmp_path: Path
) -> None:
    movie, prep, hashes = prepared
    # -- the notebook, with its names and arguments ----------------------------------------
    base_dir = str(tmp_path)
    raw_dir = os.path.join(base_dir, "raw")
    identifier = IDENTIFIER
    annotation_save = os.path.join(base_dir, identifier + "_annotations")
    annotations_folder = annotation_save
    convert_grayscale_all(annotations_folder)
    clean_montages(annotations_folder)
    relabel_montages(annotations_folder)
    all_montages_chopper(base_dir, identifier + "_annotations", identifier)
    raw_movie_maker(base_dir, raw_dir, identifier)
    log_folder = os.path.join(base_dir, "json_logs")
    montage_params = read_json_params_montage(log_folder, identifier)
    num_frames = montage_params[0]
    num_x = montage_params[1]
    num_y = montage_params[2]
    output_directory = os.path.join(base_dir, "npz")
    saved = []
    for part in part_numbers(3):
        direc_name = os.path.join(base_dir, "movies", f"part{part}")
        file_name_save = os.path.join(output_directory, f"example_movie_P{part}_same.npz")
        samples_to_drop: list[str] = []
        training_direcs = ["x_0{}_y_0{}".format(i, j)  # noqa: UP032 - as the seed wrote it
                           for i in range(num_x) for j in range(num_y)]
        training_direcs = [x for x in training_direcs if x not in samples_to_drop]
        channel_names = [""]
        pathlib.Path(output_directory).mkdir(parents=True, exist_ok=True)
        saved.append(make_training_data(
            direc_name=direc_name,
            file_name_save=file_name_save,
            channel_names=channel_names,
            dimensionality=3,
            training_direcs=training_direcs,
            raw_image_direc="raw",
            annotation_direc="annotated",
            annotation_name="",
            border_mode="same",
            output_mode="conv",
            num_frames=num_frames,
            reshape_size=None,
            verbose=True))
    # -- what came out -------------------------------------------------------------------------
    assert montage_params == (4, 2, 1, 3, 0, 0)
    grid = prep.grid
    for part, path in zip(part_numbers(3), saved, strict=True):
        data = load_npz(path)
        start = montage_of_part(part) * 4
        frames = range(start, min(start + 4, 10))
        assert (data.part, data.frame_offset) == (part, frames.start)
        assert data.positions == ["x_00_y_00", "x_01_y_00"]
        for i, pos in enumerate(grid.positions):
            raw = np.stack([grid.tile(movie.raw[t], pos) for t in frames])
            np.testing.assert_array_equal(data.X[i, ..., 0], raw)
            truth = np.stack([grid.tile(movie.labels[t], pos) for t in frames])
            # One id per true cell and one true cell per id: the same cells, renamed.
            assert_same_up_to_relabel(truth, data.y[i, ..., 0])
    assert {p: sha256_file(p) for p in hashes} == hashes  # downloads never overwritten


def test_convert_then_relabel_without_cleaning(
    prepared: tuple[SyntheticMovie, PrepareResult, dict[Path, str]],
) -> None:
    _, prep, hashes = prepared
    wf = prep.wf
    written = convert_grayscale_all(wf.annotations)
    assert len(written) == len(hashes)
    for src in hashes:
        montage = src.name.removesuffix("_annotation.png")
        grey = read_image(wf.label_path(montage))
        assert grey.dtype == np.uint16
        np.testing.assert_array_equal(grey, decode_annotation(read_image(src)))
    # Grey ids with gaps get renumbered 1..n in order.
    path = wf.label_path(wf.montage_name(prep.montages[0]))
    write_image(path, np.where(read_image(path) > 0, read_image(path) * 3 + 4, 0))
    relabel_montages(wf.annotations)
    ids = np.unique(read_image(path))
    np.testing.assert_array_equal(ids, np.arange(len(ids)))


def test_clean_montages_does_not_need_convert(
    prepared: tuple[SyntheticMovie, PrepareResult, dict[Path, str]],
) -> None:
    _, prep, _ = prepared
    wf = prep.wf
    first = [r.dst for r in clean_montages(wf.annotations)]
    before = {p: sha256_file(p) for p in first}
    convert_grayscale_all(wf.annotations)
    results = clean_montages(wf.annotations)
    assert all(r.ok for r in results)
    assert {r.dst: sha256_file(r.dst) for r in results} == before
    relabel_montages(wf.annotations)  # already 1..n: nothing changes
    assert {p: sha256_file(p) for p in first} == before


def test_bad_files_are_skipped(
    prepared: tuple[SyntheticMovie, PrepareResult, dict[Path, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, prep, hashes = prepared
    wf = prep.wf
    broken = next(iter(hashes))
    broken.write_bytes(b"not a png")
    (wf.annotations / "README.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        written = convert_grayscale_all(wf.annotations)
        results = clean_montages(wf.annotations)
    assert len(written) == len(hashes) - 1
    assert [r.ok for r in results].count(False) == 1
    assert "README.png: not a montage annotation; ignored" in caplog.text
    assert f"{broken.name}: not converted" in caplog.text


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"must be named '\{identifier\}_annotations'"):
        clean_montages(tmp_path / "annotations")
    with pytest.raises(InputError, match="annotations folder not found"):
        convert_grayscale_all(tmp_path / "exp_annotations")
    (tmp_path / "exp_annotations").mkdir()
    with pytest.raises(InputError, match="no montage annotations in this folder"):
        convert_grayscale_all(tmp_path / "exp_annotations")
    with pytest.raises(InputError, match="no label montages to relabel"):
        relabel_montages(tmp_path / "exp_annotations")


def test_read_json_params_montage_names(tmp_path: Path) -> None:
    log = {"date": "2019", "montage_len": 10, "identifier": "old", "num_x_segments": 4,
           "num_y_segments": 3, "row_length": 5, "x_buffer": 2, "y_buffer": 1,
           "montages_in_pos": 3}
    logs = tmp_path / "json_logs"
    logs.mkdir()
    (logs / "old_montage_maker.json").write_text(json.dumps(log))  # the seed's older name
    assert read_json_params_montage(logs, "old") == (10, 4, 3, 5, 2, 1)
    elsewhere = tmp_path / "my_logs"
    elsewhere.mkdir()
    (elsewhere / "old_montage_maker_log.json").write_text(json.dumps(log))
    assert read_json_params_montage(str(elsewhere), "old")[:3] == (10, 4, 3)


def test_make_training_data_options(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    part = tmp_path / "movies" / "part2"
    wf = WorkingFolder(tmp_path, "exp")
    pos = Position(10, 0)  # the seed's 'x_0{}'.format(10) is 'x_010'
    raw = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    for f in range(3):
        if f < 2:
            write_image(wf.raw_tile_frame(2, pos, f), raw[f])
        write_image(wf.annotated_frame(2, pos, f), np.full((3, 4), f, np.uint16))
    write_image(wf.raw_tile_frame(2, pos, 2), raw[1])
    with caplog.at_level(logging.WARNING):
        path = make_training_data(direc_name=part, file_name_save=tmp_path / "out",
                                  training_direcs=["x_0{}_y_0{}".format(10, 0)],  # noqa: UP032
                                  num_frames=2, reshape_size=256)
        make_training_data(direc_name=part, file_name_save=tmp_path / "again.npz")
    assert path == tmp_path / "out.npz"
    assert caplog.text.count("accepted for compatibility and ignored") == 1
    assert "reshape_size" in caplog.text
    data = load_npz(path)
    assert data.X.shape == (1, 2, 3, 4, 1)
    np.testing.assert_array_equal(data.X[0, ..., 0], raw)
    assert (data.part, data.frame_offset, data.positions) == (
        2, montage_of_part(2) * 2, ["x_10_y_00"])
    assert load_npz(tmp_path / "again.npz").frame_offset == -1
    assert len(list_images(part / "x_10_y_00" / "raw")) == 3


def test_notebook_stage_wrappers_use_the_given_folders(
    prepared: tuple[SyntheticMovie, PrepareResult, dict[Path, str]], tmp_path: Path
) -> None:
    _, prep, _ = prepared
    moved = tmp_path / "elsewhere_raw"
    prep.wf.raw.rename(moved)
    result = raw_movie_maker(tmp_path, moved, IDENTIFIER)
    assert result.files_written == 2 * 10
    clean_montages(prep.wf.annotations)
    skip = [prep.wf.montage_name(prep.montages[0])]
    movies = all_montages_chopper(tmp_path, IDENTIFIER + "_annotations", IDENTIFIER,
                                  skip=skip)
    assert [m.montage for m in movies.missing] == skip


def test_notebook_steps_on_an_executor_write_the_same_files(
    prepared: tuple[SyntheticMovie, PrepareResult, dict[Path, str]],
) -> None:
    from cellcrowd.executor import LocalExecutor

    _, prep, _ = prepared
    wf = prep.wf

    def harvest(executor: LocalExecutor | None) -> dict[str, str]:
        clean_montages(wf.annotations, executor=executor)
        all_montages_chopper(wf.base, wf.annotations.name, IDENTIFIER, executor=executor)
        raw_movie_maker(wf.base, wf.raw, IDENTIFIER, executor=executor)
        return {p.relative_to(wf.base).as_posix(): sha256_file(p)
                for folder in (wf.labels, wf.movies) for p in sorted(folder.rglob("*.*"))}

    def remove_outputs() -> None:
        for folder in (wf.labels, wf.movies):
            for path in folder.rglob("*.*"):
                path.unlink()

    serial = harvest(LocalExecutor(1))
    remove_outputs()
    executor = LocalExecutor(2)
    try:
        parallel = harvest(executor)
    finally:
        executor.close()
    assert parallel == serial
    remove_outputs()
    before = set(multiprocessing.active_children())
    assert harvest(None) == serial  # the default: a local pool, as cellcrowd run's
    assert set(multiprocessing.active_children()) <= before  # and it was closed
    assert any("/annotated/" in name for name in serial)
    assert any("/raw/" in name for name in serial)
