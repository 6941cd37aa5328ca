"""``examples/harvest.ipynb`` runs, cell by cell in a real kernel, against the emulator.

It is the lab's notebook written for cellcrowd: the original's function names with the
original's arguments. Its step 5 cell builds ``example_movie_S0P1_same.npz`` from
``movies/part1``, which must hold montage 1: frames 10 to 19 of the raw movie (montages
of 10 frames), as with the original. nbclient starts an ipykernel (no Jupyter server).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from cellcrowd import notebook
from cellcrowd.export.npz import load_npz
from cellcrowd.files import list_images, read_image
from cellcrowd.movies import read_movie_geometry
from cellcrowd.sim.demo import ExampleSettings, emulated_job, make_example
from cellcrowd.sim.testing import same_up_to_relabel

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "harvest.ipynb"
SETTINGS = ExampleSettings(identifier="3D_post_annotation_example", job_id=1363594, frames=20,
                           shape=(96, 96), cells=6, divisions=1, montage_len=10, row_length=5)
KEY = "notebook-key-77"


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def test_the_notebook_calls_every_function_of_the_original() -> None:
    nb = _read()
    nbformat.validate(nb)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for name in notebook.__all__:
        assert f"{name}(" in code, name
    assert "deepcell_toolbox" not in code
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "base_dir = " in params.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _parameters(nb: nbformat.NotebookNode, values: dict[str, object]) -> None:
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = "\n".join(f"{name} = {value!r}" for name, value in values.items())


@pytest.mark.slow
def test_the_notebook_runs_against_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = make_example(tmp_path / "prepared", SETTINGS)
    base = tmp_path / "lab"
    base.mkdir()
    for sub in ("json_logs", "raw"):  # what the lab's working folder starts with
        shutil.copytree(example.config.base / sub, base / sub)
    nb = _read()
    _parameters(nb, {"base_dir": str(base), "raw_dir": str(base / "raw"),
                     "identifier": SETTINGS.identifier,
                     "job_id_to_download": SETTINGS.job_id, "job_type": "full"})
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    # Set before emulated_job, which sets the key for its own time and restores what it
    # found: set inside, monkeypatch would "restore" the key after the test.
    monkeypatch.setenv("CELLCROWD_API_KEY", KEY)
    with emulated_job(example, api_key=KEY, report_polls=0) as (server, _served):
        monkeypatch.setenv("CELLCROWD_API_URL", server.url)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        assert server.counts["annotation"] >= 1
    printed = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for out in c.get("outputs", []))
    assert "rows still have a broken link" in printed

    data = load_npz(base / "npz" / "example_movie_S0P1_same.npz")
    grid = read_movie_geometry(example.wf).grid
    raw = [read_image(p) for p in list_images(base / "raw")]
    length = SETTINGS.montage_len
    assert data.X.shape[1] == length
    assert len(data.positions) + len(data.missing_positions) == len(grid)
    assert len(data.positions) >= 3
    for i, name in enumerate(data.positions):
        pos = next(p for p in grid.positions if name == f"x_{p.x:02d}_y_{p.y:02d}")
        for f in range(length):  # montage 1 = frames 10..19, as with the original
            np.testing.assert_array_equal(data.X[i, f, ..., 0], grid.tile(raw[length + f], pos))
            truth = grid.tile(example.movie.labels[length + f], pos)
            assert same_up_to_relabel(data.y[i, f, ..., 0], truth), (name, f)
