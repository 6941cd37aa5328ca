"""The harvest as a sequence of resumable stages over one working folder.

Stages, in order (each calls the library functions of its module)::

    report   download the job report (CSV) and write the broken-link CSVs   appen/
    fetch    download every judgment's annotation image                      download.py
    clean    annotation colours -> clean, relabelled uint16 label montages;  labels.py
             several judgments of a montage -> one consensus montage         consensus.py
    movies   label montages and raw frames -> movies/partN/x_XX_y_YY/...     movies.py
    npz      DeepCell training data, one .npz per part (and the full movie)  export/npz.py
    stitch   tiles -> full-size frames, parts -> one tracked movie           stitch.py
             (and the stitched movie's .npz when outputs.npz_full_movie)     export/npz.py
    trk      DeepCell .trk of the stitched movie                             export/trk.py
    ctc      Cell Tracking Challenge folders of the stitched movie           export/ctc.py
    omezarr  OME-Zarr of the stitched movie (image, tracked labels)          export/omezarr.py
    geff     GEFF graph of the stitched movie's lineage                      export/geff.py
    qc       the quality-control report, qc/index.html and overlays          qc/

**Several annotators.** With ``[clean] consensus = true`` (the default) the clean
stage uses every usable judgment of a montage (the files the fetch stage
downloaded, one per judgment): one judgment is cleaned straight into the
montage's labels; several are each cleaned into
``{id}_labels/judgments/`` and merged by :func:`cellcrowd.jobconsensus.merge_job`
(``[clean] strategy``: ``"reliability"``, job-wide worker reliability first, or
``"vote"``, a trust-weighted vote per montage; tainted workers weigh 0), with a
report ``{id}_labels/{montage}_consensus.json`` next to the labels and the
workers' ``consensus_workers.json``. Cells too few annotators found are dropped
and named, like broken-link and undownloaded judgments, in the stage's skipped
units. ``consensus = false`` (or ``strategy = "latest"``) cleans only the
judgment the fetch stage chose (``wf.annotation_path``). Either way what
cleaning did per montage goes to ``clean_stats.json``.

**Whole movies as training data.** The npz stage's full movie
(``outputs.npz_full_movie``) puts each position's parts one after another with
cell ids linked across part boundaries (:func:`cellcrowd.export.npz.write_full_movie_npz`).
The stitched movie's ``.npz`` (:func:`cellcrowd.export.npz.write_stitched_movie_npz`)
is written by the stitch stage itself, at its end, because the npz stage runs
before the movie is stitched.

:func:`prepare_folder` (cut a raw movie into montages) is a separate entry: it
makes the working folder the harvest starts from.

**Resuming.** A manifest (``wf.manifest``, JSON, written atomically) records per
stage the fingerprint of its inputs (the recorded outputs of the stages it reads,
the sizes and SHA-256 of the other files it reads, the configuration values that
matter to it, the cellcrowd version) and its outputs (paths, sizes, SHA-256). A
stage is skipped when its input fingerprint matches and every recorded output
still exists with the same size and hash. An entry is committed only after all
of the stage's outputs are written, and every output is written atomically, so
a run killed at any moment (SIGKILL included) is redone from the interrupted
stage and ends with the same bytes as an uninterrupted run.

**Skipped units.** Broken links, failed downloads and unreadable annotations are
recorded per stage (unit, reason) and carried by the files themselves: a montage
without labels is left out of its part. :class:`RunSummary` and :func:`status`
name every skipped unit and why.

**Test hook.** ``CELLCROWD_TEST_PAUSE_AFTER=stage:N`` makes a run sleep (for
``CELLCROWD_TEST_PAUSE_SECONDS``, default 600) once ``N`` items of ``stage`` are
done (``N = 0``: before the stage starts; ``N = end``: after its outputs are
written but before its manifest entry is committed), after creating the file
named by ``CELLCROWD_TEST_PAUSE_SIGNAL`` if set. The interruption tests use it
to kill a run at a known point.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import __version__
from .config import Config, get_api_key
from .errors import CellcrowdError, PipelineError, UnsafePathError
from .executor import Executor, make_executor
from .files import (
    TMP_MARK,
    atomic_write_text,
    confine,
    deferred_sync,
    describe_os_error,
    list_images,
    natural_key,
    remove_file,
    sha256_file,
    sync_paths,
)
from .layout import WorkingFolder, part_numbers
from .logs import read_logs

if TYPE_CHECKING:
    from .appen.report import Judgment
    from .geometry import MontageLayout
    from .labels import Window

__all__ = [
    "STAGES",
    "Progress",
    "RunSummary",
    "SkippedUnit",
    "StageOutput",
    "StageRun",
    "StageStatus",
    "StatusReport",
    "lock_holder",
    "prepare_folder",
    "run",
    "status",
    "working_folder",
]

logger = logging.getLogger(__name__)

#: The harvest's stages, in the order they run.
STAGES: tuple[str, ...] = ("report", "fetch", "clean", "movies", "npz", "stitch", "trk", "ctc",
                           "omezarr", "geff", "qc")

_MANIFEST_VERSION = 1
_PAUSE_ENV = "CELLCROWD_TEST_PAUSE_AFTER"
_PAUSE_SIGNAL_ENV = "CELLCROWD_TEST_PAUSE_SIGNAL"
_PAUSE_SECONDS_ENV = "CELLCROWD_TEST_PAUSE_SECONDS"


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedUnit:
    """A unit (montage, judgment, position) a stage left out, and why."""

    stage: str
    unit: str
    reason: str


@dataclass
class StageOutput:
    """What a stage body produced: every file it wrote, counts, skipped units.

    ``retry`` (a reason) marks a stage to be run again next time even though it
    finished, e.g. when some downloads failed and may succeed later.
    """

    outputs: list[Path]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedUnit] = field(default_factory=list)
    retry: str | None = None


RunStatus = Literal["ran", "up-to-date", "disabled", "not-selected"]


@dataclass(frozen=True)
class StageRun:
    """What happened to one stage in a :func:`run`."""

    name: str
    status: RunStatus
    reason: str
    counts: Mapping[str, int] = field(default_factory=dict)
    outputs: tuple[Path, ...] = ()
    skipped: tuple[SkippedUnit, ...] = ()
    seconds: float = 0.0

    @property
    def location(self) -> Path | None:
        """The output file, or the deepest folder holding all outputs."""
        return _common_location(self.outputs)


@dataclass(frozen=True)
class RunSummary:
    """The outcome of :func:`run`, stage by stage."""

    base: Path
    stages: tuple[StageRun, ...]

    @property
    def ran(self) -> list[str]:
        """Names of the stages that did work."""
        return [s.name for s in self.stages if s.status == "ran"]

    @property
    def skipped_units(self) -> list[SkippedUnit]:
        """Every unit a stage left out (from this run or the recorded earlier one)."""
        return [u for s in self.stages for u in s.skipped]

    @property
    def counts(self) -> dict[str, int]:
        """All stages' counts, keyed ``stage.count``."""
        return {f"{s.name}.{k}": v for s in self.stages for k, v in s.counts.items()}

    def stage(self, name: str) -> StageRun:
        """The record of one stage."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


StageState = Literal["done", "stale", "pending", "waiting", "running", "failed", "interrupted",
                     "disabled"]


@dataclass(frozen=True)
class StageStatus:
    """Where one stage stands: ``done``, ``stale`` (will be redone), ``pending`` (never
    run), ``waiting`` (an earlier stage will run first), ``failed``, ``interrupted`` or
    ``disabled``, with the reason."""

    name: str
    state: StageState
    reason: str
    counts: Mapping[str, int] = field(default_factory=dict)
    skipped: tuple[SkippedUnit, ...] = ()
    outputs: int = 0


@dataclass(frozen=True)
class StatusReport:
    """The state of every stage of a working folder (see :func:`status`)."""

    base: Path
    stages: tuple[StageStatus, ...]

    @property
    def done(self) -> list[str]:
        return [s.name for s in self.stages if s.state == "done"]

    @property
    def left(self) -> list[str]:
        """Stages a run would do (not done and not disabled)."""
        return [s.name for s in self.stages if s.state not in ("done", "disabled")]

    @property
    def skipped_units(self) -> list[SkippedUnit]:
        return [u for s in self.stages for u in s.skipped]

    def stage(self, name: str) -> StageStatus:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


class Progress(Protocol):
    """Receives progress of a run (the CLI draws bars with it)."""

    def start(self, stage: str, total: int | None) -> None:
        """``stage`` starts working on ``total`` items (None: unknown)."""

    def advance(self, stage: str, count: int) -> None:
        """``count`` more items of ``stage`` are done."""

    def finish(self, run: StageRun) -> None:
        """``stage`` is done (ran, up to date, disabled or not selected)."""


# -- stage definitions ---------------------------------------------------------------------


@dataclass
class _Context:
    config: Config
    wf: WorkingFolder
    get_executor: Callable[[], Executor]
    api_key: Callable[[], str]
    set_total: Callable[[int | None], None]
    item_done: Callable[[int], None]
    #: The counts an earlier stage recorded in the manifest ({} if none).
    counts_of: Callable[[str], Mapping[str, int]] = lambda name: {}

    @property
    def executor(self) -> Executor:
        """The executor (made on first use, so stages without tasks never start one)."""
        return self.get_executor()


@dataclass(frozen=True)
class _Stage:
    name: str
    upstream: tuple[str, ...]
    settings: Callable[[Config], dict[str, Any]]
    files: Callable[[WorkingFolder, Config], list[Path]]
    body: Callable[[_Context], StageOutput]
    enabled: Callable[[Config], bool] = lambda cfg: True
    #: Bump when the stage's code changes what it writes.
    version: int = 1


def _no_files(wf: WorkingFolder, cfg: Config) -> list[Path]:
    return []


def _log_files(wf: WorkingFolder, cfg: Config) -> list[Path]:
    return [p for p in (wf.chopper_log, wf.montage_log) if p.exists()]


def _raw_and_logs(wf: WorkingFolder, cfg: Config) -> list[Path]:
    raw = list_images(wf.raw) if wf.raw.is_dir() else []
    return _log_files(wf, cfg) + raw


def _stages() -> tuple[_Stage, ...]:
    from .export.zarr_stages import run_geff_stage, run_omezarr_stage, zarr_settings

    return (
        _Stage("report", (), _report_settings, _no_files, _run_report),
        _Stage("fetch", ("report",), _fetch_settings, _no_files, _run_fetch),
        _Stage("clean", ("report", "fetch"), _clean_settings, _log_files, _run_clean,
               version=3),
        _Stage("movies", ("clean",), _no_settings, _raw_and_logs, _run_movies, version=2),
        _Stage("npz", ("movies",), _npz_settings, _log_files, _run_npz,
               enabled=lambda c: c.outputs.npz_parts or c.outputs.npz_full_movie, version=3),
        _Stage("stitch", ("movies",), _stitch_settings, _raw_and_logs, _run_stitch,
               enabled=lambda c: c.outputs.stitched, version=2),
        _Stage("trk", ("stitch",), _no_settings, _no_files, _run_trk,
               enabled=lambda c: c.outputs.trk),
        _Stage("ctc", ("stitch",), _no_settings, _no_files, _run_ctc,
               enabled=lambda c: c.outputs.ctc),
        _Stage("omezarr", ("clean", "movies", "stitch"), zarr_settings, _no_files,
               run_omezarr_stage, enabled=lambda c: c.outputs.wants("omezarr")),
        _Stage("geff", ("clean", "movies", "stitch"), zarr_settings, _no_files,
               run_geff_stage, enabled=lambda c: c.outputs.wants("geff")),
        _Stage("qc", STAGES[:-1], _qc_settings, _qc_files, _run_qc,
               enabled=lambda c: c.outputs.qc),
    )


# -- the manifest --------------------------------------------------------------------------


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _abs(rel: str, base: Path) -> Path:
    path = Path(rel)
    return path if path.is_absolute() else base / path


@functools.lru_cache(maxsize=1 << 16)
def _cached_sha256(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return sha256_file(path)


def _size_and_hash(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, hashed once per process while the file is unchanged."""
    st = path.stat()
    return st.st_size, _cached_sha256(str(path.resolve()), st.st_ino, st.st_size,
                                      st.st_mtime_ns, st.st_ctime_ns)


def _record(paths: Sequence[Path], base: Path) -> dict[str, list[Any]]:
    return {
        _rel(p, base): list(_size_and_hash(p))
        for p in sorted(set(paths), key=lambda q: _rel(q, base))
    }


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Manifest:
    def __init__(self, wf: WorkingFolder) -> None:
        self.path = wf.manifest
        self.data: dict[str, Any] = {"version": _MANIFEST_VERSION, "stages": {}}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("%s is unreadable (%s): every stage will be redone",
                               self.path, exc)
            else:
                if isinstance(loaded, dict) and loaded.get("version") == _MANIFEST_VERSION:
                    self.data = loaded
                else:
                    logger.warning("%s is from another cellcrowd version: every stage "
                                   "will be redone", self.path)

    def entry(self, stage: str) -> dict[str, Any] | None:
        value = self.data["stages"].get(stage)
        return value if isinstance(value, dict) else None

    def set(self, stage: str, entry: dict[str, Any]) -> None:
        self.data["stages"][stage] = entry
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def outputs_digest(self, stage: str) -> str | None:
        entry = self.entry(stage)
        if entry is None or entry.get("state") != "done":
            return None
        return str(entry.get("outputs_digest"))


def _inputs(stage: _Stage, wf: WorkingFolder, cfg: Config, manifest: _Manifest) -> dict[str, Any]:
    return {
        "cellcrowd": __version__,
        "stage_version": stage.version,
        "settings": stage.settings(cfg),
        "upstream": {name: manifest.outputs_digest(name) for name in stage.upstream},
        "files": _record(stage.files(wf, cfg), wf.base),
    }


def _diff_inputs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    if not old:
        return "never run"
    reasons: list[str] = []
    if old.get("cellcrowd") != new["cellcrowd"] or old.get("stage_version") != new[
        "stage_version"
    ]:
        reasons.append("written by another cellcrowd version")
    old_settings = old.get("settings", {})
    changed = sorted(k for k in new["settings"] if old_settings.get(k) != new["settings"][k])
    if changed:
        reasons.append("settings changed: " + ", ".join(changed))
    ups = sorted(k for k, v in new["upstream"].items() if old.get("upstream", {}).get(k) != v)
    if ups:
        reasons.append("outputs of " + ", ".join(ups) + " changed")
    old_files, new_files = old.get("files", {}), new["files"]
    files = sorted(set(old_files) ^ set(new_files)) + sorted(
        k for k in set(old_files) & set(new_files) if old_files[k] != new_files[k]
    )
    if files:
        more = f" and {len(files) - 3} more" if len(files) > 3 else ""
        reasons.append("input files changed: " + ", ".join(files[:3]) + more)
    return "; ".join(reasons) or "inputs changed"


def _verify_outputs(entry: Mapping[str, Any], base: Path) -> str | None:
    """None when every recorded output is intact, else why not."""
    for rel, (size, digest) in entry.get("outputs", {}).items():
        path = _abs(rel, base)
        if not path.is_file():
            return f"output {rel} is missing"
        if path.stat().st_size != size or _size_and_hash(path)[1] != digest:
            return f"output {rel} was changed"
    return None


def _judge(
    entry: Mapping[str, Any] | None, inputs: Mapping[str, Any], base: Path
) -> str | None:
    """None when the stage is up to date, else the reason it must run."""
    if entry is None:
        return "never run"
    state = entry.get("state")
    if state == "failed":
        return f"failed last time: {entry.get('error', '?')}"
    if state != "done":
        return "interrupted last time"
    if entry.get("fingerprint") != _digest(inputs):
        return _diff_inputs(entry.get("inputs"), inputs)
    if entry.get("retry"):
        return f"retrying: {entry['retry']}"
    return _verify_outputs(entry, base)


def _skipped_from(entry: Mapping[str, Any] | None) -> tuple[SkippedUnit, ...]:
    if not entry:
        return ()
    return tuple(SkippedUnit(str(d["stage"]), str(d["unit"]), str(d["reason"]))
                 for d in entry.get("skipped", []))


# -- the working folder ------------------------------------------------------------------


def working_folder(config: Config) -> WorkingFolder:
    """The configured working folder, padding widened to fit its logs' counts."""
    wf = config.working_folder()
    if not wf.chopper_log.exists() or not wf.montage_log.exists():
        return wf
    chopper, montage = read_logs(wf.chopper_log, wf.montage_log)
    frames = chopper.num_images or montage.montage_len * montage.montages_in_pos
    return wf.with_counts(num_x=montage.num_x_segments, num_y=montage.num_y_segments,
                          frames=frames, montages=montage.montages_in_pos)


# -- pause hook (tests) ------------------------------------------------------------------------


class _Pause:
    """The ``CELLCROWD_TEST_PAUSE_AFTER=stage:N`` test hook (see the module docstring)."""

    def __init__(self) -> None:
        spec = os.environ.get(_PAUSE_ENV, "")
        self.stage, _, count = spec.partition(":")
        self.at_end = count == "end"
        self.count: int | None = None
        if self.stage and not self.at_end:
            try:
                self.count = int(count or 0)
            except ValueError:
                raise PipelineError(
                    f"{_PAUSE_ENV}={spec!r}: expected 'stage:N' or 'stage:end'"
                ) from None
        self.done = 0
        self.paused = False

    def items(self, stage: str, n: int) -> None:
        if stage != self.stage or self.count is None or self.paused:
            return
        self.done += n
        if self.done >= self.count:
            self._sleep(stage, f"after {self.done} items")

    def end(self, stage: str) -> None:
        if stage == self.stage and self.at_end and not self.paused:
            self._sleep(stage, "before its manifest entry")

    def _sleep(self, stage: str, where: str) -> None:
        self.paused = True
        seconds = float(os.environ.get(_PAUSE_SECONDS_ENV, "600"))
        signal = os.environ.get(_PAUSE_SIGNAL_ENV)
        logger.warning("test hook %s: pausing stage %s %s for %g s", _PAUSE_ENV, stage, where,
                       seconds)
        if signal:
            with confine(Path(signal).parent):  # the test's folder, outside the harvest's
                atomic_write_text(signal, f"{stage} {where}\n")
        time.sleep(seconds)


# -- running -----------------------------------------------------------------------------------


def _select(
    stages: Sequence[_Stage], from_stage: str | None, until_stage: str | None,
    force: Sequence[str],
) -> set[str]:
    names = [s.name for s in stages]
    for name in [from_stage, until_stage, *force]:
        if name is not None and name not in names:
            raise PipelineError(
                f"unknown stage {name!r}: the stages are {', '.join(names)}"
            )
    start = names.index(from_stage) if from_stage else 0
    stop = names.index(until_stage) if until_stage else len(names) - 1
    if start > stop:
        raise PipelineError(
            f"--from {from_stage} comes after --until {until_stage}: the order is "
            f"{' -> '.join(names)}"
        )
    return set(names[start:stop + 1])


@contextlib.contextmanager
def _lock(wf: WorkingFolder) -> Iterator[None]:
    """Hold the folder's lock; the lock file says who holds it (pid, host, start time)."""
    wf.state.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(wf.state / "lock", "a+") as fh:  # not "w": that would erase the holder
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PipelineError(
                f"another cellcrowd run is using {wf.base} ({_holder_text(fh)}): wait for "
                "it to finish"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _holder_text(fh: Any) -> str:
    fh.seek(0)
    return fh.read().strip() or "holder unknown"


def lock_holder(wf: WorkingFolder) -> str | None:
    """Who holds the folder's lock (``pid N on HOST since TIME``), None when nobody does."""
    path = wf.state / "lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    if not path.is_file():
        return None
    with open(path) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder_text(fh)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None


def _remove_temporary_files(base: Path) -> None:
    """Delete half-written files an interrupted run left (never under a real name)."""
    for path in base.rglob(f"*{TMP_MARK}*"):
        if path.is_file():
            logger.info("removing %s (left by an interrupted run)", path)
            remove_file(path)


def _old_parts(wf: WorkingFolder, *, redo: bool) -> None:
    """Refuse movies made by cellcrowd 0.1.0 (parts from 1); delete them when ``redo``."""
    from .movies import refuse_old_parts

    try:
        montages = int(_montage_log(wf).montages_in_pos)
    except CellcrowdError:
        return  # the stages that need the log say what is wrong with it
    try:
        refuse_old_parts(wf, montages)
    except CellcrowdError as exc:
        if not redo:
            raise PipelineError(str(exc)) from None
        logger.warning("deleting %s: its parts are numbered from 1 (cellcrowd 0.1.0)",
                       wf.movies)
        shutil.rmtree(wf.movies)


def _remove_stale(old: Mapping[str, Any] | None, new: Mapping[str, Any], base: Path) -> None:
    """Delete files an earlier run of the stage wrote that this run did not.

    Only inside the working folder (:func:`cellcrowd.files.remove_file`): a recorded
    output that resolves elsewhere is left alone, with a warning.
    """
    if not old:
        return
    for rel in sorted(set(old.get("outputs", {})) - set(new)):
        path = _abs(rel, base)
        if path.is_file():
            logger.info("removing %s (no longer produced)", rel)
            try:
                remove_file(path, source="the manifest's list of earlier outputs")
            except UnsafePathError as exc:
                logger.warning("not removing a stale output: %s", exc)


def run(
    config: Config,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: Sequence[str] = (),
    executor: Executor | None = None,
    progress: Progress | None = None,
    api_key: Callable[[], str] | None = None,
) -> RunSummary:
    """Run the harvest's stages that are not up to date.

    Parameters
    ----------
    config : Config
        What to harvest and where.
    from_stage, until_stage : str, optional
        Run only this range of :data:`STAGES` (inclusive); the others are left as
        they are.
    force : sequence of str
        Stages to redo even when they are up to date.
    executor : Executor, optional
        Where per-item tasks run; default from ``config.executor`` (made only when
        a stage has work, closed at the end).
    progress : Progress, optional
        Told when stages start, advance and finish.
    api_key : callable, optional
        Returns the service's API key; called only when the report or fetch stage has
        work to do. Default: :func:`cellcrowd.config.get_api_key` (environment only).

    Returns
    -------
    RunSummary
        Per stage: ran / up-to-date / disabled / not-selected, counts, outputs and
        skipped units.

    Raises
    ------
    PipelineError
        An unknown stage name or an impossible range, another run holds the folder,
        or a stage failed on a file system error.
    CellcrowdError
        A stage failed (recorded in the manifest as failed, see :func:`status`).
    """
    stages = _stages()
    selected = _select(stages, from_stage, until_stage, force)
    made: list[Executor] = []
    keys: list[str] = []

    def get_executor() -> Executor:
        if executor is not None:
            return executor
        if not made:
            ex = config.executor
            try:
                made.append(make_executor(ex.workers or None, ex.scheduler or None))
            except OSError as exc:
                raise PipelineError(
                    f"cannot reach the dask scheduler at {ex.scheduler} ({exc}): start it, "
                    "or leave executor.scheduler empty to run on local processes"
                ) from None
        return made[0]

    def get_key() -> str:
        if not keys:
            keys.append(api_key() if api_key is not None else get_api_key())
        return keys[0]

    pause = _Pause()
    runs: list[StageRun] = []
    wf = config.working_folder()
    with _lock(wf), confine(wf.base):
        _remove_temporary_files(wf.base)
        _old_parts(working_folder(config), redo="movies" in force)
        manifest = _Manifest(wf)
        try:
            for stage in stages:
                try:
                    stage_run = _run_stage(
                        stage, config, working_folder(config), manifest,
                        selected=selected, force=force, progress=progress, pause=pause,
                        get_executor=get_executor, get_key=get_key,
                    )
                except OSError as exc:  # writing the manifest or cleaning up
                    raise PipelineError(
                        f"stage {stage.name} failed: {describe_os_error(exc)}") from exc
                runs.append(stage_run)
                if progress is not None:
                    progress.finish(stage_run)
        finally:
            for ex in made:
                ex.close()
    return RunSummary(config.base, tuple(runs))


def _run_stage(
    stage: _Stage,
    config: Config,
    wf: WorkingFolder,
    manifest: _Manifest,
    *,
    selected: set[str],
    force: Sequence[str],
    progress: Progress | None,
    pause: _Pause,
    get_executor: Callable[[], Executor],
    get_key: Callable[[], str],
) -> StageRun:
    name = stage.name
    entry = manifest.entry(name)
    if not stage.enabled(config):
        return StageRun(name, "disabled", "turned off in [outputs]")
    if name not in selected:
        return StageRun(name, "not-selected", "outside --from/--until",
                        counts=(entry or {}).get("counts", {}), skipped=_skipped_from(entry))
    inputs = _inputs(stage, wf, config, manifest)
    reason = "forced" if name in force else _judge(entry, inputs, wf.base)
    if reason is None and entry is not None:
        logger.info("%s: up to date", name)
        return StageRun(
            name, "up-to-date", "inputs and outputs unchanged",
            counts=entry.get("counts", {}),
            outputs=tuple(_abs(r, wf.base) for r in entry.get("outputs", {})),
            skipped=_skipped_from(entry),
        )
    logger.info("%s: running (%s)", name, reason)
    manifest.set(name, {**(entry or {}), "state": "running"})
    if progress is not None:
        progress.start(name, None)
    pause.items(name, 0)

    def set_total(total: int | None) -> None:
        if progress is not None:
            progress.start(name, total)

    def item_done(n: int) -> None:
        if progress is not None:
            progress.advance(name, n)
        pause.items(name, n)

    def counts_of(stage_name: str) -> Mapping[str, int]:
        return dict((manifest.entry(stage_name) or {}).get("counts", {}))

    ctx = _Context(config, wf, get_executor, get_key, set_total, item_done, counts_of)
    started = time.perf_counter()
    try:
        with deferred_sync():  # one sync for the stage's files, below, not one per file
            out = stage.body(ctx)
        sync_paths(out.outputs)
    except CellcrowdError as exc:
        with contextlib.suppress(OSError):
            manifest.set(name, {**(entry or {}), "state": "failed", "error": str(exc)})
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):  # the disk may be full: the manifest can wait
            manifest.set(name, {**(entry or {}), "state": "failed", "error": str(exc)})
        raise PipelineError(f"stage {name} failed: {describe_os_error(exc)}") from exc
    pause.end(name)
    outputs = _record(out.outputs, wf.base)
    _remove_stale(entry, outputs, wf.base)
    manifest.set(name, {
        "state": "done",
        "fingerprint": _digest(inputs),
        "inputs": inputs,
        "outputs": outputs,
        "outputs_digest": _digest(outputs),
        "counts": out.counts,
        "skipped": [{"stage": u.stage, "unit": u.unit, "reason": u.reason}
                    for u in out.skipped],
        "retry": out.retry,
    })
    seconds = time.perf_counter() - started
    for unit in out.skipped:
        logger.info("%s: skipped %s: %s", name, unit.unit, unit.reason)
    logger.info("%s: done in %.1f s (%d files)", name, seconds, len(outputs))
    return StageRun(name, "ran", reason or "", dict(out.counts),
                    tuple(_abs(r, wf.base) for r in outputs), tuple(out.skipped), seconds)


def status(config: Config) -> StatusReport:
    """What is done, what a run would redo and why, what failed, what was skipped.

    Reads the manifest and re-checks inputs and outputs; changes nothing.
    """
    stages = _stages()
    wf = working_folder(config)
    manifest = _Manifest(wf)
    holder = lock_holder(wf)
    out: list[StageStatus] = []
    will_run: set[str] = set()
    for stage in stages:
        entry = manifest.entry(stage.name)
        counts = (entry or {}).get("counts", {})
        skipped = _skipped_from(entry)
        n_out = len((entry or {}).get("outputs", {}))
        if not stage.enabled(config):
            out.append(StageStatus(stage.name, "disabled", "turned off in [outputs]"))
            continue
        reason = _judge(entry, _inputs(stage, wf, config, manifest), wf.base)
        state: StageState
        if reason is None and will_run & set(stage.upstream):
            state, reason = "waiting", "redone if " + ", ".join(
                sorted(will_run & set(stage.upstream))) + " output changes"
        elif reason is None:
            state, reason = "done", "up to date"
        elif entry is None:
            state = "pending"
        elif entry.get("state") == "failed":
            state = "failed"
        elif entry.get("state") == "running" and holder is not None:
            state, reason = "running", f"running now ({holder})"
        elif entry.get("state") == "running":
            state = "interrupted"
        else:
            state = "stale"
        if state != "done":
            will_run.add(stage.name)
        out.append(StageStatus(stage.name, state, reason, counts, skipped, n_out))
    return StatusReport(config.base, tuple(out))


def prepare_folder(
    config: Config,
    *,
    truth: Any = None,
    executor: Executor | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """Cut the configured raw movie into montages (``[prepare]`` settings).

    Writes the montages, both JSON logs and the upload CSV into the working
    folder (and ground-truth label montages when ``truth`` labels are given);
    returns :class:`cellcrowd.prepare.PrepareResult`.
    """
    from .prepare import prepare

    p = config.prepare
    return prepare(
        config.raw_folder, config.working_folder(),
        num_x=p.num_x, num_y=p.num_y, overlap_perc=p.overlap_perc,
        montage_len=p.montage_len, row_length=p.row_length,
        x_buffer=p.x_buffer, y_buffer=p.y_buffer, url_prefix=p.url_prefix,
        truth=truth, executor=executor, progress=progress,
    )


def _common_location(paths: Sequence[Path]) -> Path | None:
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p) for p in paths]))



# -- stage bodies --------------------------------------------------------------------------
#
# Each body reads what earlier stages wrote, calls its module's library functions and
# returns every file it wrote. Modules are imported inside the bodies so that importing
# the pipeline (e.g. for `cellcrowd status`) stays cheap.


def _no_settings(cfg: Config) -> dict[str, Any]:
    return {}


def _report_settings(cfg: Config) -> dict[str, Any]:
    s = cfg.service
    return {"job_id": cfg.job_id, "report_type": s.report_type, "api_url": s.api_url,
            "api_version": s.api_version, "identifier": cfg.identifier,
            "allow_other_identifier": s.allow_other_identifier}


def _fetch_settings(cfg: Config) -> dict[str, Any]:
    return {"job_id": cfg.job_id, "report_type": cfg.service.report_type,
            "max_pixels": cfg.service.max_pixels}


def _clean_settings(cfg: Config) -> dict[str, Any]:
    clean = cfg.clean.model_dump()
    del clean["min_agreement"]  # only read by `cellcrowd review`
    if not _consensus(cfg):  # the consensus settings do not matter then
        del clean["min_iou"], clean["min_support"], clean["strategy"]
    return {"job_id": cfg.job_id, "report_type": cfg.service.report_type, **clean}


def _npz_settings(cfg: Config) -> dict[str, Any]:
    return {"samples_to_drop": list(cfg.npz.samples_to_drop), "channels": list(cfg.npz.channels),
            "npz_parts": cfg.outputs.npz_parts, "npz_full_movie": cfg.outputs.npz_full_movie}


def _stitch_settings(cfg: Config) -> dict[str, Any]:
    # The stitched movie's .npz is written by the stitch stage (see the module docstring).
    on = cfg.outputs.npz_full_movie
    return {"npz_stitched_movie": on, "npz_channels": list(cfg.npz.channels) if on else []}


def _qc_settings(cfg: Config) -> dict[str, Any]:
    return {"job_id": cfg.job_id}


def _qc_files(wf: WorkingFolder, cfg: Config) -> list[Path]:
    """The logs and the raw montages (the overlays' backgrounds), read by no other stage."""
    montages = list_images(wf.montages) if wf.montages.is_dir() else []
    return _log_files(wf, cfg) + montages


def _montage_log(wf: WorkingFolder) -> Any:
    from .logs import read_montage_log

    return read_montage_log(wf.montage_log)


def _parts(wf: WorkingFolder) -> list[int]:
    """Part numbers the montage log promises."""
    return list(part_numbers(int(_montage_log(wf).montages_in_pos)))


def _existing(paths: Sequence[Path]) -> list[Path]:
    return [p for p in paths if p.is_file()]


def _run_report(ctx: _Context) -> StageOutput:
    from .appen.report import write_broken_link_csvs, write_problems_csv

    cfg, wf = ctx.config, ctx.wf
    service = cfg.service
    dest = wf.report_csv(cfg.job_id, service.report_type)
    with _client(ctx) as client:
        client.download_report(cfg.job_id, dest, report_type=service.report_type,
                               api_version=service.api_version)
    judgments = _read_judgments(cfg, wf)
    broken = write_broken_link_csvs(judgments, dest, wf, cfg.job_id)
    write_problems_csv(judgments, wf, cfg.job_id)
    outputs = _existing([dest, wf.broken_links_csv(cfg.job_id, service.report_type),
                         wf.reupload_csv(cfg.job_id), wf.report_problems_csv(cfg.job_id)])
    skipped = [SkippedUnit("report", name, "broken link: the annotator could not open the "
                           f"image; re-upload the rows of {wf.reupload_csv(cfg.job_id).name}")
               for name in broken]
    skipped += [SkippedUnit("report", f"row {p.row} (unit {p.unit_id})", p.reason)
                for p in judgments.problems]
    counts = {"judgments": len(judgments), "units": len({j.unit_id for j in judgments}),
              "broken_links": len(broken)}
    return StageOutput(outputs, counts, skipped)


def _read_judgments(cfg: Config, wf: WorkingFolder) -> Any:
    from .appen.report import read_report

    return read_report(wf.report_csv(cfg.job_id, cfg.service.report_type),
                       report_type=cfg.service.report_type, identifier=cfg.identifier,
                       allow_other_identifier=cfg.service.allow_other_identifier)


def _client(ctx: _Context) -> Any:
    """A client for the service with the configuration's bounds on every wait."""
    from .appen.client import AppenClient

    s = ctx.config.service
    return AppenClient(ctx.api_key(), base_url=s.api_url, poll_interval=s.poll_interval,
                       max_connections=s.concurrency, max_retry_after=s.max_wait,
                       request_deadline=s.request_deadline, report_deadline=s.report_deadline)


def _run_fetch(ctx: _Context) -> StageOutput:
    from .download import download_annotations

    cfg, wf = ctx.config, ctx.wf
    judgments = _read_judgments(cfg, wf)
    usable = {(j.montage, j.unit_id, j.judgment_id) for j in judgments if j.usable}
    ctx.set_total(len(usable))
    with _client(ctx) as client:
        result = download_annotations(judgments, wf, job_id=cfg.job_id,
                                      concurrency=cfg.service.concurrency, client=client,
                                      progress=ctx.item_done,
                                      max_pixels=cfg.service.max_pixels)
    failed = {(f.montage, f.unit, f.judgment) for f in result.failures}
    outputs = [wf.judgment_path(*key) for key in sorted(usable - failed)]
    outputs += [wf.annotation_path(m) for m in sorted(result.chosen)]
    if result.failures_csv is not None:
        outputs.append(result.failures_csv)
    skipped = [SkippedUnit("fetch", f"{f.montage} (unit {f.unit}, judgment {f.judgment})",
                           f"download failed: {f.reason}") for f in result.failures]
    counts = {"requested": result.requested, "downloaded": result.downloaded,
              "already_there": result.skipped_existing, "failed": result.failed,
              "montages": len(result.chosen), "montages_with_several": len(result.multiple)}
    retry = f"{result.failed} downloads failed" if result.failures else None
    return StageOutput(outputs, counts, skipped, retry=retry)


def _consensus(cfg: Config) -> bool:
    return cfg.clean.consensus and cfg.clean.strategy != "latest"


def _run_clean(ctx: _Context) -> StageOutput:
    judgments = _read_judgments(ctx.config, ctx.wf)
    if _consensus(ctx.config):
        return _clean_with_consensus(ctx, judgments)
    return _clean_chosen(ctx, judgments)


def _clean_chosen(ctx: _Context, judgments: Any) -> StageOutput:
    """``consensus = false``: clean the one annotation per montage the fetch stage chose."""
    from .appen.report import still_broken
    from .labels import CleanTask, clean_annotations, write_clean_stats

    cfg, wf = ctx.config, ctx.wf
    montages = sorted({j.montage for j in judgments if j.usable}, key=natural_key)
    skipped: list[SkippedUnit] = []
    tasks = []
    log = _montage_log(wf)
    c = cfg.clean
    window = _windows(wf)
    for name in montages:
        src = wf.annotation_path(name)
        if src.is_file():
            tasks.append(CleanTask(src, wf.label_path(name), log, name, c.encoding,
                                   c.min_size, c.max_hole, window(name)))
        else:
            skipped.append(SkippedUnit("clean", name, "no annotation could be downloaded "
                                       f"(see {wf.failures_csv(cfg.job_id).name})"))
    ctx.set_total(len(tasks))
    results = clean_annotations(tasks, executor=ctx.executor, progress=ctx.item_done)
    outputs = [r.dst for r in results if r.ok]
    skipped += [SkippedUnit("clean", r.montage, f"annotation unusable: {r.error}")
                for r in results if not r.ok]
    stats = {r.montage: [r.stats] for r in results if r.stats is not None}
    outputs.append(write_clean_stats(wf.clean_stats_path, stats))
    counts = {"montages": len(montages), "cleaned": len(outputs) - 1,
              "broken_links": len(still_broken(judgments)), "skipped": len(skipped)}
    return StageOutput(outputs, counts, skipped)


def _judgment_unit(montage: str, j: Judgment) -> str:
    return f"{montage} (unit {j.unit_id}, judgment {j.judgment_id})"


def _judgment_order(j: Judgment) -> tuple[Any, ...]:
    return natural_key(j.unit_id), natural_key(j.judgment_id)


def _windows(wf: WorkingFolder) -> Callable[[str], Window | None]:
    """Where image data lies in a montage's frames (None for every montage when old
    logs cannot tell the tile grid, or for a name that is not a montage name)."""
    from .labels import tile_window

    try:
        grid = read_logs(wf.chopper_log, wf.montage_log)[0].tile_grid()
    except CellcrowdError as exc:
        logger.info("cleaning without the image's edges in padded tiles (%s)", exc)
        return lambda name: None

    def window(name: str) -> Window | None:
        try:
            return tile_window(grid, name)
        except CellcrowdError:
            return None

    return window


def _merge_layout(wf: WorkingFolder) -> MontageLayout | None:
    """The montages' layout from the logs (None when old logs cannot tell the tile size)."""
    try:
        chopper, montage = read_logs(wf.chopper_log, wf.montage_log)
        return montage.layout(chopper.tile_grid().tile_shape)
    except CellcrowdError as exc:
        logger.info("consensus without a montage layout (%s): buffers are not checked", exc)
        return None


def _finders(weights: Sequence[float], annotator: int, support: float) -> int | None:
    """How many annotators (with ``annotator``) make up ``support`` of the total weight.

    The consensus reports a dropped cell's support as a share of the weight; with
    unequal weights the count is the size of the subsets of annotators whose
    weights add up to it (None when that is not one number, or too costly to find).

    >>> _finders([1.0, 1.0, 1.0], 2, 1 / 3), _finders([0.9, 0.6, 0.8], 1, 0.6 / 2.3)
    (1, 1)
    """
    import itertools

    active = [i for i, w in enumerate(weights) if w > 0]
    total = sum(weights[i] for i in active)
    others = [i for i in active if i != annotator]
    if annotator not in active or len(others) > 12 or total <= 0:
        return None
    target, tol = support * total - weights[annotator], 1e-6 * total
    sizes = {1 + r for r in range(len(others) + 1)
             for combo in itertools.combinations(others, r)
             if abs(sum(weights[i] for i in combo) - target) <= tol}
    return sizes.pop() if len(sizes) == 1 else None


def _dropped_units(montage: str, js: Sequence[Judgment], report: Any, strategy: str
                   ) -> list[SkippedUnit]:
    """One record per input cell the consensus left out."""
    active = sum(1 for w in report.weights if w > 0)
    out = []
    for cell in report.dropped:
        j = js[cell.annotator]
        count = _finders(report.weights, cell.annotator, cell.support)
        found = (f"found by {count} of {active} annotators" if count is not None else
                 f"found by annotators with {cell.support:.0%} of the trust weight of "
                 f"{active} annotators")
        if cell.reason == "support" and strategy == "vote":
            reason = (f"dropped: {found} (more than {report.min_support:.0%} of the weight "
                      "needed)")
        elif cell.reason == "support":
            reason = (f"dropped: {found} (more than {report.min_support:.0%} of them, or "
                      "reliable enough ones, needed)")
        else:
            reason = f"dropped: {found}, but other cells won every one of its pixels"
        out.append(SkippedUnit("clean", f"{montage}: cell {cell.label} of judgment "
                               f"{j.judgment_id}", reason))
    return out


def _clean_with_consensus(ctx: _Context, judgments: Any) -> StageOutput:
    """Clean every usable judgment of a montage; merge several into one (consensus)."""
    from .appen.report import still_broken
    from .jobconsensus import JudgmentLabels, mean_agreement, merge_job
    from .labels import CleanTask, clean_annotations, write_clean_stats

    cfg, wf = ctx.config, ctx.wf
    c = cfg.clean
    log = _montage_log(wf)
    window = _windows(wf)
    failures_csv = wf.failures_csv(cfg.job_id).name
    by_montage: dict[str, dict[tuple[str, str], Judgment]] = {}
    for j in judgments:
        if j.usable:
            by_montage.setdefault(j.montage, {}).setdefault((j.unit_id, j.judgment_id), j)
    montages = sorted(by_montage, key=natural_key)
    skipped: list[SkippedUnit] = []
    left_out = 0
    for j in sorted((j for j in judgments if j.broken_link and j.montage in by_montage),
                    key=lambda j: (natural_key(j.montage), *_judgment_order(j))):
        left_out += 1
        skipped.append(SkippedUnit("clean", _judgment_unit(j.montage, j),
                                   "broken link: the annotator could not open the image; "
                                   "the montage's other judgments are used"))

    singles: list[CleanTask] = []
    several: dict[str, list[Judgment]] = {}
    for name in montages:
        present = []
        for j in sorted(by_montage[name].values(), key=_judgment_order):
            if wf.judgment_path(name, j.unit_id, j.judgment_id).is_file():
                present.append(j)
        if not present:
            skipped.append(SkippedUnit("clean", name, "no annotation could be downloaded "
                                       f"(see {failures_csv})"))
            continue
        for j in sorted(by_montage[name].values(), key=_judgment_order):
            if j not in present:
                left_out += 1
                skipped.append(SkippedUnit(
                    "clean", _judgment_unit(name, j),
                    f"download failed (see {failures_csv}); the montage's other "
                    "judgments are used"))
        if len(present) == 1:
            j = present[0]
            singles.append(CleanTask(wf.judgment_path(name, j.unit_id, j.judgment_id),
                                     wf.label_path(name), log, name, c.encoding,
                                     c.min_size, c.max_hole, window(name)))
        else:
            several[name] = present
    each = [CleanTask(wf.judgment_path(name, j.unit_id, j.judgment_id),
                      wf.judgment_label_path(name, j.unit_id, j.judgment_id), log,
                      _judgment_unit(name, j), c.encoding, c.min_size, c.max_hole,
                      window(name))
            for name, js in several.items() for j in js]
    ctx.set_total(len(singles) + len(each) + len(several))
    results = clean_annotations(singles + each, executor=ctx.executor, progress=ctx.item_done)
    outputs = [r.dst for r in results[:len(singles)] if r.ok]
    skipped += [SkippedUnit("clean", r.montage, f"annotation unusable: {r.error}")
                for r in results[:len(singles)] if not r.ok]

    stats = {r.montage: [r.stats] for r in results[:len(singles)] if r.stats is not None}
    inputs: dict[str, list[JudgmentLabels]] = {}
    used: dict[str, list[Judgment]] = {}
    start = len(singles)
    for name, js in several.items():
        ok = []
        start += len(js)
        for j, r in zip(js, results[start - len(js):start], strict=True):
            if r.stats is not None:
                ok.append(j)
                outputs.append(r.dst)
                stats.setdefault(name, []).append(r.stats)
            else:
                left_out += 1
                skipped.append(SkippedUnit("clean", r.montage, f"annotation unusable: "
                                           f"{r.error}; the montage's other judgments are used"))
        if not ok:
            skipped.append(SkippedUnit("clean", name, "no judgment of this montage is usable"))
            ctx.item_done(1)
            continue
        used[name] = ok
        inputs[name] = [JudgmentLabels(
            j.unit_id, j.judgment_id, j.worker_id, j.trust, j.tainted,
            wf.judgment_label_path(name, j.unit_id, j.judgment_id)) for j in ok]
    outputs.append(write_clean_stats(wf.clean_stats_path, stats))
    merged: list[Any] = []
    strategy: Literal["vote", "reliability"] = "vote" if c.strategy == "vote" else "reliability"
    if inputs:
        job = merge_job(wf, inputs, strategy=strategy,
                        min_iou=c.min_iou, min_support=c.min_support, layout=_merge_layout(wf),
                        executor=ctx.executor, progress=ctx.item_done)
        outputs += job.files
        merged = job.results

    dropped = 0
    agreements: list[float] = []
    for m in merged:
        if m.report is None:
            skipped.append(SkippedUnit("clean", m.montage, f"consensus failed: {m.error}"))
            continue
        agreement = mean_agreement(m.report)
        agreements.append(agreement)
        drops = _dropped_units(m.montage, used[m.montage], m.report, strategy)
        dropped += len(drops)
        skipped += drops
        outputs.append(m.dst)
        logger.info("%s: %d annotators -> %d cells, %d dropped, mean agreement (F1) %.2f",
                    m.montage, m.report.annotators, m.report.consensus_cells, len(drops),
                    agreement)
    labelled = sum(1 for p in outputs if p.parent == wf.labels and p.suffix == ".png")
    counts = {"montages": len(montages), "cleaned": labelled,
              "broken_links": len(still_broken(judgments)),
              "skipped": len(montages) - labelled}
    if several or left_out:  # else the counts (and the QC page) of the single path
        counts.update(montages_merged=len(agreements), cells_dropped=dropped,
                      judgments_left_out=left_out)
    if agreements:
        counts["mean_agreement_pct"] = round(100 * sum(agreements) / len(agreements))
    return StageOutput(outputs, counts, skipped)


def _run_movies(ctx: _Context) -> StageOutput:
    from .layout import position_name
    from .movies import montages_to_movies, raw_to_movies

    wf = ctx.wf
    labels = len(list(wf.labels.glob("*_labels.png"))) if wf.labels.is_dir() else 0
    raw = len(list_images(wf.raw)) if wf.raw.is_dir() else 0
    ctx.set_total(labels + raw)
    raw_result = raw_to_movies(wf, executor=ctx.executor, progress=ctx.item_done)
    annotated = montages_to_movies(wf, executor=ctx.executor, progress=ctx.item_done)
    outputs = [f for item in annotated.items + raw_result.items for f in item.files]
    skipped = [SkippedUnit("movies", f"part{m.part} {position_name(m.position, wf.padding)}",
                           f"left out of part {m.part}: montage {m.montage}: {m.reason}")
               for m in annotated.missing]
    skipped += [SkippedUnit("movies", e.split(":", 1)[0], e) for e in raw_result.errors]
    counts = {"annotated_frames": annotated.files_written, "raw_tiles": raw_result.files_written,
              "missing_montages": len(annotated.missing)}
    return StageOutput(outputs, counts, skipped)


def _run_npz(ctx: _Context) -> StageOutput:
    from .errors import InputError
    from .export.npz import write_full_movie_npz, write_parts_npz_each

    cfg, wf = ctx.config, ctx.wf
    outputs: list[Path] = []
    skipped: list[SkippedUnit] = []
    parts = _parts(wf)
    channels = list(cfg.npz.channels) or None
    if cfg.outputs.npz_parts:
        ctx.set_total(len(parts))
        for result in write_parts_npz_each(
                wf, parts, executor=ctx.executor, progress=ctx.item_done,
                samples_to_drop=cfg.npz.samples_to_drop, channels=channels):
            if result.path is not None:
                outputs.append(result.path)
            else:
                skipped.append(SkippedUnit("npz", f"part{result.part}", str(result.error)))
    parts_skipped = len(skipped)
    if cfg.outputs.npz_full_movie:
        try:
            outputs.append(write_full_movie_npz(
                wf, samples_to_drop=cfg.npz.samples_to_drop, channels=channels))
        except InputError as exc:
            skipped.append(SkippedUnit("npz", wf.npz_full_movie.name, str(exc)))
    return StageOutput(outputs, {"files": len(outputs), "parts_skipped": parts_skipped},
                       skipped)


def _run_stitch(ctx: _Context) -> StageOutput:
    from .errors import InputError
    from .export.npz import write_stitched_movie_npz
    from .layout import position_name
    from .stitch import stitch_movies

    cfg = ctx.config
    ctx.set_total(len(_parts(ctx.wf)))
    result = stitch_movies(ctx.wf, executor=ctx.executor, progress=ctx.item_done)
    wf = result.wf
    outputs = [wf.stitched_frame("annotated", t) for t in range(result.frames)]
    outputs += [wf.stitched_frame("raw", t) for t in range(result.raw_frames)]
    outputs.append(wf.stitched_lineage)
    skipped = [SkippedUnit("stitch", f"part{part} {position_name(pos, wf.padding)}",
                           f"tile left out of the stitched part {part}: {reason}")
               for part, pos, reason in result.missing]
    if cfg.outputs.npz_full_movie:
        try:
            outputs.append(write_stitched_movie_npz(
                wf, channels=list(cfg.npz.channels) or None))
        except InputError as exc:
            skipped.append(SkippedUnit("stitch", wf.npz_stitched_movie.name, str(exc)))
    counts = {"frames": result.frames, "cells": result.cells, "divisions": result.divisions,
              "conflicts": len(result.conflicts)}
    return StageOutput(outputs, counts, skipped)


def _run_trk(ctx: _Context) -> StageOutput:
    from .export.trk import export_trk

    return StageOutput([export_trk(ctx.wf)], {"files": 1})


def _files_under(result: Any) -> list[Path]:
    if isinstance(result, Path):
        return sorted(p for p in result.rglob("*") if p.is_file()) if result.is_dir() else [
            result]
    return [Path(p) for p in result]


def _run_ctc(ctx: _Context) -> StageOutput:
    from .export.ctc import export_ctc

    outputs = _files_under(export_ctc(ctx.wf))
    return StageOutput(outputs, {"files": len(outputs)})


#: Earlier stages' counts shown in the QC report (only those that do not depend on how
#: often a run was interrupted, so that the report is the same bytes after a resume).
_QC_COUNTS = (
    ("clean", "cleaned", "montages with clean labels"),
    ("clean", "montages_merged", "montages merged from several judgments"),
    ("clean", "cells_dropped", "cells dropped by the consensus (too few annotators)"),
    ("clean", "mean_agreement_pct", "mean agreement of annotators with the consensus (F1, %)"),
    ("stitch", "cells", "cells in the stitched movie"),
    ("stitch", "divisions", "divisions in the stitched movie"),
)


def _run_qc(ctx: _Context) -> StageOutput:
    from .qc import collect_qc, write_qc

    cfg = ctx.config
    summary: dict[str, object] = {}
    for stage, key, label in _QC_COUNTS:
        value = ctx.counts_of(stage).get(key)
        if value is not None:
            summary[label] = value
    qc = collect_qc(ctx.wf, summary=summary or None, job_id=cfg.job_id)
    files = write_qc(qc)
    totals = qc.totals()
    counts = {"montages": totals["montages"], "labels": totals["labels"],
              "overlays": len(files.overlays), "missing": len(qc.missing),
              "units_to_check": totals["units_to_check"]}
    return StageOutput(files.paths, counts)
