"""Answers of the service read safely: bounded bodies, whole files, one-member zips.

* :func:`read_limited` reads a small answer (JSON, an error) up to a size limit;
  :func:`server_message` finds the message in an error answer;
* :func:`stream_to_file` streams a large one to disk, bounded, and
  :func:`check_complete` raises :class:`RetryableError` for a truncated body;
* :func:`extract_single_member` unpacks a report zip: exactly one member is extracted
  whatever its name (the name is never used as a path, so it cannot escape the folder),
  with a bound on its uncompressed size and on its compression ratio (zip bombs).

Every public name here can also be imported from :mod:`cellcrowd.appen.client`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from ..errors import ReportError, ServiceError
from ..files import TMP_MARK

__all__ = [
    "EMPTY_ZIP_MAGIC",
    "ZIP_MAGIC",
    "RetryableError",
    "check_complete",
    "extract_single_member",
    "read_head",
    "read_limited",
    "scratch_path",
    "server_message",
    "stream_to_file",
]

#: The first bytes of a zip file, and of an empty one.
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_MAX_RATIO = 200  # uncompressed / compressed beyond this is a zip bomb, for large members
_RATIO_CHECK_ABOVE = 16 << 20
_CHUNK = 1 << 16


class RetryableError(Exception):
    """Raised by a response handler to ask ``AppenClient.send`` to try again.

    Used for truncated or corrupt bodies; not part of the public error tree (it never
    leaves ``AppenClient.send``: it becomes a
    :class:`~cellcrowd.errors.TemporaryServiceError` when the retries run out).
    """

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def server_message(response: httpx.Response) -> str:
    """The message of a JSON error body (``{"error": {"message": …}}``), or its start."""
    try:
        body = read_limited(response, 64 << 10, "error body", strict=False)
    except httpx.HTTPError:
        return response.reason_phrase or "no details"
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200] or response.reason_phrase or "no details"
    if isinstance(data, dict):
        for key in ("error", "notice", "errors"):
            value = data.get(key)
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])[:200]
            if isinstance(value, str | list):
                return str(value)[:200]
        if "message" in data:
            return str(data["message"])[:200]
    return text[:200]


def read_limited(response: httpx.Response, limit: int, what: str, *,
                  strict: bool = True) -> bytes:
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes(_CHUNK):
        total += len(chunk)
        if total > limit:
            if not strict:
                break
            raise ServiceError(f"{what}: the answer is larger than {limit} bytes",
                               status=response.status_code)
        chunks.append(chunk)
    return b"".join(chunks)


def stream_to_file(response: httpx.Response, target: Path, limit: int, what: str) -> int:
    """Stream the body into ``target``; a short body raises :class:`RetryableError`."""
    total = 0
    with open(target, "wb") as out:
        for chunk in response.iter_bytes(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise ServiceError(
                    f"{what}: the download is larger than the {limit}-byte limit; raise "
                    "max_report_bytes if this job really is that large",
                    status=response.status_code,
                )
            out.write(chunk)
    check_complete(response, total)
    return total


def check_complete(response: httpx.Response, received: int) -> None:
    """Raise :class:`RetryableError` when fewer bytes came than ``Content-Length`` said."""
    declared = response.headers.get("content-length")
    plain = not response.headers.get("content-encoding")
    if plain and declared and declared.isdigit() and received != int(declared):
        raise RetryableError(f"truncated body: got {received} of {declared} bytes")


def read_head(path: Path, size: int = 64) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


@contextlib.contextmanager
def scratch_path(beside: Path) -> Iterator[Path]:
    """A temporary file next to ``beside``, removed on exit whatever happens."""
    fd, name = tempfile.mkstemp(prefix=f".{beside.name}{TMP_MARK}", suffix=".zip",
                                dir=beside.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def extract_single_member(
    zip_path: str | Path, dest: str | Path, *, max_bytes: int = 4 << 30,
    source: str = "report zip",
) -> str:
    """Copy the one file inside ``zip_path`` to ``dest``; return the member's name.

    The member's name is never used as a path (so ``../`` names cannot escape), its
    uncompressed size is bounded by ``max_bytes`` (checked while copying, not only from
    the header) and large members with an implausible compression ratio are refused
    (zip bombs). The zip's CRC is checked as the member is read.
    """
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise ReportError(f"{source} is not a valid zip ({exc}): download it again",
                          path=zip_path) from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1:
            names = ", ".join(repr(m.filename) for m in members[:5]) or "none"
            raise ReportError(
                f"{source} holds {len(members)} files ({names}), expected exactly one; "
                "download the report again or unzip it by hand",
                path=zip_path,
            )
        info = members[0]
        if info.flag_bits & 0x1:
            raise ReportError(f"{source}: {info.filename!r} is encrypted", path=zip_path)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > max_bytes or (
            info.file_size > _RATIO_CHECK_ABOVE and ratio > _MAX_RATIO
        ):
            raise ReportError(
                f"{source}: {info.filename!r} would unpack to {info.file_size} bytes "
                f"({ratio:.0f}x its compressed size; limit {max_bytes} bytes, ratio "
                f"{_MAX_RATIO}x): refusing a possible zip bomb",
                path=zip_path,
            )
        written = 0
        try:
            with archive.open(info) as src, open(dest, "wb") as out:
                while block := src.read(_CHUNK):
                    written += len(block)
                    if written > max_bytes:
                        raise ReportError(
                            f"{source}: {info.filename!r} unpacks to more than {max_bytes} "
                            "bytes: refusing a possible zip bomb",
                            path=zip_path,
                        )
                    out.write(block)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise ReportError(
                f"{source}: {info.filename!r} is damaged ({exc}): download it again",
                path=zip_path,
            ) from None
    return info.filename
