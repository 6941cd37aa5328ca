"""The hashes a run keeps (``.cellcrowd/hashes.json``) spare the next process the reading.

A new process (``cellcrowd status``, a resumed run) takes the SHA-256 of every file whose
identity (inode, size, modification and change times) is what it was; a file changed
in any way ``stat`` sees is hashed again, even with its size and modification time put
back; a broken cache is ignored; a folder's cache names no other folder's files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cellcrowd import hashes
from cellcrowd.config import Config, load_config
from cellcrowd.pipeline import StageTable
from cellcrowd.pipeline import engine as pipeline_engine
from cellcrowd.pipeline.folderstatus import status
from helpers import toy_table


def _table() -> StageTable:
    return toy_table([])


def _folder(base: Path) -> Config:
    (base / "in").mkdir(parents=True)
    for name in "abcd":
        (base / "in" / f"{name}.txt").write_text(name * 10)
    (base / "cellcrowd.toml").write_text("job_id = 1\nidentifier = 'toy'\n")
    return load_config(base / "cellcrowd.toml")


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files hashed from now on (every call of ``sha256_file``)."""
    calls: list[str] = []
    real = hashes.sha256_file

    def spy(path: str | Path, chunk: int = 1 << 20) -> str:
        calls.append(Path(path).name)
        return real(path, chunk)

    monkeypatch.setattr(hashes, "sha256_file", spy)
    return calls


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget every hash held in memory, as a new process starts."""
    monkeypatch.setattr(hashes, "_KNOWN", {})


def _state(cfg: Config) -> tuple[str, str]:
    stage = status(cfg, _table()).stages[0]
    return stage.state, stage.reason


def test_a_new_process_hashes_no_unchanged_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashed: list[str]) -> None:
    cfg = _folder(tmp_path / "work")
    pipeline_engine.run(cfg, _table())
    cache = cfg.working_folder().hash_cache
    written = cache.stat()
    _new_process(monkeypatch)
    hashed.clear()
    assert _state(cfg) == ("done", "up to date")
    assert hashed == []
    pipeline_engine.run(cfg, _table())  # up to date: the cache is not written again
    assert hashed == []
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (written.st_ino,
                                                               written.st_mtime_ns)
    cfg.working_folder().hash_cache.unlink()  # without the cache: every file read again
    _new_process(monkeypatch)
    assert _state(cfg) == ("done", "up to date")
    assert sorted(hashed) == sorted(["a.txt", "b.txt", "c.txt", "d.txt"] * 2)


@pytest.mark.parametrize("where", ["in", "out"])
def test_a_file_changed_behind_the_cache_is_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashed: list[str], where: str) -> None:
    """Same size, modification time put back: the change time still tells."""
    cfg = _folder(tmp_path / "work")
    pipeline_engine.run(cfg, _table())
    path = tmp_path / "work" / where / "c.txt"
    before = path.stat()
    with open(path, "r+b") as fh:  # in place: the same inode
        fh.write(b"X")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    _new_process(monkeypatch)
    hashed.clear()
    state, reason = _state(cfg)
    assert state != "done"
    assert "c.txt" in reason
    assert hashed.count("c.txt") >= 1
    summary = pipeline_engine.run(cfg, _table())
    assert dict(summary.stage("upper").units) == {"redone": 1, "reused": 3}


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"version": 99, "files": []}', '{"version": 1, "files": 7}',
    '{"version": 1, "files": [["x", 1], 3, null]}',
    '{"version": 1, "files": [["/nowhere/x", 1, 2, 3, 4, "' + "0" * 64 + '"]]}',
])
def test_a_broken_cache_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   hashed: list[str], text: str) -> None:
    cfg = _folder(tmp_path / "work")
    pipeline_engine.run(cfg, _table())
    cfg.working_folder().hash_cache.write_text(text)
    _new_process(monkeypatch)
    hashed.clear()
    assert _state(cfg) == ("done", "up to date")
    assert len(hashed) == 8


def test_a_cache_names_only_its_own_folders_files(tmp_path: Path) -> None:
    one, two = _folder(tmp_path / "one"), _folder(tmp_path / "two")
    pipeline_engine.run(one, _table())
    pipeline_engine.run(two, _table())  # the same process: both folders' hashes held
    for cfg, other in ((one, "two"), (two, "one")):
        kept = json.loads(cfg.working_folder().hash_cache.read_text())["files"]
        paths = [item[0] for item in kept]
        assert sum(Path(p).parent.name in ("in", "out") for p in paths) == 8
        assert not [p for p in paths if str(tmp_path / other) in p]


def test_a_process_running_again_keeps_only_the_files_still_there(tmp_path: Path) -> None:
    """A forced run replaces every output: the old files' digests are forgotten, not kept
    (in memory and in the cache) run after run."""
    cfg = _folder(tmp_path / "work")
    root = hashes.resolved_text(tmp_path / "work")
    counts = []
    for _ in range(3):
        pipeline_engine.run(cfg, _table(), force=["upper"])
        kept = json.loads(cfg.working_folder().hash_cache.read_text())["files"]
        held = [key for key, _ in hashes.known() if key[0].startswith(root)]
        counts.append((len(kept), len(held)))
        for path, ino, size, mtime, ctime, _sha in kept:  # each names the file as it is now
            st = os.stat(path)
            assert (ino, size, mtime, ctime) == (st.st_ino, st.st_size, st.st_mtime_ns,
                                                 st.st_ctime_ns)
    assert counts[0] == counts[1] == counts[2]
    assert counts[0][0] == 8  # 4 inputs and 4 outputs


def test_forget_stale_drops_removed_and_changed_files_only(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.txt" for name in ("kept", "removed", "changed")}
    for path in files.values():
        path.write_text("x")
        hashes.size_and_sha256(path)
    other = tmp_path.parent / f"{tmp_path.name}-other.txt"
    other.write_text("y")
    hashes.size_and_sha256(other)
    files["removed"].unlink()
    files["changed"].write_text("xx")
    root = hashes.resolved_text(tmp_path) + os.sep
    assert hashes.forget_stale(lambda p: p.startswith(root)) == 2
    held = {Path(key[0]).name for key, _ in hashes.known()}
    assert "kept.txt" in held
    assert not {"removed.txt", "changed.txt"} & held
    assert other.name in held  # not selected: left alone even if it were stale
    other.unlink()
