"""Disk full and other OS errors (issue 9): one clear line from the ``cellcrowd`` command,
and the rerun after freeing space resumes to the same bytes.

ENOSPC is injected in-process at the write layer (the rename that puts every finished
file in place, in ``cellcrowd.files.atomic_path``; tasks run in this process with
``--workers 1``); a real full tmpfs is not available in the test environment.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellcrowd import files
from cellcrowd.cli import main
from cellcrowd.config import Config
from cellcrowd.sim.demo import Example, ExampleSettings, emulated_job, make_example, save_config
from helpers import file_hashes

SETTINGS = ExampleSettings(frames=10, shape=(64, 64), cells=4, divisions=1, montage_len=5,
                           row_length=5)
KEY = "oserror-key-7d1e5a90c3"

#: Bookkeeping (the hash cache names each folder's own paths) and the QC report; the config
#: names its own folder.
SKIP: dict[str, Any] = {"skip_folders": {"qc"},
                        "skip_names": {"manifest.json", "hashes.json", "lock", "cellcrowd.toml"}}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return make_example(tmp_path_factory.mktemp("oserror-prepared"), SETTINGS)


@pytest.fixture(scope="module")
def served(example: Example) -> Iterator[tuple[Any, Config]]:
    with emulated_job(example, api_key=KEY) as job:
        yield job


def _copy(example: Example, served: Config, dest: Path) -> Path:
    shutil.copytree(example.config.base, dest)
    return save_config(served.model_copy(update={"base": dest, "raw": None}),
                       dest / "cellcrowd.toml")



def _disk_full_after(monkeypatch: pytest.MonkeyPatch, folder: str, writes: int) -> None:
    """Make the ``writes``-th file put in place under a folder named ``folder`` fail (ENOSPC).

    Every write renames its finished temporary file into place (``os.replace`` in
    :func:`cellcrowd.files.atomic_path`): that is where the error is raised.
    """
    real = os.replace
    seen = [0]

    def full(src: Any, dst: Any) -> None:
        if folder in Path(dst).parts:
            seen[0] += 1
            if seen[0] >= writes:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", full)


@pytest.mark.parametrize(("folder", "writes"), [("movies", 3), ("npz", 2), ("CSV", 1)])
def test_disk_full_is_one_line_and_the_rerun_resumes_to_the_same_bytes(
    example: Example, served: tuple[Any, Config], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, folder: str,
    writes: int,
) -> None:
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    reference = _copy(example, served[1], tmp_path / "reference")
    assert main(["run", str(reference), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()

    work = _copy(example, served[1], tmp_path / "work")
    with monkeypatch.context() as patch:
        _disk_full_after(patch, folder, writes)
        code = main(["run", str(work), "--workers", "1", "--quiet"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cellcrowd: error:")]
    assert len(lines) == 1, err
    assert f"/{folder}/" in lines[0]
    assert "No space left on device" in lines[0]
    assert "MB left on that disk" in lines[0]
    assert "free some space and run the same command again" in lines[0]

    assert main(["run", str(work), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert file_hashes(work.parent, **SKIP) == file_hashes(reference.parent, **SKIP)


def test_a_permission_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str | Path, text: str) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("cellcrowd.config.atomic_write_text", refuse)
    code = main(["init", str(tmp_path / "c.toml")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == f"cellcrowd: error: Permission denied: {tmp_path / 'c.toml'}"
