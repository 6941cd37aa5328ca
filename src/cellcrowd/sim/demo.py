"""The embedded example: a synthetic movie, an emulated crowd job, and the whole harvest.

:func:`run_demo` (``cellcrowd demo``) needs no data and no account. In a
temporary folder (or one given), it

1. makes a synthetic movie of dividing cells (:func:`cellcrowd.sim.synthetic.synthetic_movie`)
   and writes its raw frames;
2. prepares it for upload (:func:`cellcrowd.pipeline.prepare_folder`: tiles,
   montages, logs, upload CSV, and the ground-truth label montages the simulated
   crowd paints from);
3. starts the emulated annotation service on 127.0.0.1 serving that job, with a
   random API key set in the environment for the run only;
4. runs every stage of the harvest (:func:`cellcrowd.pipeline.run`) against it;
5. stops the service and returns the run's summary.

:func:`make_example` and :func:`emulated_job` are the two halves, also used by the
tests: a prepared folder, and a running job serving it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import API_KEY_VARIABLES, Config, PrepareConfig, ServiceConfig
from ..errors import InputError
from ..executor import Executor, LocalExecutor
from ..files import atomic_write_text
from ..layout import WorkingFolder
from ..pipeline import Progress, RunSummary, prepare_folder, run

__all__ = [
    "DemoResult",
    "Example",
    "ExampleSettings",
    "emulated_job",
    "make_example",
    "run_demo",
    "save_config",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleSettings:
    """The synthetic movie and how it is cut (small enough for a one-minute demo)."""

    identifier: str = "demo"
    job_id: int = 1
    frames: int = 40
    shape: tuple[int, int] = (160, 160)
    cells: int = 12
    divisions: int = 2
    num_x: int = 2
    num_y: int = 2
    overlap_perc: float = 10.0
    montage_len: int = 10
    row_length: int = 5
    seed: int = 0


@dataclass(frozen=True)
class Example:
    """A prepared working folder of a synthetic movie.

    Attributes
    ----------
    config : Config
        Its configuration (``api_url`` is a placeholder until a job serves it).
    config_path : Path
        Where the configuration is written (``{base}/cellcrowd.toml``).
    movie : SyntheticMovie
        The movie and its ground truth.
    """

    config: Config
    config_path: Path
    movie: Any

    @property
    def wf(self) -> WorkingFolder:
        return self.config.working_folder()


def save_config(config: Config, path: Path) -> Path:
    """Write ``config`` as a TOML file that :func:`cellcrowd.config.load_config` reads back.

    Folders inside the file's folder are written relative to it, so the folder can be
    moved or copied with its configuration.
    """
    root = path.parent.resolve()

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):  # an inline table, e.g. outputs.export_storage_options
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, Path):
            with contextlib.suppress(ValueError):
                v = v.resolve().relative_to(root).as_posix() or "."
            v = v.as_posix() if isinstance(v, Path) else v
        text = str(v)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    data = config.model_dump(exclude_none=True)
    lines = ["# written by cellcrowd; `cellcrowd init` writes an example with every key"]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{k} = {value(v)}" for k, v in data.items() if k not in tables]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in table.items())
    return atomic_write_text(path, "\n".join(lines) + "\n")


def make_example(
    folder: str | Path,
    settings: ExampleSettings = ExampleSettings(),
    *,
    executor: Executor | None = None,
    **config: Any,
) -> Example:
    """Write a synthetic movie's raw frames into ``folder`` and prepare it for upload.

    ``config`` values (e.g. ``outputs=OutputsConfig(...)``) go into the configuration.
    """
    from .synthetic import synthetic_movie, write_movie_frames

    base = Path(folder)
    s = settings
    movie = synthetic_movie(frames=s.frames, shape=s.shape, cells=s.cells,
                            divisions=s.divisions, seed=s.seed)
    cfg = Config(
        base=base, identifier=s.identifier, job_id=s.job_id,
        prepare=PrepareConfig(num_x=s.num_x, num_y=s.num_y, overlap_perc=s.overlap_perc,
                              montage_len=s.montage_len, row_length=s.row_length),
        **config,
    )
    write_movie_frames(movie, cfg.raw_folder)
    result = prepare_folder(cfg, truth=movie.labels, executor=executor)
    logger.info("demo: prepared %d montages of a %d-frame %dx%d movie in %s",
                len(result.montages), s.frames, *s.shape, base)
    path = base / "cellcrowd.toml"
    save_config(cfg, path)
    return Example(cfg.model_copy(update={"source": path}), path, movie)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def emulated_job(
    example: Example,
    *,
    api_key: str | None = None,
    seed: int = 0,
    save: bool = False,
    **emulator: Any,
) -> Iterator[tuple[Any, Config]]:
    """Serve ``example``'s job on 127.0.0.1 while the block runs.

    Yields the emulator and the example's configuration pointing at it (also written
    to ``example.config_path`` when ``save``). The API key (random unless
    given) is set in ``CELLCROWD_API_KEY`` for the block only. ``emulator`` keywords
    (e.g. ``faults``) go to :func:`cellcrowd.sim.emulator.serve_job_from_folder`.
    """
    from .emulator import serve_job_from_folder

    key = api_key or secrets.token_hex(16)
    cfg = example.config
    server = serve_job_from_folder(cfg.working_folder(), job_id=cfg.job_id, api_key=key,
                                   seed=seed, **emulator)
    with server, _environment(API_KEY_VARIABLES[0], key):
        # The emulator builds reports at once: poll it quickly while it says "generating".
        service = {**cfg.service.model_dump(), "api_url": server.url,
                   "poll_interval": min(cfg.service.poll_interval, 0.1)}
        served = cfg.model_copy(update={"service": ServiceConfig(**service)})
        if save:
            save_config(served, example.config_path)
        logger.info("demo: job %d served at %s", cfg.job_id, server.url)
        yield server, served


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did."""

    folder: Path
    kept: bool
    config_path: Path
    summary: RunSummary
    #: Requests the emulated service answered, by kind (``annotation``, ``report``, ...).
    requests: dict[str, int]


def run_demo(
    folder: str | Path | None = None,
    *,
    settings: ExampleSettings = ExampleSettings(),
    workers: int = 1,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the whole example (see the module docstring) and return its summary.

    Parameters
    ----------
    folder : Path, optional
        Where to work (kept afterwards); default a temporary folder, deleted at the end.
    settings : ExampleSettings
        The synthetic movie and its geometry.
    workers : int
        Local worker processes for the per-item tasks.
    progress : Progress, optional
        Receives the stages' progress.
    """
    with contextlib.ExitStack() as stack:
        if folder is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cellcrowd-")))
        else:
            base = Path(folder)
            if base.exists() and any(base.iterdir()):
                raise InputError(
                    "the demo folder must be new or empty: choose another --keep folder",
                    path=base)
        executor = stack.enter_context(contextlib.closing(LocalExecutor(workers)))
        example = make_example(base, settings, executor=executor)
        server, config = stack.enter_context(
            emulated_job(example, seed=settings.seed, save=True))
        summary = run(config, executor=executor, progress=progress)
        result = DemoResult(base, folder is not None, example.config_path, summary,
                            dict(server.counts))
    return result
