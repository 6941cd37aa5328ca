"""The original post-annotation notebook's functions, with its names and arguments.

An old notebook runs with only its import lines changed::

    from cellcrowd.notebook import (
        download_and_unzip, save_annotations_from_csv,                 # steps 1-2
        clean_montages, relabel_montages, convert_grayscale_all,       # step 3
        raw_movie_maker, all_montages_chopper, read_json_params_montage,  # step 4
        make_training_data,                                            # step 5
    )

Differences that matter:

* The annotations folder must be ``{base_dir}/{identifier}_annotations`` (the
  notebook's default); base folder and identifier are read from its name.
* Downloads are never overwritten: :func:`convert_grayscale_all`,
  :func:`clean_montages` and :func:`relabel_montages` write the cleaned copy
  ``{base_dir}/{identifier}_labels/{montage}_labels.png`` (uint16), which
  :func:`all_montages_chopper` reads. :func:`clean_montages` works from the
  download itself, so it gives the same result whether or not
  :func:`convert_grayscale_all` ran first; :func:`relabel_montages` is a no-op
  on its output (already ``1..n``) and relabels grey copies otherwise.
* :func:`make_training_data` writes ``X`` float32 ``(positions, frames, rows,
  cols, channels)`` and ``y`` int32 ``(…, 1)`` (see :mod:`cellcrowd.export.npz`).
* :func:`clean_montages`, :func:`all_montages_chopper` and :func:`raw_movie_maker`
  run on the executor ``cellcrowd run`` uses by default: local worker processes, one
  per CPU up to 8 (``[executor]`` defaults of :class:`cellcrowd.config.Config`),
  started for the call and closed before it returns. Pass ``executor=`` to use
  your own (``LocalExecutor(1)`` runs them one after the other here); the files
  written are the same either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from .errors import InputError
from .executor import Executor, owned_executor
from .export.npz import save_npz, stream_training_arrays
from .files import deferred_sync, list_images, read_image, sync_paths, write_image
from .job import Job
from .labels import CleanResult, CleanTask, clean_annotations, decode_annotation, relabel_sequential
from .layout import (
    WorkingFolder,
    montage_of_part,
    parse_montage_name,
    parse_part_name,
    parse_report_name,
)
from .logs import read_montage_log
from .movies import MoviesResult, montages_to_movies, raw_to_movies

__all__ = [
    "all_montages_chopper",
    "clean_montages",
    "convert_grayscale_all",
    "download_and_unzip",
    "make_training_data",
    "raw_movie_maker",
    "read_json_params_montage",
    "relabel_montages",
    "save_annotations_from_csv",
]

logger = logging.getLogger(__name__)

_ANNOTATION_SUFFIX = "_annotation"


def _folder_wf(folder: str | Path) -> WorkingFolder:
    """The working folder of ``{base}/{identifier}_annotations``."""
    return WorkingFolder.from_annotations_folder(folder)


def _annotations(wf: WorkingFolder) -> list[tuple[Path, str]]:
    """``(download, montage name)`` of every montage annotation directly in the folder."""
    if not wf.annotations.is_dir():
        raise InputError("annotations folder not found: run save_annotations_from_csv first",
                         path=wf.annotations)
    found = []
    for path in list_images(wf.annotations):
        try:
            parse_montage_name(path.name)
        except InputError:
            logger.warning("%s: not a montage annotation; ignored", path)
            continue
        found.append((path, path.stem.removesuffix(_ANNOTATION_SUFFIX)))
    if not found:
        raise InputError("no montage annotations in this folder: run "
                         "save_annotations_from_csv first", path=wf.annotations)
    return found


def convert_grayscale_all(folder: str | Path) -> list[Path]:
    """Decode every annotation (red-channel ids or one colour per cell) into grey ids.

    Writes ``{identifier}_labels/{montage}_labels.png`` (uint16); the downloads
    stay as they are. No cleaning: run :func:`clean_montages` next. One bad
    file is logged and skipped.

    Returns
    -------
    list of Path
        The label files written.
    """
    wf = _folder_wf(folder)
    written = []
    for src, montage in _annotations(wf):
        try:
            ids = decode_annotation(read_image(src))
            written.append(write_image(wf.label_path(montage), ids))
        except (InputError, ValueError, OSError) as exc:
            logger.error("%s: not converted: %s", src.name, exc)
    logger.info("converted %d annotations into %s", len(written), wf.labels)
    return written


def clean_montages(
    folder: str | Path, *, executor: Executor | None = None
) -> list[CleanResult]:
    """Decode, clean (specks under 10 px, holes under 64 px, per cell) and relabel.

    Reads every downloaded annotation of ``folder`` and writes the cleaned
    labels to ``{identifier}_labels/{montage}_labels.png``; the downloads are
    never changed. Needs the JSON logs (``json_logs``). One bad file is logged
    and skipped. ``executor`` runs the montages (default: local processes, as
    ``cellcrowd run``; see the module docstring). The files are synced to disk
    once, at the end.

    Returns
    -------
    list of cellcrowd.labels.CleanResult
        One per annotation (stats, or the error).
    """
    wf = _folder_wf(folder)
    log = Job.load(wf).montage_log
    tasks = [CleanTask(src, wf.label_path(montage), log, montage)
             for src, montage in _annotations(wf)]
    with owned_executor(executor) as ex, deferred_sync():
        results = clean_annotations(tasks, executor=ex)
    sync_paths(r.dst for r in results if r.ok)
    logger.info("cleaned %d of %d annotations into %s",
                sum(r.ok for r in results), len(results), wf.labels)
    return results


def relabel_montages(folder: str | Path) -> list[Path]:
    """Renumber the cell ids of every cleaned label montage to ``1..n`` (in place, on the copy).

    Raises
    ------
    InputError
        If there are no label montages yet (run :func:`clean_montages` first).
    """
    wf = _folder_wf(folder)
    paths = sorted(wf.labels.glob("*_labels.png")) if wf.labels.is_dir() else []
    if not paths:
        raise InputError("no label montages to relabel: run clean_montages first",
                         path=wf.labels)
    for path in paths:
        try:
            write_image(path, relabel_sequential(read_image(path)))
        except (InputError, ValueError, TypeError, OSError) as exc:
            logger.error("%s: not relabelled: %s", path.name, exc)
    return paths


def all_montages_chopper(
    base_dir: str | Path, montage_dir: str | Path, identifier: str, *,
    skip: Collection[str] = (),
    executor: Executor | None = None,
) -> MoviesResult:
    """Chop the cleaned label montages into ``movies/part{N}/x_XX_y_YY/annotated`` frames.

    ``montage_dir`` is the annotations folder (``identifier + "_annotations"``,
    relative to ``base_dir``); the cleaned copies made from it are read. See
    :func:`cellcrowd.movies.montages_to_movies` (``executor`` as there, default
    local processes as ``cellcrowd run``; files synced once at the end).
    """
    base = Path(base_dir)
    wf = WorkingFolder(base, identifier, annotations=base / montage_dir)
    return _synced(executor, lambda ex: montages_to_movies(wf, skip=skip, executor=ex))


def raw_movie_maker(
    base_dir: str | Path, raw_dir: str | Path, identifier: str, *,
    executor: Executor | None = None,
) -> MoviesResult:
    """Cut the full-size raw frames into ``movies/part{N}/x_XX_y_YY/raw`` tiles.

    See :func:`cellcrowd.movies.raw_to_movies` (``executor`` as there, default
    local processes as ``cellcrowd run``; files synced once at the end).
    """
    wf = WorkingFolder(Path(base_dir), identifier, raw=Path(raw_dir))
    return _synced(executor, lambda ex: raw_to_movies(wf, executor=ex))


def _synced(given: Executor | None, make: Callable[[Executor], MoviesResult]) -> MoviesResult:
    """``make(executor)`` with its files synced once at the end instead of one by one."""
    with owned_executor(given) as ex, deferred_sync():
        result = make(ex)
    sync_paths(f for item in result.items for f in item.files)
    return result


def read_json_params_montage(
    log_folder: str | Path, identifier: str
) -> tuple[int, int, int, int, int, int]:
    """``(montage_len, num_x_segments, num_y_segments, row_length, x_buffer, y_buffer)``.

    Read from ``{log_folder}/{identifier}_montage_maker_log.json`` (or the older
    ``{identifier}_montage_maker.json``).
    """
    wf = WorkingFolder(Path(log_folder).parent, identifier)
    log = read_montage_log(wf.montage_log_in(log_folder))
    return (log.montage_len, log.num_x_segments, log.num_y_segments, log.row_length,
            log.x_buffer, log.y_buffer)


#: Arguments of the seed's ``make_training_data`` that change nothing here, and their defaults.
_IGNORED: dict[str, object] = {"dimensionality": 3, "annotation_name": "",
                               "border_mode": "same", "output_mode": "conv",
                               "reshape_size": None, "verbose": False}


def _note_ignored(given: dict[str, object]) -> None:
    """Warn about ignored arguments the caller set to something else than their default."""
    changed = [name for name, value in given.items() if value != _IGNORED[name]]
    if changed:
        logger.warning(
            "make_training_data: %s are accepted for compatibility and ignored (movies are "
            "written whole, as (positions, frames, rows, cols, channels))", ", ".join(changed),
        )


def make_training_data(
    direc_name: str | Path,
    file_name_save: str | Path,
    channel_names: Sequence[str] = ("",),
    dimensionality: int = 3,
    training_direcs: Sequence[str] | None = None,
    raw_image_direc: str = "raw",
    annotation_direc: str = "annotated",
    annotation_name: str = "",
    border_mode: str = "same",
    output_mode: str = "conv",
    num_frames: int | None = None,
    reshape_size: int | None = None,
    verbose: bool = False,
) -> Path:
    """Combine a part's raw and annotated movies into a DeepCell ``.npz``.

    Honoured: ``direc_name`` (the part folder, ``movies/part{N}``),
    ``file_name_save`` (``.npz`` is appended if missing, like ``np.savez``),
    ``training_direcs`` (position folders; ``'x_0{}_y_0{}'`` names match any
    padding; default all), ``raw_image_direc``, ``annotation_direc``,
    ``num_frames`` (at most this many frames per position) and
    ``channel_names`` (one channel per entry: raw files whose name contains it;
    ``[""]`` = every file, one channel). Accepted for compatibility and ignored
    (a warning names those set to something else than the seed's default):
    ``dimensionality``, ``annotation_name``,
    ``border_mode``, ``output_mode``, ``reshape_size``, ``verbose``.

    Keys written: ``X`` float32 ``(positions, frames, rows, cols, channels)``,
    ``y`` int32 ``(positions, frames, rows, cols, 1)``, ``positions``,
    ``missing_positions``, ``part`` (from the folder name, else -1),
    ``identifier`` (empty), ``frame_offset`` (``part * num_frames`` when
    both are known, else -1).

    Returns
    -------
    Path
        The file written.
    """
    _note_ignored({"dimensionality": dimensionality, "annotation_name": annotation_name,
                   "border_mode": border_mode, "output_mode": output_mode,
                   "reshape_size": reshape_size, "verbose": verbose})
    direc = Path(direc_name)
    dest = Path(file_name_save)
    if dest.suffix != ".npz":
        dest = dest.with_name(dest.name + ".npz")
    arrays = stream_training_arrays(
        direc, positions=training_direcs, raw_dirname=raw_image_direc,
        annotation_dirname=annotation_direc, channel_filters=tuple(channel_names),
        num_frames=num_frames,
    )
    number = parse_part_name(direc.name)
    part = -1 if number is None else number
    offset = (-1 if number is None or num_frames is None
              else montage_of_part(number) * num_frames)
    return save_npz(dest, arrays, part=part, identifier="", frame_offset=offset)


# --- service steps (seed steps 1-2) ---
# The API key comes from CELLCROWD_API_KEY / APPEN_API_KEY / FIGURE_EIGHT_API_KEY (a
# hidden prompt otherwise) and the base URL from CELLCROWD_API_URL, so an old notebook
# runs unattended with its calls unchanged.

def download_and_unzip(
    job_id: int | str, save_folder: str | Path, report_type: str = "full"
) -> Path:
    """Seed step 1: download a report to ``{save_folder}/CSV/job_{id}_{type}_report.csv``.

    The report types are the service's (``full``, ``aggregated``, ``json``,
    ``gold_report``, ``workset``, ``source``). The zip is not kept. Returns the CSV's path.
    """
    from .appen.client import AppenClient, api_url_from_env, get_api_key

    # Report names do not depend on the identifier: any valid one will do here.
    dest = WorkingFolder(Path(save_folder), "notebook").report_csv(job_id, report_type)
    with AppenClient(get_api_key(), base_url=api_url_from_env()) as client:
        return client.download_report(job_id, dest, report_type=report_type)


def save_annotations_from_csv(csv_path: str | Path, annotations_folder: str | Path) -> list[str]:
    """Seed step 2: download every annotation of a report; list the still-broken images.

    ``csv_path`` is ``{base_dir}/CSV/job_{id}_{type}_report.csv`` and
    ``annotations_folder`` ``{base_dir}/{identifier}_annotations``. Each montage's chosen
    annotation is ``{montage}_annotation.png`` there (every judgment is kept under
    ``judgments/``). Rows with broken links are not downloaded: when some images have
    no annotation at all, ``CSV/job_{id}_{type}_report_broken_links.csv`` and
    ``CSV/job_{id}_reupload.csv`` are written (see
    :func:`cellcrowd.appen.report.write_broken_link_csvs`).

    Returns
    -------
    list of str
        As the original: the ``image_url`` of every row whose broken link was never
        fixed (no judgment of the same image has an annotation), full URLs in report
        order; ``[]`` when there are none.
    """
    from .appen.client import AppenClient, api_url_from_env, get_api_key
    from .appen.report import read_report, write_broken_link_csvs
    from .download import download_annotations

    csv_path = Path(csv_path)
    wf = _folder_wf(annotations_folder)
    job_id, report_type = parse_report_name(csv_path.name) or (csv_path.stem, "full")
    report = read_report(csv_path, report_type=report_type)
    still = set(write_broken_link_csvs(report, csv_path, wf, job_id))
    broken = [j.image_url for j in report if j.broken_link and j.montage in still]
    with AppenClient(get_api_key(), base_url=api_url_from_env()) as client:
        result = download_annotations(report, wf, job_id=job_id, client=client)
    if result.failures:
        logger.warning("%d annotation(s) failed: see %s; run this cell again to retry them",
                       result.failed, result.failures_csv)
    return broken
