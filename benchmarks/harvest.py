"""Inputs and contenders of ``run.py``'s harvest sections (not a script: run ``run.py``).

* :func:`build_job` — a prepared working folder of a synthetic movie (cells as dense
  as nuclei in a 20x field: about 440 per megapixel) whose annotations were
  served by the emulator and fetched, so the clean stage can start.
* :func:`ours_library` — the notebook functions / library (clean, movies, npz).
* :func:`ours_run` — the same through :func:`cellcrowd.pipeline.run` (``cellcrowd run``).
* :func:`baseline` — what the original did: per file, sequential, binary-mask clean-up
  with scikit-image per image, PNG/TIFF at their default levels,
  ``np.savez_compressed`` at its default level.
* :func:`io_floor` — decoding every input and encoding every output in the same
  formats at their fastest settings (stock zlib level 1), single-threaded, nothing else.
"""

from __future__ import annotations

import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from bench_clean import baseline_clean_montage
from cellcrowd.config import CleanConfig, Config, ExecutorConfig, OutputsConfig
from cellcrowd.executor import Executor, LocalExecutor
from cellcrowd.export.npz import write_parts_npz
from cellcrowd.geometry import MontageLayout, Position, TileGrid
from cellcrowd.layout import WorkingFolder, parse_montage_name
from cellcrowd.notebook import all_montages_chopper, clean_montages, raw_movie_maker
from cellcrowd.pipeline import run
from cellcrowd.sim.crowd import CrowdConfig
from cellcrowd.sim.demo import ExampleSettings, emulated_job, make_example

#: Cells per megapixel (nuclei in a 20x field of view: hundreds per 1024^2 frame).
DENSITY = 440 / 1024**2
TILES, OVERLAP, MONTAGE_LEN, ROW_LENGTH = 4, 10.0, 10, 5


@dataclass(frozen=True)
class Job:
    """A working folder ready for the clean stage."""

    config: Config
    shape: tuple[int, int]
    frames: int

    @property
    def wf(self) -> WorkingFolder:
        return self.config.working_folder()

    @property
    def megapixels(self) -> float:
        return self.frames * self.shape[0] * self.shape[1] / 1e6

    @property
    def grid(self) -> TileGrid:
        return TileGrid.for_frame(self.shape, num_x=TILES, num_y=TILES, overlap_perc=OVERLAP)

    @property
    def layout(self) -> MontageLayout:
        return MontageLayout(self.grid.tile_shape, length=MONTAGE_LEN, row_length=ROW_LENGTH)

    def annotations(self) -> list[Path]:
        return sorted(self.wf.annotations.glob("*_annotation.png"))


def build_job(base: Path, shape: tuple[int, int], frames: int, *, seed: int = 0,
              outputs: OutputsConfig | None = None) -> Job:
    """Prepare a synthetic movie and fetch its annotations from the emulator (untimed)."""
    cells = max(4, round(DENSITY * shape[0] * shape[1]))
    settings = ExampleSettings(frames=frames, shape=shape, cells=cells,
                               divisions=max(1, cells // 20), num_x=TILES, num_y=TILES,
                               overlap_perc=OVERLAP, montage_len=MONTAGE_LEN,
                               row_length=ROW_LENGTH, seed=seed)
    outputs = outputs or OutputsConfig(npz_parts=True, npz_full_movie=False, stitched=False,
                                       trk=False, ctc=False, qc=False)
    example = make_example(base, settings, outputs=outputs,
                           clean=CleanConfig(consensus=False))
    crowd = CrowdConfig(workers_per_unit=(1, 1), broken_share=0.0, reupload=False,
                        encoding="rgb")  # one colour per cell: hundreds of cells per montage
    with emulated_job(example, seed=seed, save=True, crowd=crowd) as (_, config):
        run(config, until_stage="fetch")
    return Job(config, shape, frames)


def reset(job: Job) -> None:
    """Remove what the harvest writes (labels, movies, npz, the contenders' folders)."""
    wf = job.wf
    for folder in (wf.labels, wf.movies, wf.npz, wf.base / "baseline", wf.base / "floor"):
        shutil.rmtree(folder, ignore_errors=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- ours -------------------------------------------------------------------------------------


def ours_library(job: Job, executor: Executor | None = None) -> None:
    """clean_montages + all_montages_chopper + raw_movie_maker + write_parts_npz.

    ``executor`` None: serially (the notebook functions' own default is a local pool).
    """
    wf = job.wf
    executor = executor if executor is not None else LocalExecutor(1)
    clean_montages(wf.annotations, executor=executor)
    all_montages_chopper(wf.base, wf.annotations.name, wf.identifier, executor=executor)
    raw_movie_maker(wf.base, wf.raw, wf.identifier, executor=executor)
    write_parts_npz(wf, executor=executor)


def ours_run(job: Job, executor: Executor | None = None) -> None:
    """``cellcrowd run --from clean --until npz`` (forced), on ``executor``."""
    config = job.config.model_copy(update={"executor": ExecutorConfig(workers=1)})
    run(config, from_stage="clean", until_stage="npz", force=("clean", "movies", "npz"),
        executor=executor)


# -- the BASELINE: what the original notebook did ---------------------------------------------


def _png(path: Path, array: NDArray[Any], level: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {} if level is None else {"compress_level": level}
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", **kw)


def _tif(path: Path, array: NDArray[Any], level: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {} if level is None else {"compressionargs": {"level": level}}
    tifffile.imwrite(path, np.ascontiguousarray(array), compression="zlib", **kw)


def _read(path: Path) -> NDArray[Any]:
    if path.suffix == ".tif":
        return np.asarray(tifffile.imread(path))
    with Image.open(path) as img:
        return np.asarray(img)


def _baseline_decode(image: NDArray[Any]) -> NDArray[np.int64]:
    """Colours to ids with one sort over every pixel (as the original's np.unique)."""
    rgb = image[..., :3].astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if image.shape[2] == 4:
        packed[image[..., 3] == 0] = 0
    _, inverse = np.unique(packed, return_inverse=True)
    out: NDArray[np.int64] = inverse.reshape(packed.shape)
    return out if packed.min() == 0 else out + 1


def baseline(job: Job) -> None:
    """BASELINE, not cellcrowd: per file, sequential, default levels, savez_compressed."""
    out = job.wf.base / "baseline"
    grid, layout = job.grid, job.layout
    for path in job.annotations():
        labels = baseline_clean_montage(_baseline_decode(_read(path)))
        key = parse_montage_name(path.name)
        _png(out / "labels" / f"{key.x}_{key.y}_{key.montage}.png", labels.astype(np.uint16),
             None)
    for path in sorted((out / "labels").glob("*.png")):
        x, y, montage = map(int, path.stem.split("_"))
        for k, frame in enumerate(layout.read(_read(path))):
            _png(out / f"part{montage}" / f"{x}_{y}" / "annotated" / f"{k:03d}.png", frame, None)
    for t, path in enumerate(sorted(job.config.raw_folder.glob("*.tif"))):
        frame = _read(path)
        for pos in grid.positions:
            part, k = divmod(t, MONTAGE_LEN)
            _tif(out / f"part{part}" / f"{pos.x}_{pos.y}" / "raw" / f"{k:03d}.tif",
                 grid.tile(frame, pos), None)
    for part_dir in sorted(out.glob("part*")):
        xs, ys = [], []
        for pos_dir in sorted(part_dir.iterdir()):
            if not (pos_dir / "annotated").is_dir():
                continue
            ys.append(np.stack([_read(p) for p in sorted((pos_dir / "annotated").iterdir())]))
            xs.append(np.stack([_read(p) for p in sorted((pos_dir / "raw").iterdir())]))
        np.savez_compressed(out / f"{part_dir.name}.npz",
                            X=np.stack(xs).astype(np.float32)[..., None],
                            y=np.stack(ys).astype(np.int32)[..., None])


# -- the I/O floor ----------------------------------------------------------------------------


def _npz_level1(path: Path, arrays: dict[str, NDArray[Any]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array)


def _floor_part(job: Job, part: int, raw_paths: list[Path], out: Path) -> None:
    grid, layout = job.grid, job.layout
    ys: dict[Position, NDArray[Any]] = {}
    for path in job.annotations():
        key = parse_montage_name(path.name)
        if key.montage != part:
            continue
        labels = _read(path)[..., 0].astype(np.uint16)  # decode the input
        _png(out / "labels" / path.name, labels, 1)  # encode the cleaned montage
        frames = layout.read(labels)
        for k, frame in enumerate(frames):  # encode the frames
            _png(out / f"part{part}" / f"{key.x}_{key.y}_{k}.png", frame, 1)
        ys[Position(key.x, key.y)] = frames
    xs: dict[Position, list[NDArray[Any]]] = {pos: [] for pos in ys}
    for k, path in enumerate(raw_paths):
        frame = _read(path)
        for pos in grid.positions:
            tile = grid.tile(frame, pos)
            _tif(out / f"part{part}" / f"{pos.x}_{pos.y}_{k}.tif", tile, 1)
            if pos in xs:
                xs[pos].append(tile)
    if ys:
        order = sorted(ys)
        _npz_level1(out / f"part{part}.npz",
                    {"X": np.stack([np.stack(xs[p]) for p in order]).astype(np.float32),
                     "y": np.stack([ys[p] for p in order]).astype(np.int32)})


def io_floor(job: Job) -> None:
    """Decode every input, encode every output at level 1, single-threaded, nothing else."""
    out = job.wf.base / "floor"
    raw = sorted(job.config.raw_folder.glob("*.tif"))
    for part in range(-(-job.frames // MONTAGE_LEN)):
        _floor_part(job, part, raw[part * MONTAGE_LEN:(part + 1) * MONTAGE_LEN], out)


def prepare_floor(raw_folder: Path, out: Path, shape: tuple[int, int]) -> None:
    """The prepare half's floor: decode the raw frames, encode the montages (level 1)."""
    grid = TileGrid.for_frame(shape, num_x=TILES, num_y=TILES, overlap_perc=OVERLAP)
    layout = MontageLayout(grid.tile_shape, length=MONTAGE_LEN, row_length=ROW_LENGTH)
    raw = sorted(raw_folder.glob("*.tif"))
    for part in range(-(-len(raw) // MONTAGE_LEN)):
        frames = np.stack([_read(p) for p in raw[part * MONTAGE_LEN:(part + 1) * MONTAGE_LEN]])
        for pos in grid.positions:
            tiles = np.stack([grid.tile(f, pos) for f in frames])
            if len(tiles) < MONTAGE_LEN:
                tiles = np.concatenate([tiles, np.zeros((MONTAGE_LEN - len(tiles),
                                                         *tiles.shape[1:]), tiles.dtype)])
            _png(out / f"{pos.x}_{pos.y}_{part}.png", layout.make(tiles), 1)

