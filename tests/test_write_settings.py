"""Write settings (deflate levels, codec, deferred syncing) and the streamed .npz writer."""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellcrowd import files
from cellcrowd.executor import LocalExecutor, run_tasks
from cellcrowd.export.trk import read_trk, write_trk
from cellcrowd.files import (
    WriteSettings,
    atomic_write_bytes,
    deferred_sync,
    read_image,
    sync_paths,
    use_write_settings,
    write_image,
    write_npz,
    write_settings,
)


def _arrays(seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 40, size=(2, 3, 33, 17, 1)).astype(np.int32)
    return {
        "X": rng.normal(100, 30, size=(2, 3, 33, 17, 1)).astype(np.float32),
        "y": labels,
        "positions": np.array(["x_00_y_00", "x_01_y_00"]),
        "part": np.int64(rng.integers(0, 9)),
        "identifier": np.str_("exp"),
        "empty": np.zeros((0, 4), np.uint16),
    }


@pytest.mark.parametrize("codec", ["zlib", "auto"])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_write_npz_reads_back_like_savez(tmp_path: Path, codec: str, level: int) -> None:
    arrays = _arrays(level)
    np.savez_compressed(tmp_path / "ref.npz", **arrays)  # type: ignore[arg-type]
    with use_write_settings(codec=codec):
        path = write_npz(tmp_path / "a.npz", arrays, level=level)
    with np.load(path) as got, np.load(tmp_path / "ref.npz") as ref:
        assert sorted(got.files) == sorted(ref.files)
        for key in ref.files:
            assert got[key].dtype == ref[key].dtype
            np.testing.assert_array_equal(got[key], ref[key])
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every member's CRC checks out


def test_write_npz_with_isal_is_plain_deflate(tmp_path: Path) -> None:
    pytest.importorskip("isal")
    arrays = _arrays(3)
    with use_write_settings(codec="isal"):
        path = write_npz(tmp_path / "a.npz", arrays, level=1)
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
        assert zf.testzip() is None
    with np.load(path) as got:
        np.testing.assert_array_equal(got["X"], arrays["X"])


def test_isal_crc_gives_the_bytes_zipfile_gives(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """write_npz computes the members' CRC-32 with python-isal instead of letting zipfile
    do it with zlib: the file is byte for byte what zipfile writes with the same deflate."""
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    from cellcrowd import npzfile

    crcs: list[int] = []
    monkeypatch.setattr(npzfile._IsalMember, "__init__", _counting(
        npzfile._IsalMember.__init__, crcs))
    arrays = {"X": np.random.default_rng(3).normal(size=(5, 300, 301)).astype(np.float32),
              "y": np.arange(10**6, dtype=np.int32).reshape(1000, 1000) // 7,
              "empty": np.zeros((0, 4))}
    with use_write_settings(codec="isal"):
        path = write_npz(tmp_path / "a.npz", arrays, level=1)
    reference = tmp_path / "ref.npz"
    with zipfile.ZipFile(reference, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                member._compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
                np.lib.format.write_array(member, array, allow_pickle=False)
    assert len(crcs) == len(arrays)  # every member went through python-isal's CRC
    assert path.read_bytes() == reference.read_bytes()
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None


def _counting(init: Any, calls: list[int]) -> Any:
    def counted(self: Any, *args: Any) -> None:
        calls.append(1)
        init(self, *args)
    return counted


def test_write_npz_is_reproducible_and_stored_when_uncompressed(tmp_path: Path) -> None:
    arrays = _arrays(5)
    first = write_npz(tmp_path / "a.npz", arrays).read_bytes()
    assert write_npz(tmp_path / "b.npz", arrays).read_bytes() == first
    stored = write_npz(tmp_path / "c.npz", arrays, compressed=False)
    with zipfile.ZipFile(stored) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    with np.load(stored) as got:
        np.testing.assert_array_equal(got["y"], arrays["y"])


def test_write_npz_bad_level_and_objects(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="npz deflate level must be 0 to 9, got 10"):
        write_npz(tmp_path / "a.npz", {"X": np.zeros(3)}, level=10)
    with pytest.raises(ValueError, match="allow_pickle"):
        write_npz(tmp_path / "b.npz", {"X": np.array([{}, 1], dtype=object)})
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_isal_codec_missing_is_a_clear_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # as if python-isal were not installed
    with use_write_settings(codec="isal"), pytest.raises(ImportError, match="python-isal"):
        write_npz(tmp_path / "a.npz", {"X": np.zeros(3)})
    with (use_write_settings(codec="auto"),  # auto falls back to zlib
          np.load(write_npz(tmp_path / "b.npz", {"X": np.arange(3)})) as got):
        assert got["X"].tolist() == [0, 1, 2]


def test_settings_are_checked_and_restored() -> None:
    before = write_settings()
    with pytest.raises(ValueError, match="png_level must be an integer from 0 to 9, got 12"):
        WriteSettings(png_level=12)
    with pytest.raises(ValueError, match="codec must be one of auto, zlib, isal, got 'lz4'"):
        WriteSettings(codec="lz4")
    seen = []

    def inside() -> None:
        with use_write_settings(npz_level=7) as s:
            seen.append((write_settings() is s, s.npz_level))
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        inside()
    assert seen == [(True, 7)]
    assert write_settings() == before


def _npz_level(_: int) -> tuple[int, bool]:
    return write_settings().npz_level, write_settings().durable


def test_tasks_on_workers_see_the_settings_of_their_caller() -> None:
    executor = LocalExecutor(2)
    try:
        with use_write_settings(npz_level=4), deferred_sync():
            got = list(run_tasks(_npz_level, range(4), executor=executor))
    finally:
        executor.close()
    assert got == [(4, False)] * 4


def _interrupted_write(target: Path) -> None:
    with files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("stop")


def test_deferred_sync_skips_per_file_fsync_but_stays_atomic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    atomic_write_bytes(tmp_path / "durable.bin", b"a")
    assert len(synced) == 1
    target = tmp_path / "sub" / "f.bin"
    with deferred_sync():
        atomic_write_bytes(target, b"old")
        with pytest.raises(RuntimeError, match="stop"):
            _interrupted_write(target)
    assert len(synced) == 1
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]
    count = sync_paths([target, tmp_path / "missing.bin", tmp_path / "sub"])
    assert count == len(synced) - 1 == 2  # the file and its folder (named twice, synced once)


def test_image_levels_change_bytes_not_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, size=(40, 50)).astype(np.uint16)
    sizes = {}
    for level in (0, 1, 9):
        with use_write_settings(png_level=level, tiff_level=level):
            for suffix in (".png", ".tif"):
                path = write_image(tmp_path / f"{level}{suffix}", image)
                np.testing.assert_array_equal(read_image(path), image)
                sizes[level, suffix] = path.stat().st_size
    assert sizes[0, ".tif"] > sizes[9, ".tif"]
    assert sizes[0, ".png"] > sizes[9, ".png"]


def _trk_at(path: Path, **settings: Any) -> Path:
    rng = np.random.default_rng(2)
    tracked = np.zeros((3, 20, 20), np.int32)
    tracked[:, 2:8, 2:8] = 1
    raw = rng.integers(0, 255, size=(3, 20, 20)).astype(np.uint16)
    lineage = {1: {"label": 1, "frames": [0, 1, 2], "daughters": [], "parent": None,
                   "capped": False, "frame_div": None}}
    with use_write_settings(**settings):
        write_trk(path, raw, tracked, lineage)
    data = read_trk(path)
    np.testing.assert_array_equal(data.tracked[..., 0], tracked)
    np.testing.assert_array_equal(data.raw[..., 0], raw)
    return path


@pytest.mark.parametrize("codec", ["zlib", "isal"])
def test_trk_gzip_level_and_codec_are_settings(tmp_path: Path, codec: str) -> None:
    import gzip
    import tarfile

    if codec == "isal":
        pytest.importorskip("isal")
    made = {level: _trk_at(tmp_path / f"{level}.trk", codec=codec, gzip_level=level)
            for level in (0, 1, 3, 9)}
    for level, path in made.items():
        data = path.read_bytes()
        # plain gzip: no file name (flags 0), time 0; the standard library reads it whole
        assert data[:4] == b"\x1f\x8b\x08\x00", level  # deflate, no flags (no name)
        assert data[4:8] == bytes(4), level
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
            assert tar.getnames() == ["lineage.json", "raw.npy", "tracked.npy"]
        assert _trk_at(tmp_path / "again.trk", codec=codec,
                       gzip_level=level).read_bytes() == data  # reproducible
    assert len({path.read_bytes() for path in made.values()}) == len(made)


def test_trk_is_compressed_by_isal_up_to_its_level_3(tmp_path: Path) -> None:
    pytest.importorskip("isal")
    for level in (1, 3, 4):
        by = {codec: _trk_at(tmp_path / f"{codec}{level}.trk", codec=codec, gzip_level=level)
              for codec in ("zlib", "isal", "auto")}
        assert by["auto"].read_bytes() == by["isal"].read_bytes()
        # python-isal's deflate at levels 0-3, zlib's above
        assert (by["isal"].read_bytes() == by["zlib"].read_bytes()) == (level > 3), level
    assert WriteSettings().gzip_level == 3


@pytest.mark.parametrize("dtype", ["<i4", "<u2", "<f4", ">f8", "|u1"])
@pytest.mark.parametrize("shape", [(0, 3), (3, 5, 7, 1), (1,)])
def test_trk_members_stream_the_bytes_np_save_writes(dtype: str, shape: tuple[int, ...]) -> None:
    import io

    from cellcrowd.export.npzstream import NpyReader

    array = np.random.default_rng(len(shape)).integers(0, 200, size=shape).astype(dtype)
    expected = io.BytesIO()
    np.save(expected, array, allow_pickle=False)
    reader = NpyReader.of(array)
    blocks = iter(lambda: reader.read(7), b"")
    got = b"".join(blocks)
    assert reader.size == len(got)
    assert got == expected.getvalue()
