"""Annotation images of a job: fetched concurrently, verified, written atomically, resumable.

Every judgment with an annotation is kept, one file each, at
``wf.judgment_path(montage, unit, judgment)``. The seed notebook's single
``wf.annotation_path(montage)`` (what the next stage reads) is a copy of one of them:

* the only usable judgment of the montage, or, when there are several,
* the first by this rule: untainted workers first, then the highest trust, then the
  latest judgment (``_created_at``, then report order). The result records how many
  judgments such montages had (a later stage merges them).

Montages whose judgments all reported a broken link are skipped and listed
(:func:`cellcrowd.appen.report.still_broken`).

How a file is fetched
    The body is read into memory (at most ``max_bytes``), checked to be complete
    (``Content-Length``), of the montage size when the JSON logs tell it (else
    non-empty, at most ``MAX_SIDE`` pixels a side and ``max_pixels`` pixels in all) *from
    its header, before anything is decoded* (a decompression bomb is a failed unit, never
    a crash), to be a PNG that decodes (``verify`` and ``load``), and only then written
    (a temporary file beside the target, renamed into place).
    429, 5xx, connection errors and truncated bodies are retried by
    :meth:`AppenClient.send` (capped backoff, ``Retry-After``). A PNG that arrives
    complete (closing ``IEND`` chunk) but does not decode is fetched once more, then
    recorded as "the service sent a damaged image". What still fails is recorded in
    ``wf.failures_csv(job_id)`` (montage, unit, judgment, redacted URL, reason) and the run
    goes on. A refused key on the API's own host stops the run (every request would fail
    the same way). The API key is sent only to the API's host (scheme, host and port),
    never to storage hosts.

Reruns
    A file already in place is checked cheaply (PNG signature, size in the header, the
    closing ``IEND`` chunk; files only ever appear complete, by atomic rename) and
    skipped, so a finished job makes no request on a rerun. A stale failures CSV is
    removed when a rerun has no failures.

Downloads run on a thread pool of ``concurrency`` threads sharing the client's
connection pool, so that latency, not bandwidth, sets the pace only once per thread.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image

from .appen.client import AppenClient, RetryableError, api_url_from_env, check_complete, get_api_key
from .appen.report import Judgment, still_broken
from .codec import PNG_SIGNATURE
from .errors import (
    AuthenticationError,
    ConfigError,
    DownloadError,
    InputError,
    ServiceError,
    UnsafePathError,
)
from .files import (
    atomic_write_bytes,
    atomic_write_text,
    check_inside,
    deferred_sync,
    natural_key,
    remove_file,
    sync_paths,
    write_settings,
)
from .job import Job
from .layout import WorkingFolder

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "ChosenAnnotation",
    "DownloadFailure",
    "DownloadResult",
    "download_annotations",
    "expected_montage_shape",
]

logger = logging.getLogger(__name__)

#: Largest accepted side of an annotation image when the montage size is unknown.
MAX_SIDE = 30_000
#: Default largest accepted annotation, in pixels, when the montage size is unknown.
MAX_PIXELS = 50_000_000
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_FAILURE_COLUMNS = ("montage", "unit", "judgment", "url", "reason")


@dataclass(frozen=True)
class DownloadFailure:
    """A judgment whose annotation could not be fetched or verified."""

    montage: str
    unit: str
    judgment: str
    url: str
    reason: str


@dataclass(frozen=True)
class ChosenAnnotation:
    """The judgment copied to ``wf.annotation_path(montage)``, out of ``candidates``."""

    montage: str
    unit: str
    judgment: str
    path: Path
    candidates: int


@dataclass
class DownloadResult:
    """What :func:`download_annotations` did.

    Attributes
    ----------
    requested : int
        Judgments with an annotation URL.
    downloaded, skipped_existing, failed : int
        Fetched now; already in place and intact; failed after retries.
    failures : list of DownloadFailure
        The failed ones (also in ``failures_csv``).
    chosen : dict
        Montage name -> the judgment copied to ``wf.annotation_path``.
    multiple : dict
        Montage name -> number of usable judgments, for montages with more than one.
    broken : list of str
        Montages with only broken-link judgments (skipped).
    missing : list of str
        Montages with annotations none of which could be downloaded.
    failures_csv : Path or None
        Where the failures were written.
    """

    requested: int = 0
    downloaded: int = 0
    skipped_existing: int = 0
    failed: int = 0
    failures: list[DownloadFailure] = field(default_factory=list)
    chosen: dict[str, ChosenAnnotation] = field(default_factory=dict)
    multiple: dict[str, int] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failures_csv: Path | None = None


def expected_montage_shape(
    wf: WorkingFolder, *, job: Job | None = None
) -> tuple[int, int] | None:
    """The montage size ``(rows, cols)`` the job's logs describe, or ``None`` if unknown.

    ``job``: the job, when already loaded for ``wf`` (else its logs are read).
    """
    try:
        return Job.of(wf, job).montage_shape
    except InputError as exc:
        logger.debug("montage size unknown (%s): checking annotation sizes loosely", exc)
        return None


def download_annotations(
    judgments: Iterable[Judgment],
    wf: WorkingFolder,
    *,
    job_id: int | str,
    concurrency: int = 32,
    api_key: str | None = None,
    client: AppenClient | None = None,
    progress: Callable[[int], None] | None = None,
    expected_shape: tuple[int, int] | None = None,
    max_bytes: int = 256 << 20,
    max_pixels: int = MAX_PIXELS,
) -> DownloadResult:
    """Download every judgment's annotation PNG; choose one per montage for the next stage.

    Parameters
    ----------
    judgments : iterable of Judgment
        From :func:`cellcrowd.appen.report.read_report`.
    wf : WorkingFolder
        Where files go (``wf.judgment_path``, ``wf.annotation_path``, ``wf.failures_csv``).
    job_id : int or str
        The job (names the failures CSV).
    concurrency : int
        Downloads in flight at once.
    api_key : str, optional
        Used when ``client`` is not given; default from the environment (see
        :func:`cellcrowd.appen.client.get_api_key`), else no key (public storage URLs).
    client : AppenClient, optional
        The client (its base URL decides which host gets the key; its retry settings and
        sleep apply). Default: a new one for ``CELLCROWD_API_URL``.
    progress : callable, optional
        Called with 1 after each judgment.
    expected_shape : (int, int), optional
        Montage size to check; default from the JSON logs when they tell it.
    max_bytes : int
        Largest accepted annotation file.
    max_pixels : int
        Largest accepted annotation (width x height) when the montage size is unknown;
        checked from the PNG header before anything is decoded.

    Returns
    -------
    DownloadResult
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    judgments = list(judgments)
    tasks = list({(j.montage, j.unit_id, j.judgment_id): j
                  for j in judgments if j.usable}.values())
    shape = expected_shape if expected_shape is not None else expected_montage_shape(wf)
    limits = _Limits(shape, max_bytes, max_pixels)
    own = client is None
    if client is None:
        client = AppenClient(api_key if api_key is not None else _key_from_env(),
                             base_url=api_url_from_env(), max_connections=concurrency)
    result = DownloadResult(requested=len(tasks))
    done: list[tuple[Judgment, Path]] = []
    workers = max(1, min(concurrency, client.max_connections, len(tasks)))
    durable, written = write_settings().durable, _Written()
    try:  # files synced once at the end, not one by one (renames stay atomic)
        with (deferred_sync(),
              ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cellcrowd-dl") as pool):
            single = _single(tasks)  # their annotation file is written as they arrive
            _run(pool, tasks, single, wf, client, limits, progress, result, done, written)
            copies = _choose(judgments, done, result)
            copies = {m: path for m, path in copies.items() if m not in single}
            list(pool.map(_copy_if_changed, copies.values(),
                          [wf.annotation_path(m) for m in copies]))
    finally:
        if own:
            client.close()
        if durable:  # what was written is on disk before this returns (or raises)
            sync_paths([*written.paths, *(wf.annotation_path(m) for m in result.chosen)])
    result.failures_csv = _write_failures(result.failures, wf, job_id)
    logger.info(
        "job %s: %d annotations: %d downloaded, %d already there, %d failed; %d montages "
        "with several judgments, %d broken, %d missing",
        job_id, result.requested, result.downloaded, result.skipped_existing, result.failed,
        len(result.multiple), len(result.broken), len(result.missing),
    )
    return result


def _key_from_env() -> str | None:
    try:
        return get_api_key(prompt=False)
    except ConfigError:
        logger.debug("no API key in the environment: annotations are fetched without one")
        return None


@dataclass(frozen=True)
class _Limits:
    """What an annotation must be: the montage size (if known), bytes, pixels."""

    shape: tuple[int, int] | None
    max_bytes: int
    max_pixels: int


@dataclass
class _Written:
    """Files a download wrote (synced together at its end)."""

    paths: list[Path] = field(default_factory=list)


class _DamagedImageError(Exception):
    """A PNG arrived complete (closing IEND chunk) but does not decode."""


def _run(
    pool: ThreadPoolExecutor, tasks: list[Judgment], single: set[str], wf: WorkingFolder,
    client: AppenClient, limits: _Limits, progress: Callable[[int], None] | None,
    result: DownloadResult, done: list[tuple[Judgment, Path]], written: _Written,
) -> None:
    futures: dict[Future[str | DownloadFailure], tuple[Judgment, Path]] = {}
    inside = _Inside(wf.base)
    for j in tasks:
        path = wf.judgment_path(j.montage, j.unit_id, j.judgment_id)
        try:
            inside.check(path, _row_of(j))
            inside.check(wf.annotation_path(j.montage), _row_of(j))
        except UnsafePathError as exc:
            result.failed += 1
            result.failures.append(_failure(client, j, j.annotation_url or "", str(exc)))
            continue
        copy_to = wf.annotation_path(j.montage) if j.montage in single else None
        futures[pool.submit(_fetch_one, client, j, path, limits, copy_to)] = (j, path)
    try:
        for future in as_completed(futures):
            outcome = future.result()
            if isinstance(outcome, DownloadFailure):
                result.failed += 1
                result.failures.append(outcome)
            else:
                if outcome == "downloaded":
                    result.downloaded += 1
                    written.paths.append(futures[future][1])
                else:
                    result.skipped_existing += 1
                done.append(futures[future])
            if progress is not None:
                progress(1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    result.failures.sort(key=lambda f: (natural_key(f.montage), f.unit, f.judgment))


class _Inside:
    """``check_inside(path, base)`` for many files in a few folders: each folder resolved once.

    A file in a folder already found inside ``base`` is inside too unless its name is a
    symbolic link (or ``.``/``..``); only those get the full check. This keeps the
    check of hundreds of names from taking the GIL from the download threads.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self._folders: set[Path] = set()

    def check(self, path: Path, source: str) -> None:
        if (path.parent in self._folders and path.name not in ("", ".", "..")
                and not path.is_symlink()):
            return  # a plain name in a folder that resolves inside base
        check_inside(path, self.base, source=source)
        try:
            check_inside(path.parent, self.base)
        except UnsafePathError:
            return  # e.g. base/../base_name: the file is base itself, its folder is not
        self._folders.add(path.parent)


def _single(tasks: list[Judgment]) -> set[str]:
    """Montages with one judgment to fetch: its file is the montage's annotation."""
    count: dict[str, int] = {}
    for j in tasks:
        count[j.montage] = count.get(j.montage, 0) + 1
    return {montage for montage, n in count.items() if n == 1}


def _row_of(j: Judgment) -> str:
    return f"report row {j.row_number} (unit {j.unit_id}, judgment {j.judgment_id})"


def _fetch_one(client: AppenClient, j: Judgment, target: Path, limits: _Limits,
               copy_to: Path | None = None) -> str | DownloadFailure:
    """Fetch one annotation: ``"downloaded"``, ``"existing"`` or a failure record.

    ``copy_to``: the montage's annotation file, when this is the montage's only
    judgment: written here, while other threads wait for the network, and from the
    bytes just received rather than read back.
    """
    url = j.annotation_url or ""
    if target.exists():
        problem = _quick_check(target, limits)
        if problem is None:
            if copy_to is not None:
                _copy_if_changed(target, copy_to)
            return "existing"
        logger.info("%s is damaged (%s): downloading it again", target.name, problem)
    what = f"annotation of {j.montage} (unit {j.unit_id}, judgment {j.judgment_id})"
    for attempt in (1, 2):
        try:
            data = client.send("GET", url, what=what,
                               handle=lambda r: _receive_png(r, limits, what))
            atomic_write_bytes(target, data)
            if copy_to is not None:
                _write_if_changed(copy_to, data)
            return "downloaded"
        except AuthenticationError:
            raise  # the API refused the key: every other request would fail the same way
        except (ServiceError, DownloadError, UnsafePathError) as exc:
            return _failure(client, j, url, str(exc))
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return _failure(client, j, url, f"bad URL ({exc})")
        except _DamagedImageError as exc:
            if attempt == 2:
                return _failure(client, j, url, f"the service sent a damaged image twice "
                                f"({exc}): it arrived complete but does not decode; ask "
                                "the service about it, or leave the unit out")
            logger.warning("%s arrived complete but does not decode (%s): fetching it once "
                           "more", what, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _failure(client: AppenClient, j: Judgment, url: str, reason: str) -> DownloadFailure:
    logger.warning("%s, unit %s, judgment %s: %s", j.montage, j.unit_id, j.judgment_id,
                   client.redact(reason))
    return DownloadFailure(j.montage, j.unit_id, j.judgment_id, client.redact(url),
                           client.redact(reason))


def _receive_png(response: httpx.Response, limits: _Limits, what: str) -> bytes:
    """The body (at most ``limits.max_bytes``), checked (:func:`_verify_png`): written to
    its file only once it is whole and decodes."""
    received = 0
    chunks: list[bytes] = []
    for chunk in response.iter_bytes(1 << 16):
        received += len(chunk)
        if received > limits.max_bytes:
            raise DownloadError(f"{what} is larger than {limits.max_bytes} bytes",
                                url=str(response.request.url))
        chunks.append(chunk)
    check_complete(response, received)
    data = b"".join(chunks)
    _verify_png(data, limits, what, str(response.request.url))
    return data


def _verify_png(data: bytes, limits: _Limits, what: str, url: str) -> None:
    """Raise DownloadError (wrong content), RetryableError (cut) or _DamagedImageError if bad.

    ``data`` is the file's bytes, as written. The size is checked from the header
    before anything is decoded.
    """
    head = data[:32]
    complete = data[-len(_IEND):] == _IEND
    if not head.startswith(PNG_SIGNATURE):
        raise DownloadError(f"{what} is not a PNG (starts {head[:16]!r})", url=url)
    problem = _size_problem(_png_size(head), limits)
    if problem:
        raise DownloadError(f"{what}: {problem}", url=url)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Image.DecompressionBombError as exc:
        raise DownloadError(f"{what}: refusing a possible decompression bomb ({exc})",
                            url=url) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        if complete:
            raise _DamagedImageError(f"{type(exc).__name__}: {exc}") from None
        raise RetryableError(f"damaged PNG, cut short ({exc})") from None


def _png_size(head: bytes) -> tuple[int, int] | None:
    """``(rows, cols)`` from a PNG's IHDR chunk, or None when there is none."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _size_problem(size: tuple[int, int] | None, limits: _Limits) -> str | None:
    if size is None:
        return "no PNG header (IHDR)"
    shape = limits.shape
    if shape is not None and size != tuple(shape):
        return (f"the image is {size[0]}x{size[1]} pixels but the montages of this job are "
                f"{shape[0]}x{shape[1]}: is the report from another job?")
    if not (0 < size[0] <= MAX_SIDE and 0 < size[1] <= MAX_SIDE):
        return f"implausible image size {size[0]}x{size[1]} (at most {MAX_SIDE} a side)"
    if size[0] * size[1] > limits.max_pixels:
        return (f"the image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, more than "
                f"the limit of {limits.max_pixels} (service.max_pixels): refusing a possible "
                "decompression bomb; raise the limit if the montages really are this large")
    return None


def _quick_check(path: Path, limits: _Limits) -> str | None:
    """Why an existing file is not a complete PNG of the right size (None if it is)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            fh.seek(max(0, path.stat().st_size - len(_IEND)))
            tail = fh.read()
    except OSError as exc:
        return f"unreadable ({exc})"
    if not head.startswith(PNG_SIGNATURE):
        return "not a PNG"
    if tail != _IEND:
        return "no closing IEND chunk (cut short)"
    return _size_problem(_png_size(head), limits)


# -- one annotation per montage -----------------------------------------------------------


def _timestamp(text: str) -> float:
    text = text.strip()
    for fmt in ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M"):
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return -math.inf


def _rank(j: Judgment) -> tuple[bool, float, float, int, str, str]:
    """Sort key: untainted first, then highest trust, then latest, then last in report."""
    trust = j.trust if j.trust is not None else -math.inf
    return (j.tainted, -trust, -_timestamp(j.created_at), -j.row_number, j.unit_id,
            j.judgment_id)


def _choose(judgments: list[Judgment], done: list[tuple[Judgment, Path]],
            result: DownloadResult) -> dict[str, Path]:
    """Fill ``chosen``, ``multiple``, ``broken``, ``missing``; return montage -> file to copy."""
    copies: dict[str, Path] = {}
    by_montage: dict[str, list[tuple[Judgment, Path]]] = {}
    for j, path in done:
        by_montage.setdefault(j.montage, []).append((j, path))
    for montage in sorted(by_montage, key=natural_key):
        candidates = by_montage[montage]
        best, path = min(candidates, key=lambda item: _rank(item[0]))
        if len(candidates) > 1:
            result.multiple[montage] = len(candidates)
        copies[montage] = path
        result.chosen[montage] = ChosenAnnotation(montage, best.unit_id, best.judgment_id,
                                                  path, len(candidates))
    result.broken = still_broken(judgments)
    wanted = {j.montage for j in judgments if j.usable}
    result.missing = sorted(wanted - by_montage.keys(), key=natural_key)
    return copies


def _copy_if_changed(src: Path, dst: Path) -> None:
    _write_if_changed(dst, src.read_bytes())


def _write_if_changed(dst: Path, data: bytes) -> None:
    if dst.exists() and dst.stat().st_size == len(data) and dst.read_bytes() == data:
        return
    atomic_write_bytes(dst, data)


def _write_failures(failures: list[DownloadFailure], wf: WorkingFolder,
                    job_id: int | str) -> Path | None:
    path = wf.failures_csv(job_id)
    if not failures:
        if path.exists():
            logger.info("no failures this time: removing the old %s", path.name)
            remove_file(path)
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_FAILURE_COLUMNS)
    writer.writerows([f.montage, f.unit, f.judgment, f.url, f.reason] for f in failures)
    atomic_write_text(path, buf.getvalue())
    logger.warning("%d annotation(s) could not be downloaded: see %s (run again to retry them)",
                   len(failures), path)
    return path
