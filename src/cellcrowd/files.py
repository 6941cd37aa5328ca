"""Reading and writing files safely: atomic writes, images, natural sort, hashes.

Every file cellcrowd writes goes through :func:`atomic_path` (or a helper built
on it): the data is written to a temporary file in the target folder, flushed,
then renamed into place, so an interrupted run never leaves a half-written file
under a real name.

Every write, rename and delete also goes through one guard, :func:`check_inside`:
while a working folder is *confined* (:func:`confine`, done by the pipeline for its
whole run), a path that resolves outside it (``..`` parts, absolute names, symbolic
links pointing elsewhere) is refused with an :class:`~cellcrowd.errors.UnsafePathError`
naming the path and, when given, where its name came from (e.g. a report row).

How files are encoded (deflate levels of ``.npz``, PNG, TIFF and gzip, the
deflate codec) and whether each atomic write is synced to disk on its own are
:class:`WriteSettings` (:func:`write_settings`, :func:`use_write_settings`);
tasks run by :func:`cellcrowd.executor.run_tasks` see the settings of the
process that started them. Inside :func:`deferred_sync` atomic writes are still
atomic but not synced one by one: the caller syncs them all at once with
:func:`sync_paths` (one durable sync per pipeline stage instead of one per file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import os
import re
import shutil
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from . import hashes
from .codec import PNG_SIGNATURE, encode_png, encode_tiff
from .errors import InputError, UnsafePathError
from .fastread import decode_png, decode_tiff
from .hashes import sha256_file
from .syncing import sync_paths

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "RESOURCE_ERRNOS",
    "TMP_MARK",
    "WriteSettings",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "call_with_settings",
    "check_inside",
    "confine",
    "confined_roots",
    "deferred_sync",
    "describe_os_error",
    "forget_confinement",
    "image_header",
    "list_images",
    "natural_key",
    "raise_if_resource_error",
    "read_image",
    "remove_file",
    "sha256_file",
    "sync_paths",
    "use_write_settings",
    "write_image",
    "write_npz",
    "write_settings",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
#: Part of every temporary file name: such files are never a finished output.
TMP_MARK = ".cellcrowd-tmp-"
_O_BINARY = getattr(os, "O_BINARY", 0)
#: Largest image plane :func:`read_image` decodes (the header is checked first).
MAX_PIXELS = 1 << 27
#: Largest file :func:`read_image` reads whole for :mod:`cellcrowd.fastread`.
FAST_READ_BYTES = 64 << 20
#: The folders writes are confined to (innermost last); empty: no confinement.
_ROOTS: list[Path] = []
_ROOTS_LOCK = threading.Lock()


@contextlib.contextmanager
def confine(root: str | Path) -> Iterator[Path]:
    """Refuse, while the block runs, every write, rename or delete outside ``root``.

    Confinement is process-wide (threads included): while any folder is confined, a path
    must lie inside one of the confined folders (several runs in one process each add
    their own). Yields ``root`` resolved (symbolic links followed).
    """
    resolved = Path(root).resolve()
    with _ROOTS_LOCK:
        _ROOTS.append(resolved)
    try:
        yield resolved
    finally:
        with _ROOTS_LOCK:
            _ROOTS.remove(resolved)


def confined_roots() -> tuple[Path, ...]:
    """The folders writes are confined to now (:func:`confine`), resolved, innermost last:
    what a task run elsewhere carries (:func:`call_with_settings`)."""
    with _ROOTS_LOCK:
        return tuple(_ROOTS)


def forget_confinement() -> None:
    """Drop every confined folder of this process: for the initializer of a worker
    process forked while its parent ran a job (it would keep that job's folder for
    good); its tasks bring the folders of the job that sends them. Call it before any
    other thread of the process writes: the lock is made anew too (a fork copies it as
    it was, possibly held by one of the parent's threads)."""
    global _ROOTS_LOCK
    _ROOTS_LOCK = threading.Lock()
    _ROOTS.clear()


def check_inside(path: str | Path, root: str | Path | None = None, *,
                 source: str | None = None) -> Path:
    """Return ``path`` if it resolves inside ``root``; raise UnsafePathError if not.

    Parameters
    ----------
    path : Path
        The file about to be written, renamed or deleted.
    root : Path, optional
        The folder it must stay in; default the confined folders (see :func:`confine`),
        and no check at all when none is confined.
    source : str, optional
        Where the name came from (e.g. ``"report row 12 (unit 5, judgment 9)"``), for
        the message.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     check_inside(Path(d) / "a.png", d).name
    'a.png'
    """
    path = Path(path)
    if root is None:
        with _ROOTS_LOCK:
            bases = list(_ROOTS)
        if not bases:
            return path
    else:
        bases = [Path(root).resolve()]
    resolved = path.resolve()
    if not any(resolved == base or base in resolved.parents for base in bases):
        raise UnsafePathError(
            f"refusing to write or delete outside the working folder {bases[-1]}: the name "
            f"resolves to {resolved}" + (f"; it came from {source}" if source else "")
            + ": the input is malformed or hostile (fix or remove it), or a symbolic link "
            "in the working folder points elsewhere",
            path=path,
        )
    return path


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write: what, which file, and the free space if full.

    >>> import errno
    >>> describe_os_error(OSError(errno.EACCES, "Permission denied", "/x/y.png"))
    'Permission denied: /x/y.png'
    """
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        text += f": {exc.filename}"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        where = Path(str(exc.filename)) if exc.filename is not None else Path.cwd()
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = shutil.disk_usage(where).free
            text += f" ({free / 1e6:.1f} MB left on that disk)"
        except OSError:
            pass
        text += ": free some space and run the same command again; it resumes"
    return text


#: OS errors about the machine, not one file: a run stops on them instead of skipping a unit.
RESOURCE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EMFILE", "ENFILE", "ENOMEM")
    if hasattr(errno, name))


def raise_if_resource_error(exc: BaseException) -> None:
    """Re-raise ``exc`` when it is a full disk (or another machine-wide OS error).

    Per-unit handlers call it first, so that one full disk is never recorded as a
    thousand bad units.
    """
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        raise exc


def remove_file(path: str | Path, *, source: str | None = None) -> bool:
    """Delete a file through the guard (:func:`check_inside`); False if it was not there."""
    path = check_inside(path, source=source)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def natural_key(name: str | Path) -> tuple[object, ...]:
    """Sort key that orders ``frame_2`` before ``frame_10``.

    >>> sorted(["f10.tif", "f2.tif", "f1.tif"], key=natural_key)
    ['f1.tif', 'f2.tif', 'f10.tif']
    """
    text = Path(name).name if isinstance(name, Path) else name
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", text))


def list_images(folder: str | Path) -> list[Path]:
    """Image files (PNG/TIFF) directly in ``folder``, in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found or not a folder", path=folder)
    return sorted(
        (p for p in folder.iterdir()
         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and TMP_MARK not in p.name),
        key=natural_key,
    )


@functools.cache
def _file_mode() -> int:
    """``0o666`` less this process's umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_TMP_COUNT = itertools.count()


def _open_temporary(path: Path) -> tuple[int, Path]:
    """Create a private temporary file beside ``path`` (its folder made if missing)."""
    for attempt in range(100):
        tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{next(_TMP_COUNT)}"
                             f"{path.suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600), tmp
        except FileNotFoundError:
            if attempt:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # left by an earlier process of the same id
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On error the temporary file is removed and ``path`` is untouched. The temporary
    file is private while it is written; the result gets the mode a plain ``open``
    would give it (``0o666`` less the umask: ``0644`` under umask 022), so colleagues
    and a web server hosting montages can read it. Inside
    :func:`cellcrowd.hashes.hashing_writes` the file is hashed once in place.
    """
    # on Windows another open of the file must be possible: it is closed while in use
    with _atomic_file(path, keep_open=os.name != "nt") as (_, tmp):
        yield tmp


@contextlib.contextmanager
def _atomic_file(path: str | Path, *, keep_open: bool) -> Iterator[tuple[int, Path]]:
    """:func:`atomic_path`, yielding the temporary file's descriptor (open for writing;
    -1 unless ``keep_open``) with its path."""
    path = check_inside(path)
    fd, tmp = _open_temporary(path)
    done = False
    try:
        if not keep_open:
            os.close(fd)
            fd = -1
        yield fd, tmp
        open_fd, fd = fd, -1  # _finish closes it, also when it raises
        _finish(open_fd, tmp)
        os.replace(tmp, path)
        done = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not done:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if hashes.hashing():
        hashes.note_written(path)


def _finish(fd: int, tmp: Path) -> None:
    """Sync (when durable) and give the file its final mode, through ``fd`` when open."""
    if fd < 0:  # pragma: no cover - Windows
        if _settings.durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        return
    try:
        if _settings.durable:
            os.fsync(fd)
        os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (through the temporary file's descriptor: no
    second open)."""
    with _atomic_file(path, keep_open=True) as (fd, _):
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def image_header(path: str | Path) -> tuple[tuple[int, ...], str]:
    """An image's shape and dtype name from its header alone (nothing is decoded).

    PNG: ``(rows, cols)`` or ``(rows, cols, channels)`` from PIL's lazy open; TIFF: the
    series' shape from tifffile. Raises InputError when the header cannot be read.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(int(n) for n in series.shape), str(np.dtype(series.dtype))
        with open(path, "rb") as fh:
            header = _png_header(fh.read(29))
        if header is not None:
            return header
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _pil_shape(img), _PIL_DTYPES.get(img.mode, "uint8")
    except FileNotFoundError:
        raise InputError("image not found", path=path) from None
    except (OSError, ValueError, SyntaxError, IndexError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read this image's header ({exc}): it may be truncated or "
                         "not an image: delete it and download or regenerate it",
                         path=path) from None


_PNG_BANDS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> bands (3, palette: ask PIL)


def _png_header(head: bytes) -> tuple[tuple[int, ...], str] | None:
    """Shape and dtype from a PNG's IHDR chunk as :func:`read_image` returns them."""
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 26:
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour = head[24], head[25]
    bands = _PNG_BANDS.get(colour)
    if bands is None:
        return None
    dtype = "uint16" if depth == 16 else "bool" if depth == 1 and bands == 1 else "uint8"
    return ((height, width) if bands == 1 else (height, width, bands)), dtype


_PIL_DTYPES = {"I;16": "uint16", "I;16B": "uint16", "I": "int32", "F": "float32", "1": "bool"}


def _pil_shape(img: Image.Image) -> tuple[int, ...]:
    width, height = img.size
    bands = len(img.getbands()) if img.mode != "P" else (
        4 if "transparency" in img.info else 3)
    return (height, width) if bands == 1 else (height, width, bands)


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> NDArray[np.generic]:
    """Read a PNG or TIFF into a numpy array, with a clear error if it cannot be read.

    The size is checked from the header first: an image of more than ``max_pixels``
    pixels per plane (a decompression bomb, or not what cellcrowd writes) is refused
    before anything is decoded. The file is opened once. Plain PNGs and TIFFs (what
    cellcrowd writes) are decoded by :mod:`cellcrowd.fastread`, the others by Pillow
    and tifffile.
    """
    path = Path(path)
    tiff = path.suffix.lower() in (".tif", ".tiff")
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size <= FAST_READ_BYTES:
                data = fh.read()
                fast = (decode_tiff if tiff else decode_png)(data, max_pixels)
                if fast is not None:
                    return fast
                fh.seek(0)
            if tiff:
                with tifffile.TiffFile(fh) as tif:
                    series = tif.series[0]
                    _check_pixels(tuple(int(n) for n in series.shape), max_pixels, path)
                    return np.asarray(series.asarray())
            header = _png_header(fh.read(29))
            _check_pixels(header[0] if header is not None else image_header(path)[0],
                          max_pixels, path)
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    img.load()
                    if img.mode == "P":
                        return np.asarray(img.convert("RGBA" if "transparency" in img.info
                                                      else "RGB"))
                    return np.asarray(img)
    except FileNotFoundError:
        raise InputError("image not found", path=path) from None
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, zlib.error,
            RuntimeError, Image.DecompressionBombError) as exc:  # RuntimeError: imagecodecs'
        raise InputError(
            f"cannot read this image ({exc}); it may be truncated or not an image: "
            "delete it and download or regenerate it",
            path=path,
        ) from None


def _check_pixels(shape: tuple[int, ...], max_pixels: int, path: Path) -> None:
    pixels = shape[0] * shape[1] if len(shape) < 3 or shape[-1] <= 4 else shape[-2] * shape[-1]
    if pixels > max_pixels:
        raise InputError(f"the image is {'x'.join(map(str, shape))}: more than {max_pixels} "
                         "pixels, refusing to decode it (a decompression bomb?)", path=path)


def write_image(path: str | Path, array: NDArray[np.generic]) -> Path:
    """Write ``array`` atomically as PNG (uint8/uint16, grey or colour) or TIFF (any dtype).

    The format follows the suffix. Integer images that do not fit a 16-bit PNG
    raise ``ValueError`` rather than wrapping.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return atomic_write_bytes(path, encode_tiff(array, _settings.tiff_level,
                                                    _settings.codec))
    if suffix == ".png":
        return atomic_write_bytes(path, encode_png(array, _settings.png_level, _settings.codec))
    raise ValueError(f"cannot write {path.name}: use a .png, .tif or .tiff name")


# -- write settings ---------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")

_CODECS = ("auto", "zlib", "isal")


@dataclasses.dataclass(frozen=True)
class WriteSettings:
    """How files are encoded and synced (see the module docstring).

    Attributes
    ----------
    durable : bool
        Sync every atomic write to disk before its rename (False inside
        :func:`deferred_sync`, whose caller syncs them all at once).
    npz_level : int
        Deflate level (0-9) of compressed ``.npz`` members; 1 is fast and within
        a few percent of the default level's size on label and raw movies.
    png_level : int
        Deflate level (0-9) of PNG files (Pillow's ``compress_level`` under zlib).
    tiff_level : int
        Deflate level (0-9) of TIFF files; 0 writes them uncompressed.
    gzip_level : int
        Gzip level (0-9) of ``.trk`` and ``.trks`` files; 3 is python-isal's highest
        (about 7 times as fast as zlib's 6, files a few percent larger).
    codec : {"auto", "zlib", "isal"}
        Deflate implementation of ``.npz`` members, PNG, TIFF and ``.trk`` files: ``"isal"``
        is python-isal (``pip install 'cellcrowd[fast]'``), several times faster
        than zlib at the same level and read by every zlib, with cellcrowd's own
        PNG and TIFF encoders (:mod:`cellcrowd.codec`); ``"zlib"`` is zlib with
        Pillow's and tifffile's encoders; ``"auto"`` is isal when installed. Its
        levels are 0-3: levels above 3 use zlib.
    """

    durable: bool = True
    npz_level: int = 1
    png_level: int = 1
    tiff_level: int = 1
    gzip_level: int = 3
    codec: str = "auto"

    def __post_init__(self) -> None:
        for name in ("npz_level", "png_level", "tiff_level", "gzip_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 9:
                raise ValueError(f"{name} must be an integer from 0 to 9, got {value!r}")
        if self.codec not in _CODECS:
            raise ValueError(f"codec must be one of {', '.join(_CODECS)}, got {self.codec!r}")


_settings = WriteSettings()


def write_settings() -> WriteSettings:
    """The settings atomic writes and encoders of this process use now."""
    return _settings


@contextlib.contextmanager
def use_write_settings(settings: WriteSettings | None = None,
                       **changes: Any) -> Iterator[WriteSettings]:
    """Use ``settings`` (default: the current ones) with ``changes`` while the block runs.

    Raises
    ------
    ValueError
        A level is not 0-9 or the codec is unknown.
    TypeError
        A change names no setting.
    """
    global _settings
    new = dataclasses.replace(settings or _settings, **changes)
    old, _settings = _settings, new
    try:
        yield new
    finally:
        _settings = old


def call_with_settings(settings: WriteSettings, fn: Callable[[T], R], task: T, *,
                       roots: tuple[Path, ...] = ()) -> R:
    """``fn(task)`` under ``settings``, with ``roots`` (the sender's :func:`confined_roots`)
    added to this process's confined folders while it runs (a worker has none of its own:
    :func:`forget_confinement`): how executors carry both to their workers."""
    with use_write_settings(settings), contextlib.ExitStack() as confined:
        for root in roots:
            confined.enter_context(confine(root))
        return fn(task)


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Atomic writes in the block (and in tasks it starts) are not synced one by one.

    Renames stay atomic; sync the files written with :func:`sync_paths` before
    recording them as done.
    """
    with use_write_settings(durable=False):
        yield


# -- .npz -------------------------------------------------------------------------------------


def write_npz(path: str | Path, arrays: Mapping[str, Any], *, compressed: bool = True,
              level: int | None = None) -> Path:
    """Write ``arrays`` as an ``.npz`` (what ``np.load`` reads) atomically, member by member.

    Each array is streamed into its zip member in blocks (no second copy in memory).
    Compressed members use ``level`` (default :attr:`WriteSettings.npz_level`) and the
    codec of :class:`WriteSettings`; timestamps are fixed, so equal arrays give equal
    bytes (:mod:`cellcrowd.npzfile`). A value with a ``write_npy(file)`` method
    (:class:`cellcrowd.export.npzstream.NpyStream`) writes its own ``.npy`` bytes.

    Raises
    ------
    ValueError
        ``level`` is not 0-9, or an array holds Python objects.
    """
    from .npzfile import write_npz as write

    return write(path, arrays, compressed=compressed, level=level)
