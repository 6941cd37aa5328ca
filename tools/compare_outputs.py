"""Compare two output folders file by file: same bytes, or at least the same decoded arrays.

Usage::

    python tools/compare_outputs.py DIR_A DIR_B [--quiet]

Every file under either folder (by relative path) is compared by SHA-256. Where the
bytes differ, ``.npz``, ``.trk``/``.trks``, ``.png`` and ``.tif``/``.tiff`` files are
decoded and compared array by array (values, dtype and shape; JSON members of a
``.trk`` as data), which is what matters when only a compression setting changed.
Prints one line per file that is not byte-identical and a summary; exits 0 when every
file is byte-identical or decodes to the same arrays, 1 otherwise. Self-contained:
needs numpy, Pillow and tifffile only.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _same_array(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def _npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _tar(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            if fh is None:
                continue
            data = fh.read()
            if member.name.endswith(".npy"):
                out[member.name] = np.load(io.BytesIO(data), allow_pickle=False)
            elif member.name.endswith(".json"):
                out[member.name] = json.loads(data)
            else:
                out[member.name] = data
    return out


def _image(path: Path) -> dict[str, Any]:
    if path.suffix.lower() in (".tif", ".tiff"):
        return {"image": tifffile.imread(path)}
    with Image.open(path) as img:
        img.load()
        return {"image": np.asarray(img), "mode": img.mode}


_DECODERS = {".npz": _npz, ".trk": _tar, ".trks": _tar, ".png": _image, ".tif": _image,
             ".tiff": _image}


def same_decoded(a: Path, b: Path) -> tuple[bool, str]:
    """Whether ``a`` and ``b`` decode to the same content, and what differs if not."""
    decode = _DECODERS.get(a.suffix.lower())
    if decode is None:
        return False, "bytes differ (no decoder for this suffix)"
    try:
        da, db = decode(a), decode(b)
    except (OSError, ValueError, tarfile.TarError, json.JSONDecodeError) as exc:
        return False, f"cannot decode: {exc}"
    if sorted(da) != sorted(db):
        return False, f"keys differ: {sorted(da)} vs {sorted(db)}"
    for key in da:
        va, vb = da[key], db[key]
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            if not _same_array(va, vb):
                return False, f"{key} differs"
        elif va != vb:
            return False, f"{key} differs"
    return True, "same decoded arrays, different bytes"


def files_under(root: Path, ignore: Sequence[str] = ()) -> set[str]:
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    return {n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in ignore)}


def compare(a: Path, b: Path, quiet: bool = False, ignore: Sequence[str] = ()) -> int:
    names_a, names_b = files_under(a, ignore), files_under(b, ignore)
    counts = {"identical": 0, "decoded-equal": 0, "different": 0, "only-a": 0, "only-b": 0}
    for name in sorted(names_a | names_b):
        if name not in names_b:
            counts["only-a"] += 1
            print(f"only in {a}: {name}")
            continue
        if name not in names_a:
            counts["only-b"] += 1
            print(f"only in {b}: {name}")
            continue
        if sha256(a / name) == sha256(b / name):
            counts["identical"] += 1
            continue
        same, why = same_decoded(a / name, b / name)
        counts["decoded-equal" if same else "different"] += 1
        if not same or not quiet:
            print(f"{'same' if same else 'DIFFERENT'}: {name}: {why}")
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    bad = counts["different"] + counts["only-a"] + counts["only-b"]
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir_a", type=Path)
    parser.add_argument("dir_b", type=Path)
    parser.add_argument("--quiet", action="store_true",
                        help="do not list files that differ only in their bytes")
    parser.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                        help="leave out files whose relative path matches GLOB (repeatable), "
                             "e.g. --ignore '.cellcrowd/*' for files that carry times or ports")
    args = parser.parse_args(argv)
    for folder in (args.dir_a, args.dir_b):
        if not folder.is_dir():
            print(f"{folder}: not a folder", file=sys.stderr)
            return 2
    return compare(args.dir_a, args.dir_b, args.quiet, args.ignore)


if __name__ == "__main__":
    sys.exit(main())
