"""``.npy`` bytes streamed block by block (into an ``.npz`` or a tar), so a whole movie
is never in memory.

:class:`NpyReader` reads them, for ``tarfile`` (the ``.trk`` members).

:func:`cellcrowd.files.write_npz` writes a value with a ``write_npy(file)`` method
by calling it. :class:`NpyStream` is such a value: the ``.npy`` header is written
from the shape and dtype known up front, then the blocks (for example one frame,
or one position's part, at a time) as they are made. The bytes are those
``np.lib.format.write_array`` writes for the whole array, split into the same
writes (16 MiB of data each), so the deflated member is byte-identical too.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["NpyReader", "NpyStream", "StreamedArrays", "npy_header"]

#: Bytes per data write of ``np.lib.format.write_array`` (16 MiB, whole items).
_WRITE_BYTES = 16 * 1024 ** 2


def npy_header(shape: Sequence[int], dtype: np.dtype[Any]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-order array of ``shape`` and ``dtype``
    (format version 1.0, or 2.0 when the header is too long for 1.0, as numpy does)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


class NpyStream:
    """An array of ``shape`` and ``dtype`` (C order) whose data comes from ``blocks``.

    ``blocks`` yields arrays whose C-order data, one after another, is the whole
    array's (each is converted to ``dtype``); it is iterated once, when the
    ``.npz`` member is written.

    Raises
    ------
    ValueError
        (when written) The blocks hold more or fewer items than ``shape``, or
        ``dtype`` holds Python objects.
    """

    def __init__(self, shape: Sequence[int], dtype: Any, blocks: Iterable[ArrayLike]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        if self.dtype.hasobject:
            raise ValueError("an .npy stream cannot hold Python objects")
        self._blocks = blocks

    @property
    def nbytes(self) -> int:
        """Bytes of data (the header not counted)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def array(self) -> NDArray[Any]:
        """The whole array in memory (the blocks, read now, one after another).

        Raises
        ------
        ValueError
            The blocks hold more or fewer items than ``shape``.
        """
        out = np.empty(self.shape, self.dtype)
        flat, done = out.reshape(-1), 0
        for block in self._blocks:
            items = np.asarray(block).astype(self.dtype, copy=False).reshape(-1)
            if done + items.size > flat.size:
                done += items.size
                break
            flat[done:done + items.size] = items
            done += items.size
        if done != flat.size:
            raise ValueError(f"the blocks of an array of shape {self.shape} held "
                             f"{'more than ' if done > flat.size else ''}{done} items, "
                             f"not {flat.size}")
        return out

    def write_npy(self, fp: IO[bytes]) -> None:
        """Write the ``.npy`` header and then the blocks to ``fp``, in writes as numpy's."""
        fp.write(npy_header(self.shape, self.dtype))
        itemsize = self.dtype.itemsize
        chunk = max(_WRITE_BYTES // itemsize, 1) * itemsize if itemsize else 0
        pending = memoryview(bytearray(min(chunk, self.nbytes)))  # one write's bytes
        fill = written = 0
        for block in self._blocks:
            array = np.ascontiguousarray(np.asarray(block).astype(self.dtype, copy=False))
            written += array.nbytes
            if written > self.nbytes:
                break
            if not chunk or not array.nbytes:  # no bytes: numpy writes no data either
                continue
            data = array.reshape(-1).view(np.uint8).data
            if fill:
                take = min(chunk - fill, len(data))
                pending[fill:fill + take] = data[:take]
                fill, data = fill + take, data[take:]
                if fill < chunk:
                    continue
                fp.write(pending)
                fill = 0
            while len(data) >= chunk:
                fp.write(data[:chunk])
                data = data[chunk:]
            pending[:len(data)] = data
            fill = len(data)
        if written != self.nbytes:
            raise ValueError(f"the blocks of an .npy stream of shape {self.shape} {self.dtype} "
                             f"held {'more than ' if written > self.nbytes else ''}"
                             f"{written} bytes, not {self.nbytes}")
        if fill:
            fp.write(pending[:fill])


@dataclass(frozen=True)
class StreamedArrays:
    """``X`` and ``y`` of a training file as streams, and the positions they hold.

    :func:`cellcrowd.export.npz.save_npz` writes them as it writes
    :class:`cellcrowd.export.npz.TrainingArrays`.
    """

    X: NpyStream
    y: NpyStream
    positions: list[str]
    missing_positions: list[str]


class NpyReader(io.RawIOBase):
    """The bytes ``np.save`` writes for an array, read block by block (no copy in memory):
    a ``.npy`` member of a tar (``.trk``) streamed as ``tarfile`` reads it.

    The array is given as its ``shape`` and ``dtype`` (the header is written from them)
    and ``blocks``: C-ordered pieces of it (whole frames, or the whole array), pulled
    one at a time as the reader needs them.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any],
                 blocks: Iterable[NDArray[Any]]) -> None:
        self._dtype = dtype
        self._body = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._blocks = iter(blocks)
        self._pending = np.frombuffer(npy_header(shape, dtype), np.uint8)
        self._fed = 0
        self.size = self._pending.size + self._body

    @classmethod
    def of(cls, array: NDArray[Any]) -> NpyReader:
        array = np.ascontiguousarray(array)
        return cls(array.shape, array.dtype, [array])

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        block = next(self._blocks, None)
        if block is None:
            if self._fed != self._body:
                raise ValueError(f"the array's blocks hold {self._fed} bytes, its header "
                                 f"says {self._body}")
            return False
        if block.dtype != self._dtype:
            raise ValueError(f"a block is {block.dtype}, the array {self._dtype}")
        self._pending = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
        self._fed += self._pending.size
        if self._fed > self._body:
            raise ValueError(f"the array's blocks hold more than the {self._body} bytes its "
                             "header says")
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out):  # fill the buffer: tarfile wants full reads
            if self._pending.size == 0 and not self._next():
                break
            n = min(len(out) - done, self._pending.size)
            out[done:done + n] = self._pending[:n].data
            done += n
            self._pending = self._pending[n:]
        return done
