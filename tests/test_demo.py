"""End-to-end: ``cellcrowd demo`` from a fresh folder to every output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellcrowd.cli import main
from cellcrowd.config import load_config
from cellcrowd.export.ctc import validate_ctc
from cellcrowd.export.npz import load_npz
from cellcrowd.export.trk import read_trk, validate_lineage
from cellcrowd.layout import MontageKey, montage_of_part, part_numbers
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import read_label_montage
from cellcrowd.pipeline import STAGES, status, working_folder
from cellcrowd.sim.demo import ExampleSettings, run_demo
from cellcrowd.sim.testing import same_up_to_relabel


@pytest.mark.slow
def test_demo_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("CELLCROWD_API_KEY", raising=False)
    folder = tmp_path / "demo"
    assert main(["demo", "--keep", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert f"outputs are in {folder}" in out
    assert "totals: units" in out
    assert "CELLCROWD_API_KEY" not in os.environ  # the demo's key was for its run only

    cfg = load_config(folder / "cellcrowd.toml")
    wf = working_folder(cfg)
    assert status(cfg).done == list(STAGES)
    for stage in STAGES:
        assert f" {stage} " in out
    assert str(wf.trk.relative_to(wf.base)) in out

    # Training data: every annotated position's labels are the truth, up to relabelling.
    log = read_montage_log(wf.montage_log)
    checked = 0
    for part in part_numbers(log.montages_in_pos):
        data = load_npz(wf.npz_part(part))
        assert data.X.dtype == np.float32
        assert data.y.dtype == np.int32
        assert data.X.shape[:4] == data.y.shape[:4]
        assert data.X.shape[1] == ExampleSettings().montage_len
        for i, name in enumerate(data.positions):
            x, y = (int(v) for v in name.split("_")[1::2])
            montage = wf.montage_name(MontageKey(wf.identifier, x, y, montage_of_part(part)))
            truth = read_label_montage(wf.truth_path(montage), log, data.y.shape[2:4])
            for t in range(data.y.shape[1]):
                assert same_up_to_relabel(data.y[i, t, ..., 0], truth[t]), (part, name, t)
            checked += 1
    assert checked >= 12

    trk = read_trk(wf.trk)
    validate_lineage(trk.tracked[..., 0], trk.lineage)
    assert trk.tracked.shape[0] == ExampleSettings().frames
    validate_ctc(wf.ctc)

    # --keep refuses a folder that is not empty
    assert main(["-q", "demo", "--keep", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "must be new or empty" in err


def test_demo_in_a_temporary_folder_cleans_up() -> None:
    small = ExampleSettings(frames=6, shape=(48, 48), cells=3, divisions=0, montage_len=3,
                            row_length=3, num_x=1, num_y=1)
    result = run_demo(settings=small)
    assert not result.kept
    assert not result.folder.exists()
    assert result.summary.ran == list(STAGES)
    assert result.requests["annotation"] >= 2


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_files_follow_the_umask(tmp_path: Path) -> None:
    """Under umask 022 every file a demo run writes is 0644 (temporaries may be private,
    results not: colleagues and the web server hosting montages must read them)."""
    folder = tmp_path / "demo"
    code = (
        "from cellcrowd.sim.demo import ExampleSettings, run_demo\n"
        "small = ExampleSettings(frames=6, shape=(48, 48), cells=3, divisions=0, "
        "montage_len=3, row_length=3)\n"
        f"run_demo({str(folder)!r}, settings=small, workers=2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], umask=0o022, capture_output=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 50
    modes = {p.relative_to(folder).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
             for p in files}
    assert {m for m in modes.values()} == {"0o644"}, {k: v for k, v in modes.items()
                                                      if v != "0o644"}
    for kind in ("montages", "movies", "npz", "qc", "CSV", ".cellcrowd"):
        assert any(name.startswith(kind) for name in modes), kind
