"""The manifest: what each stage read and wrote, and whether it is still up to date.

A manifest (``wf.manifest``, JSON, written atomically) records per stage the
fingerprint of its inputs (:func:`stage_inputs`: the recorded outputs of the stages
it reads, the sizes and SHA-256 of the other files it reads, the configuration
values that matter to it, the cellcrowd version) and its outputs (paths, sizes,
SHA-256). :func:`judge` decides whether a stage must run; :func:`remove_stale` and
:func:`remove_temporary_files` clean up after earlier runs.

Beside it, ``wf.hash_cache`` keeps the SHA-256 of every file hashed, by file identity
(:func:`cellcrowd.hashes.known`), written whenever a stage ends: the next process
(``cellcrowd status``, a resumed run) takes those whose files are unchanged instead of
reading every file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..errors import UnsafePathError
from ..files import TMP_MARK, atomic_path, deferred_sync, remove_file
from ..hashes import FileDigest, forget_stale, known, remember, resolved_text, size_and_sha256
from ..layout import WorkingFolder
from .stage import SkippedUnit, Stage

__all__ = [
    "MANIFEST_VERSION",
    "Manifest",
    "digest",
    "intact",
    "judge",
    "record",
    "recorded_paths",
    "relative",
    "remove_stale",
    "remove_temporary_files",
    "resolving_once",
    "skipped_from",
    "stage_inputs",
]

logger = logging.getLogger(__name__)

#: The manifest format's version (another one: every stage is redone).
MANIFEST_VERSION = 1


#: Folder caches of :func:`resolving_once` blocks (innermost last).
_FOLDERS: list[dict[str, str]] = []


@contextlib.contextmanager
def resolving_once() -> Iterator[None]:
    """Resolve each folder once in the block (:func:`relative`, :func:`record`).

    For one stage's run: a folder turned into a symbolic link during the block would
    not be noticed.
    """
    _FOLDERS.append({})
    try:
        yield
    finally:
        _FOLDERS.pop()


def _folders() -> dict[str, str]:
    return _FOLDERS[-1] if _FOLDERS else {}


def relative(path: Path, base: Path) -> str:
    """``path`` as the manifest records it: relative to ``base`` (absolute if outside)."""
    folders = _folders()
    return _relative_text(resolved_text(path, folders), resolved_text(base, folders))


def _relative_text(text: str, root: str) -> str:
    """A resolved path relative to a resolved folder (absolute if outside)."""
    prefix = root.rstrip("/") + "/"
    if os.sep == "/" and text.startswith(prefix) and len(text) > len(prefix):
        return text[len(prefix):]
    try:
        return Path(text).relative_to(root).as_posix()
    except ValueError:
        return Path(text).as_posix()


def _abs(rel: str, base: Path) -> Path:
    path = Path(rel)
    return path if path.is_absolute() else base / path


def record(paths: Sequence[Path], base: Path) -> dict[str, list[Any]]:
    """``{path relative to base: [size, sha256]}`` of ``paths``, sorted by path."""
    folders = _folders()
    root = resolved_text(base, folders)
    named: dict[str, tuple[Path, str]] = {}
    for p in set(paths):
        text = resolved_text(p, folders)  # once per path: for its name and its hash
        named[_relative_text(text, root)] = (p, text)
    return {rel: list(size_and_sha256(named[rel][0], resolved=named[rel][1]))
            for rel in sorted(named)}


def recorded_paths(outputs: Mapping[str, Any], base: Path) -> tuple[Path, ...]:
    """The paths of a :func:`record` (or a manifest entry's ``outputs``)."""
    return tuple(_abs(rel, base) for rel in outputs)


def digest(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_HASHES_VERSION = 1


def _text_digest(pieces: Iterable[str]) -> str:
    """What :class:`Manifest` keeps of the hash cache's text, to know it unchanged (the
    text itself grows with the job)."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece.encode("utf-8"))
    return digest.hexdigest()


def _hash_cache_pieces(files: Sequence[FileDigest]) -> Iterator[str]:
    """The hash cache's text, ``{"version":1,"files":[[path, inode, size, mtime_ns,
    ctime_ns, sha256], ...]}`` compact, in pieces."""
    yield f'{{"version":{_HASHES_VERSION},"files":['
    for k, (key, sha) in enumerate(files):
        yield ("," if k else "") + json.dumps([*key, sha], separators=(",", ":"))
    yield "]}\n"


def _load_hashes(path: Path) -> str:
    """Remember the hashes an earlier run kept in ``path`` whose files are unchanged;
    return the file's :func:`_text_digest` ("" when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as exc:
        logger.info("%s is unreadable (%s): files will be hashed again", path, exc)
        return ""
    if not isinstance(data, dict) or data.get("version") != _HASHES_VERSION:
        return _text_digest([text])
    found: list[FileDigest] = []
    for item in data.get("files", []) if isinstance(data.get("files"), list) else []:
        if (isinstance(item, list) and len(item) == 6 and isinstance(item[0], str)
                and all(type(v) is int for v in item[1:5]) and isinstance(item[5], str)
                and len(item[5]) == 64):
            found.append(((item[0], item[1], item[2], item[3], item[4]), item[5]))
    remember(found, check=True)
    return _text_digest([text])


def _write_pieces(path: Path, pieces: Iterable[str]) -> None:
    """Write a text made as it is written (never held whole) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.writelines(pieces)


def _compact(value: Any) -> str:
    """``value`` as the manifest writes it: compact, keys sorted (``json``'s C encoder: a
    fifth of the time of an indented one on a large folder)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


#: The parts of a stage's entry that grow with the job (a path per file, a record per
#: unit): kept as text, parsed only when :meth:`StageEntries.entry` is asked.
_BULKY = ("inputs", "outputs", "units")


def _object_pieces(fields: Mapping[str, str]) -> Iterator[str]:
    """A JSON object from its fields' texts, keys sorted (as ``_compact`` writes it)."""
    if not fields:
        yield "{}"
        return
    for k, key in enumerate(sorted(fields)):
        yield f"{',' if k else '{'}{json.dumps(key)}:"
        yield fields[key]
    yield "}"


class StageEntries:
    """A manifest's stage entries, their bulky fields kept as compact JSON text.

    The movies stage alone records tens of thousands of files: parsed, a manifest takes
    about 2.6 times its size, and a process that holds it for a whole run (the engine,
    the QC) would grow with the movie's length. An entry's ``inputs``, ``outputs`` and
    ``units`` are kept as text and parsed when asked for (:meth:`entry`, :meth:`field`:
    a fresh copy each time); its other fields stay parsed (:meth:`head`). :meth:`text`
    gives the same bytes as ``json.dumps`` of the whole manifest, keys sorted, compact.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        data = dict(data or {"version": MANIFEST_VERSION})
        stages = data.pop("stages", None)
        self.top: dict[str, Any] = data
        self._bulky: dict[str, dict[str, str]] = {}  # stage -> bulky field -> its text
        self._heads: dict[str, Any] = {}  # stage -> the other fields (or a non-object entry)
        self._outside: dict[str, frozenset[str]] = {}
        for name, entry in (stages.items() if isinstance(stages, Mapping) else ()):
            self.put(str(name), entry)

    @classmethod
    def parse(cls, text: str) -> StageEntries:
        """The entries of a manifest's text; ``ValueError`` when it is not a JSON object."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return cls(data)

    def names(self) -> list[str]:
        """The recorded stages, in the order they were first recorded."""
        return list(self._heads)

    def entry(self, name: str) -> Any:
        """The stage's whole entry, parsed afresh (None when it is not recorded)."""
        if name not in self._heads:
            return None
        return json.loads("".join(self._entry_pieces(name)))

    def field(self, name: str, key: str) -> Any:
        """One field of the stage's entry, parsed afresh (None when it has none)."""
        head = self.head(name)
        if head is None:
            return None
        text = self._bulky[name].get(key)
        return json.loads(text) if text is not None else json.loads(_compact(head.get(key)))

    def head(self, name: str) -> dict[str, Any] | None:
        """The entry's small fields (None when the entry is not a JSON object)."""
        head = self._heads.get(name)
        return head if isinstance(head, dict) else None

    def put(self, name: str, entry: Any) -> None:
        """Replace the stage's entry."""
        if isinstance(entry, Mapping):
            self._bulky[name] = {k: _compact(entry[k]) for k in _BULKY if k in entry}
            self._heads[name] = {k: v for k, v in entry.items() if k not in _BULKY}
        else:
            self._bulky[name], self._heads[name] = {}, entry
        inputs = entry.get("inputs") if isinstance(entry, Mapping) else None
        files = inputs.get("files") if isinstance(inputs, Mapping) else None
        self._outside[name] = frozenset(
            rel for rel in (files if isinstance(files, Mapping) else ())
            if isinstance(rel, str) and os.path.isabs(rel))

    def outside_inputs(self) -> set[str]:
        """The input files the entries record outside the working folder (absolute)."""
        return set().union(*self._outside.values())

    def text(self) -> str:
        """The whole manifest as JSON (what ``_compact`` gives for it), with a newline."""
        return "".join(self.pieces())

    def pieces(self) -> Iterator[str]:
        """:meth:`text` in pieces (to write it without holding it whole)."""
        fields = {k: _compact(v) for k, v in self.top.items()}
        fields["stages"] = ""
        for k, key in enumerate(sorted(fields)):
            yield f"{',' if k else '{'}{json.dumps(key)}:{fields[key]}"
            if key == "stages":
                for n, name in enumerate(sorted(self._heads)):
                    yield f"{',' if n else '{'}{json.dumps(name)}:"
                    yield from self._entry_pieces(name)
                yield "}" if self._heads else "{}"
        yield "}\n"

    def _entry_pieces(self, name: str) -> Iterator[str]:
        head = self._heads[name]
        if not isinstance(head, dict):
            yield _compact(head)
            return
        yield from _object_pieces({**{k: _compact(v) for k, v in head.items()},
                                   **self._bulky[name]})


class Manifest:
    """The folder's manifest, read once; :meth:`set` writes it back atomically."""

    def __init__(self, wf: WorkingFolder) -> None:
        self.path = wf.manifest
        self.stages = StageEntries()
        if self.path.exists():
            try:
                loaded = StageEntries.parse(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("%s is unreadable (%s): every stage will be redone",
                               self.path, exc)
            else:
                if loaded.top.get("version") == MANIFEST_VERSION:
                    self.stages = loaded
                else:
                    logger.warning("%s is from another cellcrowd version: every stage "
                                   "will be redone", self.path)
        self.base, self.hash_cache = wf.base, wf.hash_cache
        self._kept = _load_hashes(self.hash_cache)  # (not written again unchanged)

    def entry(self, stage: str) -> dict[str, Any] | None:
        """The stage's entry (None: never recorded), parsed afresh."""
        value = self.stages.entry(stage) if self.stages.head(stage) is not None else None
        return value if isinstance(value, dict) else None

    def set(self, stage: str, entry: dict[str, Any]) -> None:
        """Replace the stage's entry and write the manifest."""
        self.stages.put(stage, entry)
        if entry.get("state") == "running":
            # not synced: lost in a crash, the stage's entry says "done" with the outputs
            # it recorded, which the next run finds changed (``intact``) and redoes
            with deferred_sync():
                _write_pieces(self.path, self.stages.pieces())
            return
        _write_pieces(self.path, self.stages.pieces())
        self.keep_hashes()  # a stage ended: its files' hashes are known

    def keep_hashes(self) -> None:
        """Keep the hashes of the files in the working folder and of the recorded inputs
        outside it (not those of other folders this process hashed)."""
        root = resolved_text(self.base).rstrip("/") + "/"
        outside = self.stages.outside_inputs()

        def ours(path: str) -> bool:
            return path.startswith(root) or path in outside

        forget_stale(ours)  # files replaced or removed since they were hashed
        files = sorted(item for item in known() if ours(item[0][0]))
        kept = _text_digest(_hash_cache_pieces(files))
        if kept != self._kept:
            with deferred_sync():  # a cache: not worth a sync (a torn one is ignored)
                _write_pieces(self.hash_cache, _hash_cache_pieces(files))
            self._kept = kept

    def outputs_digest(self, stage: str) -> str | None:
        """The digest of the stage's recorded outputs (None unless it is done)."""
        head = self.stages.head(stage)
        if head is None or head.get("state") != "done":
            return None
        return str(head.get("outputs_digest"))

    def counts(self, stage: str) -> dict[str, int]:
        """The counts the stage recorded ({} if none)."""
        return dict((self.stages.head(stage) or {}).get("counts", {}))


def stage_inputs(stage: Stage, wf: WorkingFolder, config: Config, manifest: Manifest
                 ) -> dict[str, Any]:
    """Everything a stage's result depends on (its fingerprint is their :func:`digest`)."""
    return {
        "cellcrowd": __version__,
        "stage_version": stage.version,
        "settings": stage.settings(config),
        "upstream": {name: manifest.outputs_digest(name) for name in stage.upstream},
        "files": record(stage.files(wf, config), wf.base),
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


def intact(outputs: Mapping[str, Any], base: Path) -> str | None:
    """None when every file of a :func:`record` is there with its size and hash, else why not."""
    for rel, (size, sha) in outputs.items():
        path = _abs(rel, base)
        if not path.is_file():
            return f"output {rel} is missing"
        if path.stat().st_size != size or size_and_sha256(path, _folders())[1] != sha:
            return f"output {rel} was changed"
    return None


def judge(entry: Mapping[str, Any] | None, inputs: Mapping[str, Any], base: Path
          ) -> str | None:
    """None when the stage is up to date, else the reason it must run."""
    if entry is None:
        return "never run"
    state = entry.get("state")
    if state == "failed":
        return f"failed last time: {entry.get('error', '?')}"
    if state != "done":
        return "interrupted last time"
    if entry.get("fingerprint") != digest(inputs):
        return _diff_inputs(entry.get("inputs"), inputs)
    if entry.get("retry"):
        return f"retrying: {entry['retry']}"
    return intact(entry.get("outputs", {}), base)


def skipped_from(entry: Mapping[str, Any] | None) -> tuple[SkippedUnit, ...]:
    """The skipped units an entry records."""
    if not entry:
        return ()
    return tuple(SkippedUnit(str(d["stage"]), str(d["unit"]), str(d["reason"]))
                 for d in entry.get("skipped", []))


def remove_temporary_files(base: Path) -> None:
    """Delete half-written files an interrupted run left (never under a real name)."""
    for path in base.rglob(f"*{TMP_MARK}*"):
        if path.is_file():
            logger.info("removing %s (left by an interrupted run)", path)
            remove_file(path)


def remove_stale(old: Mapping[str, Any] | None, new: Mapping[str, Any], base: Path) -> None:
    """Delete files an earlier run of the stage wrote (entry ``old``) that this run did not.

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
