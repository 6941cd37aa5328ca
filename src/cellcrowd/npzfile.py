"""Writing ``.npz`` files member by member, fixed timestamps (:func:`cellcrowd.files.write_npz`),
and reading one member back a frame at a time (:func:`read_npy_frames`).

Each array is streamed into its zip member with ``np.lib.format.write_array``; compressed
members use python-isal when installed and allowed by :class:`cellcrowd.files.WriteSettings`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .codec import isal_for
from .files import atomic_path, write_settings

__all__ = ["read_npy_frames", "read_npy_header", "write_npz"]


#: What :class:`_IsalMember` sets on zipfile's member writer (``zipfile._ZipWriteFile``,
#: CPython 3.11-3.14): without all of them, zipfile writes the member itself.
_MEMBER_STATE = ("_compressor", "_crc", "_file_size", "_compress_size", "_fileobj")


class _IsalMember:
    """A zip member written through python-isal: deflate and CRC-32 both.

    zipfile's member writer computes the CRC-32 with zlib (2.8 GB/s here against 17
    GB/s for python-isal's: 0.2 s of the benchmark's 1024^2 harvest). This does what
    its ``write`` does, with python-isal, and leaves the closing (flush, sizes, CRC in the
    headers) to it: the files are the same bytes.
    """

    def __init__(self, member: Any, isal: Any, level: int) -> None:
        self._member, self._crc32 = member, isal.crc32
        member._compressor = isal.compressobj(level, isal.DEFLATED, -15)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        member = self._member
        member._file_size += view.nbytes
        member._crc = self._crc32(view, member._crc)
        out = member._compressor.compress(view)
        member._compress_size += len(out)
        member._fileobj.write(out)
        return view.nbytes


def _writer(member: Any, compressed: bool, level: int) -> Any:
    """``member``, or a :class:`_IsalMember` over it when python-isal compresses."""
    isal = isal_for(write_settings().codec, level) if compressed else None
    if isal is None or not all(hasattr(member, a) for a in _MEMBER_STATE):
        return member
    return _IsalMember(member, isal, level)


def _write_member(zf: zipfile.ZipFile, name: str, value: Any, compressed: bool,
                  level: int) -> None:
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    # ``compress_level`` from Python 3.13, ``_compresslevel`` before
    setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel",
            level)
    info.external_attr = 0o600 << 16
    write_npy: Any = getattr(value, "write_npy", None)  # a streamed array writes itself
    array = None if callable(write_npy) else np.asanyarray(value)
    with zf.open(info, "w", force_zip64=True) as member:
        out = _writer(member, compressed, level)
        if array is None:
            write_npy(out)
        else:
            np.lib.format.write_array(out, array, allow_pickle=False)


def write_npz(path: str | Path, arrays: Mapping[str, Any], *, compressed: bool = True,
              level: int | None = None) -> Path:
    """Write ``arrays`` as an ``.npz`` (what ``np.load`` reads) atomically, member by member.

    Each array is streamed into its zip member in blocks (no second copy in
    memory). Compressed members use ``level`` (default
    :attr:`cellcrowd.files.WriteSettings.npz_level`) and its codec; a value with a
    ``write_npy(file)`` method (:class:`cellcrowd.export.npzstream.NpyStream`) writes
    its own ``.npy`` bytes into the member;
    timestamps are fixed, so equal arrays give equal bytes.

    Raises
    ------
    ValueError
        ``level`` is not 0-9, or an array holds Python objects.
    """
    level = write_settings().npz_level if level is None else level
    if not 0 <= level <= 9:
        raise ValueError(f"the npz deflate level must be 0 to 9, got {level}")
    path = Path(path)
    with (atomic_path(path) as tmp,
          zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level,
                          allowZip64=True) as zf):
        for name, value in arrays.items():
            _write_member(zf, name, value, compressed, level)
    return path


def read_npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` from the header of the ``.npy`` stream ``fh``
    (format 1.0 or 2.0), leaving ``fh`` at the start of the data."""
    version = np.lib.format.read_magic(fh)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = reader(fh)
    return tuple(int(n) for n in shape), bool(fortran), dtype


def read_npy_frames(path: str | Path, name: str) -> Iterator[np.ndarray[Any, Any]]:
    """The member ``name`` of an ``.npz``, a C-order array of 2 or more dimensions, read
    and yielded one item of its first axis (one frame) at a time: the whole array is
    never in memory, compressed or not.

    Raises
    ------
    ValueError
        The member is missing, holds Python objects, is Fortran-ordered or has fewer
        than 2 dimensions, or ends before its header's shape (truncated).
    OSError, zipfile.BadZipFile
        The file cannot be read or is not a zip archive.
    """
    with zipfile.ZipFile(path) as archive:
        try:
            member = archive.open(f"{name}.npy")
        except KeyError:
            raise ValueError(f"no array {name!r} in this .npz") from None
        with member:
            shape, fortran, dtype = read_npy_header(member)
            if dtype.hasobject or fortran or len(shape) < 2:
                raise ValueError(f"array {name!r} is not a C-order array of frames "
                                 f"(shape {shape}, dtype {dtype})")
            size = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for t in range(shape[0]):
                data = member.read(size)
                if len(data) != size:
                    raise ValueError(f"array {name!r} ends in frame {t} of {shape[0]}")
                yield np.frombuffer(data, dtype).reshape(shape[1:])
