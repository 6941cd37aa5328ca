"""Where the zarr exports go: a local folder or an fsspec URL, and the optional extra.

The OME-Zarr and GEFF exports (:mod:`cellcrowd.export.omezarr`,
:mod:`cellcrowd.export.geff`) need ``pip install 'cellcrowd[zarr]'``; the modules
are imported only when an export runs. A local store is written beside its final
name and renamed onto it when complete; a URL (``s3://bucket/prefix``,
``gs://…``, ``file://…``) is written in place with ``storage_options`` passed to
fsspec (e.g. ``{"endpoint_url": "http://127.0.0.1:9000"}``; credentials come from
the usual environment variables, never from the configuration).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CellcrowdError, InputError
from ..files import TMP_MARK, atomic_write_text

__all__ = ["ExportTarget", "require", "zarr_extra_installed"]

_EXTRA_MODULES = ("zarr", "ome_zarr", "geff")


def zarr_extra_installed() -> bool:
    """True when the ``cellcrowd[zarr]`` extra's modules can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in _EXTRA_MODULES)


def require(module: str) -> Any:
    """Import ``module`` of the ``zarr`` extra, or say how to install it.

    Raises
    ------
    CellcrowdError
        The module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CellcrowdError(
            f"the OME-Zarr and GEFF exports need {module.split('.')[0]!r} ({exc}): "
            "pip install 'cellcrowd[zarr]', or turn the export off in [outputs]") from None


def _is_url(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class ExportTarget:
    """The folder (or URL) that holds the zarr exports, and the fsspec options for a URL."""

    location: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return _is_url(self.location)

    def url(self, name: str) -> str:
        """The location of the store ``name`` (a path or a URL)."""
        if self.remote:
            return self.location.rstrip("/") + "/" + name
        return str(Path(self.location) / name)

    def open_group(self, name: str, *, mode: str = "r") -> Any:
        """The zarr group of store ``name``, through fsspec for a URL."""
        zarr = require("zarr")
        return zarr.open_group(self.store(self.url(name), read_only=mode == "r"), mode=mode)

    def store(self, location: str, *, read_only: bool = False) -> Any:
        """A zarr store for a path or URL (a URL opens with ``storage_options``)."""
        zarr = require("zarr")
        if _is_url(location):
            return zarr.storage.FsspecStore.from_url(
                location, storage_options=dict(self.storage_options) or None,
                read_only=read_only)
        return zarr.storage.LocalStore(location, read_only=read_only)

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Any]:
        """Yield a writable store for ``name``; a local one is renamed into place at the end.

        Raises
        ------
        InputError
            The local location exists and is a file.
        """
        if self.remote:
            yield self.store(self.url(name))
            return
        final = Path(self.location) / name
        if final.is_file():
            raise InputError("expected a folder for the zarr store, found a file: remove it",
                             path=final)
        tmp = final.with_name(f".{final.name}{TMP_MARK}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield self.store(str(tmp))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def files(self, name: str) -> list[Path]:
        """Every file of the local store ``name`` ([] for a URL)."""
        root = Path(self.url(name))
        if self.remote or not root.is_dir():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file())

    def receipt(self, path: Path, name: str, counts: Mapping[str, int]) -> Path:
        """Write ``path``: where store ``name`` went and what it holds (JSON, atomic).

        A local store inside the receipt's folder is named relative to it, so that the
        working folder can move (and a resumed run writes the same bytes).
        """
        location = self.url(name)
        if not self.remote:
            with contextlib.suppress(ValueError):
                location = Path(location).resolve().relative_to(
                    path.parent.resolve()).as_posix()
        return atomic_write_text(path, json.dumps(
            {"location": location, "remote": self.remote, **counts},
            indent=1, sort_keys=True) + "\n")
