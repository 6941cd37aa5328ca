"""Stages redo only the units whose inputs changed (cellcrowd.pipeline.units).

The records themselves (fresh after done; stale when an input, an output, the
settings change; nothing fresh when forced), a toy stage run by the engine, and the
harvest: one montage's judgment changes, the rerun redoes that montage's cleaning,
movie frames and part file only, leaves every other file untouched, and ends with the
same bytes as a full rerun of the later stages.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellcrowd.config import Config, load_config
from cellcrowd.errors import InputError
from cellcrowd.files import read_image, write_image
from cellcrowd.layout import parse_montage_name
from cellcrowd.pipeline import Context, StageOutput, StageTable, run
from cellcrowd.pipeline import engine as pipeline_engine
from cellcrowd.pipeline.manifest import record
from cellcrowd.pipeline.units import UnitRecords
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config
from helpers import file_hashes, toy_table

SETTINGS = ExampleSettings(frames=20, shape=(96, 96), cells=6, divisions=1, montage_len=5,
                           row_length=5)
LATER = ["clean", "movies", "npz", "stitch", "trk", "ctc", "omezarr", "geff", "qc"]
KEY = "test-key-123"


# -- the records ------------------------------------------------------------------------


def _committed(units: UnitRecords, base: Path) -> dict[str, Any]:
    """The manifest entry a commit of ``units`` makes (the parts the records read)."""
    return {"units": units.records(), "outputs": record(units.paths(), base)}


def test_records_fresh_after_done_and_stale_on_any_change(tmp_path: Path) -> None:
    src, out = tmp_path / "a.txt", tmp_path / "a.out"
    src.write_text("one")
    out.write_text("ONE")
    first = UnitRecords(None, "salt", tmp_path)
    key = {"src": first.file_digest([src])}
    assert not first.recorded("a")
    assert not first.fresh("a", key, [out])  # never recorded
    first.done("a", key, [out], data={"cells": 3})
    entry = _committed(first, tmp_path)
    assert first.counts == {"redone": 1, "reused": 0}

    again = UnitRecords(entry, "salt", tmp_path)
    assert again.recorded("a")
    assert not again.recorded("b")
    assert again.fresh("a", key, [out])
    assert again.data("a") == {"cells": 3}
    assert again.counts == {"redone": 0, "reused": 1}
    assert again.records() == entry["units"]  # a fresh unit is carried over

    assert not UnitRecords(entry, "salt", tmp_path, forced=True).recorded("a")
    assert not UnitRecords(entry, "salt", tmp_path, forced=True).fresh("a", key, [out])
    assert not UnitRecords(entry, "other settings", tmp_path).fresh("a", key, [out])
    assert not UnitRecords(entry, "salt", tmp_path).fresh("a", key, [out, src])
    assert not UnitRecords({"outputs": entry["outputs"]}, "salt", tmp_path).fresh(
        "a", key, [out])  # a manifest of an older cellcrowd: no records

    src.write_text("two")  # the input changed: its key changes
    changed = UnitRecords(entry, "salt", tmp_path)
    assert not changed.fresh("a", {"src": changed.file_digest([src])}, [out])

    out.write_text("ONF")  # the output altered (same size)
    assert not UnitRecords(entry, "salt", tmp_path).fresh("a", key, [out])
    out.unlink()
    assert not UnitRecords(entry, "salt", tmp_path).fresh("a", key, [out])


# -- a toy stage through the engine ----------------------------------------------------


def test_a_stage_redoes_only_the_units_that_changed(tmp_path: Path) -> None:
    base = tmp_path / "work"
    (base / "in").mkdir(parents=True)
    for name in "abcd":
        (base / "in" / f"{name}.txt").write_text(name)
    (base / "cellcrowd.toml").write_text("job_id = 1\nidentifier = 'toy'\n")
    cfg = load_config(base / "cellcrowd.toml")
    calls: list[str] = []
    table = toy_table(calls)

    def once(config: Config = cfg, force: tuple[str, ...] = ()) -> dict[str, int]:
        calls.clear()
        return dict(pipeline_engine.run(config, table, force=force).stage("upper").units)

    assert once() == {"redone": 4, "reused": 0}
    assert calls == ["a.txt", "b.txt", "c.txt", "d.txt"]
    assert once() == {}
    assert calls == []
    (base / "in" / "b.txt").write_text("B changed")
    assert once() == {"redone": 1, "reused": 3}
    assert calls == ["b.txt"]
    (base / "out" / "c.txt").unlink()
    assert once() == {"redone": 1, "reused": 3}
    assert calls == ["c.txt"]
    (base / "out" / "d.txt").write_text("tampered")
    assert once() == {"redone": 1, "reused": 3}
    assert calls == ["d.txt"]
    assert once(force=("upper",)) == {"redone": 4, "reused": 0}
    assert once(cfg.with_overrides({"clean.min_size": 3})) == {"redone": 4, "reused": 0}
    assert (base / "out" / "a.txt").read_text() == "A!!!"
    manifest = json.loads(cfg.working_folder().manifest.read_text())
    assert sorted(manifest["stages"]["upper"]["units"]) == ["a.txt", "b.txt", "c.txt", "d.txt"]


def test_a_failed_stage_records_no_new_unit(tmp_path: Path) -> None:
    """Units done before a stage fails are not recorded: the entry keeps the last
    committed records, and the next run redoes them."""
    base = tmp_path / "work"
    (base / "in").mkdir(parents=True)
    for name in "ab":
        (base / "in" / f"{name}.txt").write_text(name)
    (base / "cellcrowd.toml").write_text("job_id = 1\nidentifier = 'toy'\n")
    cfg = load_config(base / "cellcrowd.toml")
    calls: list[str] = []
    table = toy_table(calls)
    pipeline_engine.run(cfg, table)
    committed = json.loads(cfg.working_folder().manifest.read_text())["stages"]["upper"]
    (base / "in" / "a.txt").write_text("A new")
    (base / "in" / "b.txt").write_text("B new")

    def fail_after_a(ctx: Context) -> StageOutput:
        table.stages[0].run(ctx)  # does a and b, records them in ctx.units
        raise InputError("stopped before the commit")

    failing = StageTable((dataclasses.replace(table.stages[0], run=fail_after_a),),
                         table.folder)
    with pytest.raises(InputError):
        pipeline_engine.run(cfg, failing)
    entry = json.loads(cfg.working_folder().manifest.read_text())["stages"]["upper"]
    assert entry["state"] == "failed"
    assert entry["units"] == committed["units"]
    calls.clear()
    summary = pipeline_engine.run(cfg, table)
    assert calls == ["a.txt", "b.txt"]
    assert summary.stage("upper").units == {"redone": 2, "reused": 0}


# -- the harvest -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("prepared"), SETTINGS)


@pytest.fixture(scope="module")
def job(example: Example) -> Iterator[tuple[Any, Config]]:
    with emulated_job(example, api_key=KEY) as served:
        yield served


def _copy(example: Example, dest: Path, served: Config, **overrides: Any) -> Config:
    shutil.copytree(example.config.base, dest)
    save_config(served.model_copy(update={"base": dest, "raw": None}), dest / "cellcrowd.toml")
    return load_config(dest / "cellcrowd.toml").with_overrides(overrides)


def _erase_half(path: Path) -> None:
    """What a new judgment replacing this one could look like: half of it left empty."""
    image = read_image(path).copy()
    image[:, : image.shape[1] // 2] = 0
    write_image(path, image)


def _stats(base: Path, folders: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {p.relative_to(base).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for folder in folders for p in sorted((base / folder).rglob("*")) if p.is_file()}


def _key() -> str:
    return KEY


def test_one_changed_montage_is_all_a_rerun_redoes(
    job: tuple[Any, Config], example: Example, tmp_path: Path,
) -> None:
    cfg = _copy(example, tmp_path / "work", job[1], **{"clean.strategy": "vote"})
    first = run(cfg, api_key=_key)
    wf = cfg.working_folder()
    cleanings = first.stage("clean").units["redone"]
    montages = sorted(p.name[: -len("_labels.png")] for p in wf.labels.glob("*_labels.png"))
    single = [m for m in montages if not wf.consensus_report_path(m).exists()]
    assert single, "the example has montages with one usable judgment"
    name = single[0]
    (judgment,) = (wf.annotations / "judgments").glob(f"{name}_unit_*.png")
    _erase_half(judgment)
    labels_before = wf.label_path(name).read_bytes()
    part = parse_montage_name(name).part
    own = {f"npz/{wf.npz_part(part).name}", wf.label_path(name).relative_to(wf.base).as_posix(),
           "demo_labels/clean_stats.json", "demo_labels/consensus_workers.json"}
    before = _stats(wf.base, ("demo_labels", "movies", "npz"))
    kept = _stats(wf.base, (".cellcrowd/stitch",))
    assert sorted(kept) == [f".cellcrowd/stitch/part{n}.stitched" for n in range(len(kept))]

    second = run(cfg, api_key=_key)
    assert wf.label_path(name).read_bytes() != labels_before
    assert second.stage("clean").units == {"redone": 1, "reused": cleanings - 1}
    assert second.stage("movies").units == {
        "redone": 1, "reused": first.stage("movies").units["redone"] - 1}
    assert second.stage("npz").units == {
        "redone": 1, "reused": first.stage("npz").units["redone"] - 1}
    after = _stats(wf.base, ("demo_labels", "movies", "npz"))
    assert set(after) == set(before)
    changed = {k for k in before if after[k] != before[k]}
    frames = {k for k in changed if k.startswith("movies/")}
    pos = f"x_{parse_montage_name(name).x:02d}_y_{parse_montage_name(name).y:02d}"
    assert frames
    assert all(f"/part{part}/" in k and pos in k and "/annotated/" in k
                          for k in frames)
    assert changed - frames <= own
    # stitch: only the changed montage's part was stitched again (linking runs whole)
    assert second.stage("stitch").units == {"redone": 1, "reused": len(kept) - 1}
    restitched = _stats(wf.base, (".cellcrowd/stitch",))
    assert {k for k in kept if restitched[k] != kept[k]} == {
        f".cellcrowd/stitch/part{part}.stitched"}

    incremental = file_hashes(wf.base)
    parts = file_hashes(wf.base / ".cellcrowd" / "stitch", skip_folders=())
    full = run(cfg, api_key=_key, force=LATER)
    assert full.stage("clean").units == {"redone": cleanings, "reused": 0}
    assert full.stage("stitch").units == {"redone": len(kept), "reused": 0}
    assert file_hashes(wf.base) == incremental
    assert file_hashes(wf.base / ".cellcrowd" / "stitch", skip_folders=()) == parts


def test_reliability_consensus_rerun_is_byte_identical(
    job: tuple[Any, Config], example: Example, tmp_path: Path,
) -> None:
    """With job-wide reliabilities a merged montage's result depends on every montage;
    the rerun still reuses the cleaning of each unchanged judgment."""
    cfg = _copy(example, tmp_path / "work", job[1])
    first = run(cfg, api_key=_key)
    wf = cfg.working_folder()
    merged = sorted(p.name[: -len("_consensus.json")]
                    for p in wf.labels.glob("*_consensus.json"))
    judgment = sorted((wf.annotations / "judgments").glob(f"{merged[0]}_unit_*.png"))[0]
    _erase_half(judgment)
    second = run(cfg, api_key=_key).stage("clean").units
    total = first.stage("clean").units["redone"]
    judgments = len(list((wf.labels / "judgments").glob("*.png")))
    assert second["redone"] + second["reused"] == total
    assert second["reused"] >= judgments - 1 + len(
        [p for p in wf.labels.glob("*_labels.png")]) - len(merged)  # every other cleaning
    incremental = file_hashes(wf.base)
    run(cfg, api_key=_key, force=LATER)
    assert file_hashes(wf.base) == incremental
