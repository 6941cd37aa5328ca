from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cellcrowd.errors import LogError
from cellcrowd.geometry import TileGrid
from cellcrowd.logs import (
    ChopperLog,
    MontageLog,
    read_chopper_log,
    read_logs,
    read_montage_log,
    write_log,
)

OLD_CHOPPER = {
    "date": "2019-05-01",
    "num_x_segments": 4,
    "num_y_segments": 4,
    "overlap_perc": 10,
    "identifier": "old",
}
MONTAGE = {
    "date": "2019-05-01",
    "montage_len": 10,
    "identifier": "old",
    "num_x_segments": 4,
    "num_y_segments": 4,
    "row_length": 5,
    "x_buffer": 0,
    "y_buffer": 0,
    "montages_in_pos": 3,
}


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_old_chopper_log_needs_the_frame_size(tmp_path: Path) -> None:
    log = read_chopper_log(_write(tmp_path / "c.json", OLD_CHOPPER))
    assert log.original_y is None
    with pytest.raises(LogError, match="has no original_y/original_x"):
        log.tile_grid()
    grid = log.tile_grid((1024, 1024))
    assert grid.tile_shape == (306, 306)


def test_full_log_round_trip(tmp_path: Path) -> None:
    grid = TileGrid.for_frame((103, 77), num_x=3, num_y=4, overlap_perc=10)
    log = ChopperLog.from_grid(grid, identifier="exp", num_images=25)
    path = write_log(log, tmp_path / "json_logs" / "exp_overlapping_chopper_log.json")
    data = json.loads(path.read_text())
    for key in ("y_start_indices", "x_start_indices", "overlapping_x_pix", "overlapping_y_pix",
                "original_y", "original_x", "frame_offset", "num_images"):
        assert key in data
    back = read_chopper_log(path)
    assert back == log
    assert back.tile_grid() == grid
    assert back.tile_grid((103, 77)) == grid


def test_frame_size_must_match_the_log(tmp_path: Path) -> None:
    grid = TileGrid.for_frame((64, 64), num_x=2, num_y=2, overlap_perc=10)
    log = ChopperLog.from_grid(grid, identifier="exp", num_images=5)
    with pytest.raises(LogError, match="raw frames are 64x65"):
        log.tile_grid((64, 65))


def test_legacy_log_with_lost_rows_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = {**OLD_CHOPPER, "overlap_perc": 0}
    log = read_chopper_log(_write(tmp_path / "c.json", data))
    with caplog.at_level(logging.WARNING):
        grid = log.tile_grid((103, 100))
    assert grid.lost_pixels == (3, 0)
    assert "do not cover the last 3 rows" in caplog.text


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"montage_len": 0}, r"key 'montage_len': Input should be greater than or equal to 1"),
        ({"row_length": "five"}, r"key 'row_length'.*got 'five'"),
        ({"x_buffer": None}, r"key 'x_buffer'"),
    ],
    ids=["zero-length", "not-a-number", "null"],
)
def test_bad_montage_log_names_file_and_key(
    tmp_path: Path, change: dict[str, object], match: str
) -> None:
    path = _write(tmp_path / "m.json", {**MONTAGE, **change})
    with pytest.raises(LogError, match=match) as info:
        read_montage_log(path)
    assert str(path) in str(info.value)
    assert info.value.path == path


def test_missing_key_and_missing_file(tmp_path: Path) -> None:
    data = dict(MONTAGE)
    del data["row_length"]
    with pytest.raises(LogError, match=r"key 'row_length': Field required \(missing\)"):
        read_montage_log(_write(tmp_path / "m.json", data))
    with pytest.raises(LogError, match="log not found: run `cellcrowd prepare` first"):
        read_montage_log(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LogError, match="not valid JSON"):
        read_montage_log(tmp_path / "bad.json")
    with pytest.raises(LogError, match="expected a JSON object, got list"):
        read_montage_log(_write(tmp_path / "list.json", [1, 2]))


def test_start_indices_are_checked(tmp_path: Path) -> None:
    base = {**OLD_CHOPPER, "original_y": 100, "original_x": 100}
    log = ChopperLog.model_validate({**base, "y_start_indices": [0, 25, 50]})
    with pytest.raises(LogError, match="y_start_indices has 3 entries"):
        log.tile_grid()
    log = ChopperLog.model_validate({**base, "x_start_indices": [0, 25, 60, 75]})
    with pytest.raises(LogError, match="evenly spaced"):
        log.tile_grid()


def test_logs_must_agree(tmp_path: Path) -> None:
    chopper = _write(tmp_path / "c.json", OLD_CHOPPER)
    montage = _write(tmp_path / "m.json", {**MONTAGE, "num_x_segments": 3})
    with pytest.raises(LogError, match="num_x_segments is 3 here but 4"):
        read_logs(chopper, montage)
    good = _write(tmp_path / "m2.json", MONTAGE)
    c, m = read_logs(chopper, good)
    assert (c.num_x_segments, m.montage_len) == (4, 10)


def test_montage_log_layouts() -> None:
    log = MontageLog.model_validate(MONTAGE)
    layout = log.layout((30, 20))
    assert layout.montage_shape == (60, 100)
    assert log.layout_for_montage((60, 100)) == layout
