"""Check: the lab's original notebook runs on cellcrowd with only its imports and folders changed.

Not part of the test suite: it needs the original notebook's text, which is not in this
repository (the suite runs ``examples/harvest.ipynb`` instead). Run it by hand::

    python tools/check_seed_notebook.py [path/to/post-annotation-notebook.md]

(default ``../shared/seed/post-annotation-notebook.md`` beside the repository). The code
cells (the ``In [None]:`` cells) have their ``from deepcell_toolbox… import …`` lines
replaced by ``from cellcrowd.notebook import …``, and the assignments of ``base_dir``,
``raw_dir``, ``identifier``, ``job_id_to_download``, ``direc_name`` and
``file_name_save`` pointed at a prepared synthetic job served by the emulator. Nothing
else in the cells changes. The notebook's own ``direc_name = …/movies/part1`` must build
``example_movie_S0P1_same.npz`` from montage 1 (frames 10 to 19), as the original does.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cellcrowd.export.npz import load_npz
from cellcrowd.files import list_images, read_image
from cellcrowd.movies import read_movie_geometry
from cellcrowd.sim.demo import ExampleSettings, emulated_job, make_example
from cellcrowd.sim.testing import same_up_to_relabel

NOTEBOOK = Path(__file__).resolve().parents[2] / "shared" / "seed" / "post-annotation-notebook.md"
SETTINGS = ExampleSettings(identifier="3D_post_annotation_example", job_id=1363594, frames=20,
                           shape=(96, 96), cells=6, divisions=1, montage_len=10, row_length=5)
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


def check_cells_are_found_and_adapted(notebook: Path) -> None:
    text = notebook.read_text(encoding="utf-8")
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


def check_seed_notebook_runs_against_the_emulator(notebook: Path, tmp_path: Path) -> None:
    example = make_example(tmp_path / "prepared", SETTINGS)
    base = tmp_path / "example"
    # The notebook's starting point: json_logs and raw frames (plus the emulator's truth).
    base.mkdir()
    for sub in ("json_logs", "raw"):
        shutil.copytree(example.config.base / sub, base / sub)
    # report_polls=0: the report is ready at once (the notebook's client would wait 10 s
    # on a 202 "being generated"; the client's tests cover the polling).
    with emulated_job(example, api_key="notebook-key", report_polls=0) as (server, _served):
        os.environ["CELLCROWD_API_URL"] = server.url
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
        for i, cell in enumerate(notebook_cells(notebook.read_text(encoding="utf-8"))):
            exec(compile(adapt(cell, values), f"notebook cell {i + 1}", "exec"), namespace)
        assert server.counts["annotation"] >= 1

    # The folders the notebook promises.
    assert (base / "CSV" / f"job_{SETTINGS.job_id}_full_report.csv").is_file()
    annotations = base / f"{SETTINGS.identifier}_annotations"
    assert len(list(annotations.glob("*_annotation.png"))) >= 6
    # part1 is montage 1: frames 10..19, the raw tiles exactly and the truth's labels.
    data = load_npz(npz_path)
    grid = read_movie_geometry(example.wf).grid
    raw = [read_image(p) for p in list_images(base / "raw")]
    length = SETTINGS.montage_len
    assert data.X.shape == (len(data.positions), length, *grid.tile_shape, 1)
    assert len(data.positions) >= 3
    for i, name in enumerate(data.positions):
        pos = next(p for p in grid.positions if name == f"x_{p.x:02d}_y_{p.y:02d}")
        for f in range(length):
            np.testing.assert_array_equal(data.X[i, f, ..., 0], grid.tile(raw[length + f], pos))
            truth = grid.tile(example.movie.labels[length + f], pos)
            assert same_up_to_relabel(data.y[i, f, ..., 0], truth), (name, f)


def main(argv: list[str]) -> int:
    notebook = Path(argv[0]) if argv else NOTEBOOK
    if not notebook.is_file():
        print(f"{notebook}: not found; give the original notebook's path", file=sys.stderr)
        return 2
    os.environ["CELLCROWD_API_KEY"] = "notebook-key"
    check_cells_are_found_and_adapted(notebook)
    with tempfile.TemporaryDirectory() as tmp:
        check_seed_notebook_runs_against_the_emulator(notebook, Path(tmp))
    print(f"{notebook}: its cells ran on cellcrowd; example_movie_S0P1_same.npz holds "
          "montage 1 (frames 10 to 19)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
