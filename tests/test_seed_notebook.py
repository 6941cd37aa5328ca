"""The lab's original notebook runs on cellcrowd with only its imports and folders changed.

The code cells are taken from ``shared/seed/post-annotation-notebook.md`` by this test
(the ``In [None]:`` cells), their ``from deepcell_toolbox… import …`` lines replaced by
``from cellcrowd.notebook import …``, and the assignments of ``base_dir``, ``raw_dir``,
``identifier``, ``job_id_to_download``, ``direc_name`` and ``file_name_save`` pointed
at a prepared synthetic job served by the emulator. Nothing else in the cells changes.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from cellcrowd.demo import ExampleSettings, emulated_job, make_example
from cellcrowd.export.npz import load_npz
from cellcrowd.layout import MontageKey
from cellcrowd.logs import read_montage_log
from cellcrowd.movies import read_label_montage
from cellcrowd.testing import same_up_to_relabel

NOTEBOOK = Path(__file__).resolve().parents[2] / "shared" / "seed" / "post-annotation-notebook.md"
SETTINGS = ExampleSettings(identifier="3D_post_annotation_example", job_id=1363594, frames=20,
                           shape=(96, 96), cells=6, divisions=1, montage_len=5, row_length=5)
REWRITTEN = ("base_dir", "raw_dir", "identifier", "job_id_to_download", "direc_name",
             "file_name_save")
_CELL = "In [None]:"
_HEADING = re.compile(r"^#{2,6} ")
_IMPORT = re.compile(r"^from deepcell_toolbox(?:\.\w+)* import (?P<names>.+)$")


def notebook_cells(text: str) -> list[str]:
    """The code cells of the notebook (text after each ``In [None]:`` up to the next
    cell or markdown heading)."""
    cells: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.strip() == _CELL:
            current = []
            cells.append(current)
        elif _HEADING.match(line):
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(cell).strip("\n") for cell in cells]


def adapt(cell: str, values: Mapping[str, object]) -> str:
    """Replace deepcell_toolbox imports and the assignments of ``values``' names."""
    out = []
    for line in cell.splitlines():
        imported = _IMPORT.match(line)
        name = line.split("=", 1)[0].strip() if "=" in line else ""
        if imported:
            out.append(f"from cellcrowd.notebook import {imported['names']}")
        elif name in values and not line.startswith((" ", "#")):
            out.append(f"{name} = {values[name]!r}")
        else:
            out.append(line)
    return "\n".join(out)


def test_cells_are_found_and_adapted() -> None:
    text = NOTEBOOK.read_text(encoding="utf-8")
    cells = notebook_cells(text)
    assert len(cells) == text.count(_CELL) >= 10
    assert all(cells)
    for cell in cells:
        compile(cell, "cell", "exec")  # each is Python as it stands
    values = {name: f"<{name}>" for name in REWRITTEN}
    adapted = "\n".join(adapt(c, values) for c in cells)
    assert "deepcell_toolbox" not in adapted
    for name in REWRITTEN:
        assert f"{name} = '<{name}>'" in adapted
    assert adapted.count("from cellcrowd.notebook import") == 4
    assert '#base_dir = "/base/directory/path/here"' in adapted  # comments untouched


@pytest.mark.slow
def test_seed_notebook_runs_against_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = make_example(tmp_path / "prepared", SETTINGS)
    base = tmp_path / "example"
    # The notebook's starting point: json_logs and raw frames (plus the emulator's truth).
    base.mkdir()
    for sub in ("json_logs", "raw"):
        shutil.copytree(example.config.base / sub, base / sub)
    # report_polls=0: the report is ready at once (the notebook's client would wait 10 s
    # on a 202 "being generated"; the client's tests cover the polling).
    with emulated_job(example, api_key="notebook-key", report_polls=0) as (server, _served):
        monkeypatch.setenv("CELLCROWD_API_URL", server.url)
        monkeypatch.setenv("CELLCROWD_API_KEY", "notebook-key")
        npz_path = base / "npz" / "example_movie_S0P1_same.npz"
        values = {
            "base_dir": str(base),
            "raw_dir": str(base / "raw"),
            "identifier": SETTINGS.identifier,
            "job_id_to_download": SETTINGS.job_id,
            "direc_name": str(base / "movies" / "part1"),
            "file_name_save": str(npz_path),
        }
        namespace: dict[str, object] = {"__name__": "notebook"}
        for i, cell in enumerate(notebook_cells(NOTEBOOK.read_text(encoding="utf-8"))):
            exec(compile(adapt(cell, values), f"notebook cell {i + 1}", "exec"), namespace)
        assert server.counts["annotation"] >= 1

    # The folders the notebook promises.
    report = base / "CSV" / f"job_{SETTINGS.job_id}_full_report.csv"
    assert report.is_file()
    annotations = base / f"{SETTINGS.identifier}_annotations"
    assert len(list(annotations.glob("*_annotation.png"))) >= 12
    part1 = base / "movies" / "part1"
    assert sorted(p.name for p in part1.iterdir()) == [
        f"x_{x:02d}_y_{y:02d}" for x in range(2) for y in range(2)]
    assert len(list((part1 / "x_00_y_00" / "raw").iterdir())) == SETTINGS.montage_len

    # The training data: X/y shapes, and y is the truth up to relabelling.
    data = load_npz(npz_path)
    log = read_montage_log(base / "json_logs" / f"{SETTINGS.identifier}_montage_maker_log.json")
    wf = example.wf
    tile = data.y.shape[2:4]
    assert data.X.shape == (len(data.positions), SETTINGS.montage_len, *tile, 1)
    assert data.y.shape == data.X.shape
    assert len(data.positions) + len(data.missing_positions) == 4
    assert len(data.positions) >= 3
    for i, name in enumerate(data.positions):
        x, y = (int(v) for v in name.split("_")[1::2])
        montage = wf.montage_name(MontageKey(SETTINGS.identifier, x, y, 0))
        truth = read_label_montage(wf.truth_path(montage), log, tile)
        for t in range(SETTINGS.montage_len):
            assert same_up_to_relabel(data.y[i, t, ..., 0], truth[t]), (name, t)
        raw = data.X[i, ..., 0]
        assert raw.max() > raw.min()  # the raw tiles, not blanks
