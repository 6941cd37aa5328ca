from __future__ import annotations

from pathlib import Path

import pytest

from cellcrowd.errors import InputError
from cellcrowd.geometry import Position
from cellcrowd.layout import (
    MontageKey,
    Padding,
    WorkingFolder,
    montage_name,
    parse_montage_name,
    parse_position_name,
    parse_report_name,
    position_name,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("exp_x_1_y_0_montage_3", MontageKey("exp", 1, 0, 3)),
        ("exp_x_01_y_00_montage_03.png", MontageKey("exp", 1, 0, 3)),
        ("my_x_exp_x_10_y_02_montage_11_annotation.png", MontageKey("my_x_exp", 10, 2, 11)),
        ("https://s3.example/b/a%20b_x_0_y_0_montage_0.png?sig=1", MontageKey("a b", 0, 0, 0)),
        ("exp_x_123_y_004_montage_1000_labels.png", MontageKey("exp", 123, 4, 1000)),
    ],
    ids=["unpadded", "padded", "identifier-with-x", "url", "wide"],
)
def test_parse_montage_name(name: str, expected: MontageKey) -> None:
    assert parse_montage_name(name) == expected


def test_parse_refuses_other_names() -> None:
    with pytest.raises(InputError, match="is not a montage name"):
        parse_montage_name("frame_001.png")


def test_names_round_trip_and_widen() -> None:
    key = MontageKey("exp", 101, 7, 1000)
    padding = Padding.for_counts(num_x=102, num_y=8, frames=1500, montages=1001)
    assert padding == Padding(position=3, frame=4, montage=4)
    name = montage_name(key, padding)
    assert name == "exp_x_101_y_007_montage_1000"
    assert parse_montage_name(name) == key
    # Default widths follow the original notebook.
    assert montage_name(MontageKey("exp", 1, 2, 3)) == "exp_x_01_y_02_montage_03"


def test_working_folder_defaults(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    assert wf.raw == tmp_path / "raw"
    assert wf.annotations == tmp_path / "exp_annotations"
    assert wf.report_csv(1363594) == tmp_path / "CSV" / "job_1363594_full_report.csv"
    assert wf.broken_links_csv(7).name == "job_7_full_report_broken_links.csv"
    assert wf.reupload_csv(7).name == "job_7_reupload.csv"
    assert wf.chopper_log.name == "exp_overlapping_chopper_log.json"
    assert wf.raw_tile_frame(2, Position(1, 0), 5) == (
        tmp_path / "movies" / "part2" / "x_01_y_00" / "raw" / "exp_raw_x_01_y_00_frame_005.tif"
    )
    assert wf.label_path("m") != wf.annotation_path("m")
    wide = wf.with_counts(frames=1200)
    assert wide.annotated_frame(1, Position(0, 0), 7).name == "exp_x_00_y_00_frame_0007.png"


def test_old_montage_log_name_is_found(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    assert wf.montage_log.name == "exp_montage_maker_log.json"
    wf.json_logs.mkdir()
    (wf.json_logs / "exp_montage_maker.json").write_text("{}")
    assert wf.montage_log.name == "exp_montage_maker.json"


def test_bad_identifier() -> None:
    with pytest.raises(InputError, match="cannot be used in file names"):
        WorkingFolder(Path("."), "a/b")
    with pytest.raises(ValueError, match="kind must be"):
        WorkingFolder(Path("."), "a").stitched_frame("labels", 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("x_00_y_01", Position(0, 1)), ("x_010_y_2", Position(10, 2)), ("x_1_y", None),
     ("raw", None), ("x_01_y_00_old", None)],
    ids=["padded", "any-padding", "no-y", "other", "suffix"],
)
def test_parse_position_name(name: str, expected: Position | None) -> None:
    assert parse_position_name(name) == expected
    if expected is not None:
        assert parse_position_name(position_name(expected)) == expected


def test_parse_report_name(tmp_path: Path) -> None:
    wf = WorkingFolder(tmp_path, "exp")
    for job, kind in (("1363594", "full"), ("7", "aggregated"), ("a_b", "json")):
        assert parse_report_name(wf.report_csv(job, kind).name) == (job, kind)
    assert parse_report_name("job_7_full_report_broken_links.csv") is None
    assert parse_report_name("report.csv") is None


def test_working_folder_of_an_annotations_folder(tmp_path: Path) -> None:
    wf = WorkingFolder.from_annotations_folder(tmp_path / "my_exp_annotations")
    assert (wf.base, wf.identifier) == (tmp_path, "my_exp")
    assert wf.annotations == tmp_path / "my_exp_annotations"
    for bad in ("annotations", "_annotations", "exp_labels"):
        with pytest.raises(InputError, match="must be named '\\{identifier\\}_annotations'"):
            WorkingFolder.from_annotations_folder(tmp_path / bad)
