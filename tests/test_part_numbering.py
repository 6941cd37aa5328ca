"""Parts are numbered from 0 as in the original notebook; folders made by 0.1.0 are refused.

cellcrowd 0.1.0 wrote montage ``m`` to ``movies/part{m + 1}``. Such a folder is found by
its highest part (``part{montages}`` cannot exist when parts count from 0) and refused
with a message that says how to redo the movies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.config import Config, load_config
from cellcrowd.errors import InputError, PipelineError
from cellcrowd.export.npz import load_npz
from cellcrowd.files import list_images, read_image
from cellcrowd.layout import (
    WorkingFolder,
    montage_of_part,
    old_part_folders,
    part_name,
    part_numbers,
    part_of_montage,
)
from cellcrowd.movies import montages_to_movies, raw_to_movies, read_movie_geometry
from cellcrowd.pipeline import run
from cellcrowd.sim.demo import ExampleSettings, make_example, save_config

SETTINGS = ExampleSettings(frames=12, shape=(64, 64), cells=4, divisions=0, montage_len=4,
                           row_length=2)
MONTAGES = 3


def test_part_zero_is_montage_zero() -> None:
    assert [part_name(part_of_montage(m)) for m in range(MONTAGES)] == [
        "part0", "part1", "part2"]
    assert [montage_of_part(p) for p in part_numbers(MONTAGES)] == list(range(MONTAGES))


def _renumber_from_one(wf: WorkingFolder) -> None:
    """Move ``movies/part{N}`` to ``part{N + 1}``, as cellcrowd 0.1.0 named them."""
    for part in sorted(wf.part_folders(), reverse=True):
        wf.part_dir(part).rename(wf.part_dir(part + 1))


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    example = make_example(tmp_path / "work", SETTINGS)
    wf = example.wf
    for path in sorted(wf.truth.glob("*_truth.png")):  # the truth stands in for the crowd
        target = wf.label_path(path.name[: -len("_truth.png")])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    save_config(example.config, tmp_path / "cellcrowd.toml")
    return load_config(tmp_path / "cellcrowd.toml")


def test_raw_part_one_holds_montage_one(cfg: Config) -> None:
    wf = raw_to_movies(cfg.working_folder()).wf
    assert sorted(wf.part_folders()) == list(part_numbers(MONTAGES))
    grid = read_movie_geometry(wf).grid
    raw = [read_image(p) for p in list_images(wf.raw)]
    for pos in grid.positions:
        frames = [read_image(p) for p in list_images(wf.raw_tile_dir(1, pos))]
        assert len(frames) == SETTINGS.montage_len
        for f, frame in enumerate(frames):  # part1 = frames 4..7, as in the original
            np.testing.assert_array_equal(frame, grid.tile(raw[SETTINGS.montage_len + f], pos))


def test_old_folders_are_found(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    assert old_part_folders(wf, MONTAGES) == []
    for part in part_numbers(MONTAGES):
        wf.part_dir(part).mkdir(parents=True)
    assert old_part_folders(wf, MONTAGES) == []
    shutil.rmtree(wf.part_dir(0))  # a new folder whose montage 0 was never annotated
    assert old_part_folders(wf, MONTAGES) == []
    _renumber_from_one(wf)
    assert [p.name for p in old_part_folders(wf, MONTAGES)] == ["part2", "part3"]


def test_movies_of_0_1_0_are_refused_then_redone(cfg: Config) -> None:
    summary = run(cfg, from_stage="movies", until_stage="npz")
    wf = WorkingFolder(cfg.base, cfg.identifier)
    first = load_npz(cfg.working_folder().npz_part(part_of_montage(0)))
    assert summary.stage("movies").status == "ran"
    _renumber_from_one(wf)
    with pytest.raises(InputError, match=r"numbered from 1.*--force movies"):
        montages_to_movies(cfg.working_folder())
    with pytest.raises(InputError, match="numbered from 1"):
        raw_to_movies(cfg.working_folder())
    with pytest.raises(PipelineError, match=r"part1, part2, part3\) are numbered from 1.*"
                       r"cellcrowd run CONFIG --force movies"):
        run(cfg, from_stage="movies", until_stage="npz")
    redone = run(cfg, from_stage="movies", until_stage="npz", force=["movies"])
    assert redone.stage("movies").status == "ran"
    assert [p.name for p in wf.part_folders().values()] == ["part0", "part1", "part2"]
    npz = sorted(p.name for p in wf.npz.iterdir())
    assert npz == sorted(cfg.working_folder().npz_part(p).name for p in part_numbers(MONTAGES))
    again = load_npz(cfg.working_folder().npz_part(part_of_montage(0)))
    np.testing.assert_array_equal(again.X, first.X)
