"""Per-unit records inside a stage's manifest entry: redo only the units whose inputs changed.

A stage that must run (some of its inputs changed) may still find most of its work
done: a montage whose annotation did not change is cleaned into the same bytes. Its
body asks :class:`UnitRecords` (``ctx.units``) per unit of work:

``ctx.units.fresh(unit, key, outputs)``
    True when the last committed run of the stage recorded ``unit`` with the same
    ``key`` and its recorded outputs are still there with the recorded sizes and
    SHA-256 (and, when ``outputs`` is given, are exactly those files). The stage then
    reuses the files (it still names them among its outputs) instead of redoing them.
``ctx.units.done(unit, key, outputs, data)``
    Records ``unit`` as made from ``key``, with its output files and, optionally, a
    little JSON-able ``data`` the stage wants back when it reuses the unit
    (:meth:`UnitRecords.data`, e.g. the statistics the work returned).

``key`` is anything JSON-able that says what the unit's result depends on (hashes of
its input files, from :meth:`UnitRecords.file_digest`, and per-unit parameters); the
engine mixes in the stage's settings, its version and the cellcrowd version, so a
change in any of them makes every unit stale.

Records live in the stage's manifest entry, ``"units": {unit: {"key": digest,
"outputs": [path relative to the folder, ...], "data": ...}}`` (sizes and hashes are
those of the entry's ``"outputs"``), and are written with the entry, at the stage's
commit, after its outputs are synced: a run killed halfway leaves the earlier run's
records, which still describe files on disk or fail the hash check. A forced stage
finds no unit fresh. A manifest without ``"units"`` (an older cellcrowd) means no
unit is fresh; older code reading a manifest with them ignores the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .manifest import digest, intact, record, relative

__all__ = ["UnitRecords"]


class UnitRecords:
    """The unit records of one run of one stage (see the module docstring).

    Parameters
    ----------
    entry : mapping, optional
        The stage's manifest entry from its last run (its ``"units"`` and ``"outputs"``).
    salt : str
        Mixed into every key: a digest of the stage's settings and versions.
    base : Path
        The working folder (recorded paths are relative to it).
    forced : bool
        The stage is forced: no unit is fresh.
    """

    def __init__(self, entry: Mapping[str, Any] | None, salt: str, base: Path,
                 forced: bool = False) -> None:
        old = (entry or {}).get("units") if not forced else None
        self._old: Mapping[str, Any] = old if isinstance(old, Mapping) else {}
        outputs = (entry or {}).get("outputs")
        self._sizes: Mapping[str, Any] = outputs if isinstance(outputs, Mapping) else {}
        self._salt, self._base = salt, base
        self._new: dict[str, dict[str, Any]] = {}
        self._paths: dict[str, list[Path]] = {}
        self.redone = 0
        self.reused = 0

    def _key(self, key: Any) -> str:
        return digest({"stage": self._salt, "unit": key})

    def file_digest(self, paths: Sequence[Path]) -> str:
        """A digest of the files' names (relative to the folder), sizes and SHA-256.

        Hashes are computed once per process while a file is unchanged (the manifest's
        cache), so hashing files the stage's fingerprint already hashed costs nothing.
        """
        return digest(record([Path(p) for p in paths], self._base))

    def recorded(self, unit: str) -> bool:
        """True when the last committed run recorded ``unit`` (and the stage is not
        forced): only then can it be :meth:`fresh`, so only then is its key needed first."""
        return isinstance(self._old.get(unit), Mapping)

    def fresh(self, unit: str, key: Any, outputs: Sequence[Path] | None = None) -> bool:
        """True when ``unit`` was recorded with ``key`` and its outputs are intact.

        ``outputs``, when given, must be exactly the recorded output files. A fresh unit
        is carried over into this run's records (and counted as reused).
        """
        rec = self._old.get(unit)
        if not isinstance(rec, Mapping) or rec.get("key") != self._key(key):
            return False
        recorded = rec.get("outputs")
        if not isinstance(recorded, list):
            return False
        if outputs is not None and sorted(recorded) != sorted(
                relative(Path(p), self._base) for p in outputs):
            return False
        sizes = {rel: self._sizes.get(rel) for rel in recorded}
        if any(v is None for v in sizes.values()) or intact(sizes, self._base) is not None:
            return False
        if unit not in self._new:
            self.reused += 1
        self._new[unit] = dict(rec)
        self._paths[unit] = [self._base / rel for rel in recorded]
        return True

    def data(self, unit: str) -> Any:
        """The ``data`` recorded with ``unit`` (None when none, or the unit is unknown)."""
        rec = self._new.get(unit) or self._old.get(unit)
        return rec.get("data") if isinstance(rec, Mapping) else None

    def done(self, unit: str, key: Any, outputs: Sequence[Path], data: Any = None) -> None:
        """Record ``unit`` as made from ``key`` into ``outputs`` (committed with the stage)."""
        if unit not in self._new:
            self.redone += 1
        rec: dict[str, Any] = {"key": self._key(key),
                               "outputs": sorted({relative(Path(p), self._base)
                                                  for p in outputs})}
        if data is not None:
            rec["data"] = data
        self._new[unit] = rec
        self._paths[unit] = [Path(p) for p in outputs]

    def paths(self) -> list[Path]:
        """Every output file of the units recorded in this run (fresh or done)."""
        return [p for paths in self._paths.values() for p in paths]

    def records(self) -> dict[str, dict[str, Any]]:
        """The records to commit, by unit name."""
        return {unit: self._new[unit] for unit in sorted(self._new)}

    @property
    def counts(self) -> dict[str, int]:
        """``{"redone": units done in this run, "reused": units found fresh}``."""
        return {"redone": self.redone, "reused": self.reused}
