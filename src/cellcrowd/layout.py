"""Every folder and file name of a working folder, in one place.

The defaults follow the original notebook, so existing folders keep working::

    base/
      json_logs/{id}_overlapping_chopper_log.json, {id}_montage_maker_log.json
      raw/                                      full-size raw frames (natural sort)
      montages/{id}_x_XX_y_YY_montage_MM.png    what ``prepare`` made for upload
      truth/{montage}_truth.png                 ground-truth label montages (synthetic data)
      CSV/{id}_upload.csv                       identifier,image_url (uploaded rows)
      CSV/job_{job}_{type}_report.csv           the report, unzipped and renamed
      CSV/job_{job}_{type}_report_broken_links.csv, CSV/job_{job}_reupload.csv
      CSV/job_{job}_download_failures.csv, CSV/job_{job}_review.csv (``cellcrowd review``)
      {id}_annotations/{montage}_annotation.png               one judgment per unit
      {id}_annotations/judgments/{montage}_unit_{U}_judgment_{J}.png   every judgment
      {id}_labels/{montage}_labels.png          cleaned labels (uint16); downloads untouched
      {id}_labels/clean_stats.json, {id}_labels/consensus_workers.json   (clean stage)
      movies/part{N}/x_XX_y_YY/annotated/{id}_x_XX_y_YY_frame_FFF.png
      movies/part{N}/x_XX_y_YY/raw/{id}_raw_x_XX_y_YY_frame_FFF.tif
      npz/{id}_part{N}.npz, npz/{id}_full_movie.npz
      stitched/{annotated,raw}/{id}_frame_FFF.{png,tif}, stitched/lineage.json
      trk/{id}.trk     ctc/01/t000.tif, ctc/01_GT/TRA/man_track000.tif, man_track.txt
      zarr/{id}.ome.zarr, zarr/{id}.geff, zarr/{id}_part{N}.geff, zarr/{kind}_location.json
      qc/index.html, qc/{montage}_overlay.png, qc/thumbs/{montage}.png, qc/units.csv,
      qc/workers.csv    .cellcrowd/manifest.json, .cellcrowd/hashes.json

Parts are numbered from 0 (``part0`` holds montage 0, ``part1`` montage 1), as in the
original notebook, so its ``direc_name = .../movies/part1`` cell reads montage 1.
cellcrowd 0.1.0 numbered them from 1; :func:`old_part_folders` finds such folders.
Numbers are zero-padded (positions 2, frames 3, montages 2 digits) and the padding
widens, never wraps, for larger counts. Montage names are parsed in both the
padded (``x_01_y_00_montage_03``) and the older unpadded (``x_1_y_0_montage_3``) forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import cast
from urllib.parse import unquote, urlparse

from .errors import InputError
from .geometry import Position

__all__ = [
    "FIRST_PART",
    "MontageKey",
    "Padding",
    "WorkingFolder",
    "montage_name",
    "montage_of_part",
    "old_part_folders",
    "parse_montage_name",
    "parse_part_name",
    "parse_position_name",
    "parse_report_name",
    "part_name",
    "part_numbers",
    "part_of_montage",
    "position_name",
]

#: The number of the first part (``movies/part0`` holds montage 0, as in the original).
FIRST_PART = 0

_PART_RE = re.compile(r"^part(\d+)$")
_POSITION_RE = re.compile(r"^x_(\d+)_y_(\d+)$")
_REPORT_RE = re.compile(r"^job_(?P<job>.+?)_(?P<type>full|aggregated|json)_report\.csv$")
_ANNOTATIONS_SUFFIX = "_annotations"
_MONTAGE_RE = re.compile(r"^(?P<identifier>.+)_x_(?P<x>\d+)_y_(?P<y>\d+)_montage_(?P<m>\d+)$")


def _width(count: int, minimum: int) -> int:
    return max(minimum, len(str(max(count - 1, 0))))


@dataclass(frozen=True)
class Padding:
    """Zero-padding widths for positions, frames and montage numbers.

    >>> Padding.for_counts(num_x=4, num_y=120, frames=1500, montages=3)
    Padding(position=3, frame=4, montage=2)
    """

    position: int = 2
    frame: int = 3
    montage: int = 2

    @classmethod
    def for_counts(
        cls, *, num_x: int = 1, num_y: int = 1, frames: int = 1, montages: int = 1
    ) -> Padding:
        """The narrowest widths (never below the defaults) that fit these counts."""
        return cls(
            position=_width(max(num_x, num_y), 2),
            frame=_width(frames, 3),
            montage=_width(montages, 2),
        )


@dataclass(frozen=True, order=True)
class MontageKey:
    """What a montage's name says: identifier, tile position, montage number (0-based)."""

    identifier: str
    x: int
    y: int
    montage: int

    @property
    def position(self) -> Position:
        return Position(self.x, self.y)

    @property
    def part(self) -> int:
        """The part this montage becomes in ``movies/`` (see :func:`part_of_montage`)."""
        return part_of_montage(self.montage)


def position_name(pos: Position, padding: Padding = Padding()) -> str:
    """``x_01_y_02``."""
    w = padding.position
    return f"x_{pos.x:0{w}d}_y_{pos.y:0{w}d}"


def part_of_montage(montage: int) -> int:
    """The part number of montage ``montage`` (0-based): ``part0`` holds montage 0.

    >>> part_of_montage(1)
    1
    """
    return montage + FIRST_PART


def montage_of_part(part: int) -> int:
    """The montage number a part holds (inverse of :func:`part_of_montage`)."""
    return part - FIRST_PART


def part_numbers(montages: int) -> range:
    """The part numbers of a movie cut into ``montages`` montages per position.

    >>> list(part_numbers(3))
    [0, 1, 2]
    """
    return range(FIRST_PART, FIRST_PART + montages)


#: The folder of cellcrowd's own bookkeeping in a working folder.
STATE_FOLDER = ".cellcrowd"


def part_name(part: int) -> str:
    """``part0`` (parts count from 0, as in the original notebook)."""
    return f"part{part}"


def parse_part_name(name: str) -> int | None:
    """The number of a ``part{N}`` folder name, None for other names."""
    match = _PART_RE.match(name)
    return int(match[1]) if match else None


def parse_position_name(name: str) -> Position | None:
    """The position of an ``x_XX_y_YY`` folder name (any zero padding), None for others.

    >>> parse_position_name("x_010_y_00"), parse_position_name("raw")
    (Position(x=10, y=0), None)
    """
    match = _POSITION_RE.match(name)
    return Position(int(match[1]), int(match[2])) if match else None


def parse_report_name(name: str) -> tuple[str, str] | None:
    """``(job id, report type)`` of a report file name ``job_{job}_{type}_report.csv``
    (types ``full``, ``aggregated``, ``json``), None for other names.

    >>> parse_report_name("job_1363594_full_report.csv")
    ('1363594', 'full')
    """
    match = _REPORT_RE.match(name)
    return (match["job"], match["type"]) if match else None


def montage_name(key: MontageKey, padding: Padding = Padding()) -> str:
    """``{identifier}_x_XX_y_YY_montage_MM`` (no suffix).

    >>> montage_name(MontageKey("exp", 1, 0, 3))
    'exp_x_01_y_00_montage_03'
    """
    return (
        f"{key.identifier}_{position_name(key.position, padding)}"
        f"_montage_{key.montage:0{padding.montage}d}"
    )


def parse_montage_name(name: str) -> MontageKey:
    """Parse a montage name, file name or URL (padded or unpadded numbers).

    >>> parse_montage_name("https://host/bucket/exp_x_1_y_0_montage_3.png")
    MontageKey(identifier='exp', x=1, y=0, montage=3)
    >>> parse_montage_name("exp_x_01_y_00_montage_03_annotation.png").montage
    3
    """
    stem = _stem(name)
    for suffix in ("_annotation", "_labels"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _MONTAGE_RE.match(stem)
    if match is None:
        raise InputError(
            f"{name!r} is not a montage name: expected "
            "'{identifier}_x_{X}_y_{Y}_montage_{M}' (as written by prepare)"
        )
    return MontageKey(match["identifier"], int(match["x"]), int(match["y"]), int(match["m"]))


def _stem(name: str) -> str:
    if "://" in name:
        name = unquote(urlparse(name).path)
    base = PurePosixPath(name.replace("\\", "/")).name
    for suffix in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


@dataclass(frozen=True)
class WorkingFolder:
    """The names of everything in one working folder.

    Parameters
    ----------
    base : Path
        The working folder (``base_dir`` in the notebook).
    identifier : str
        The identifier given when the montages were prepared.
    raw : Path, optional
        Folder of full-size raw frames; default ``base/raw``.
    padding : Padding
        Zero-padding widths; see :meth:`with_counts`.

    Examples
    --------
    >>> wf = WorkingFolder(Path("/data"), "exp")
    >>> wf.annotated_frame(1, Position(0, 2), 7).as_posix()
    '/data/movies/part1/x_00_y_02/annotated/exp_x_00_y_02_frame_007.png'
    >>> wf.part_dir(part_of_montage(0)).name
    'part0'
    """

    base: Path
    identifier: str
    raw: Path = field(default=None)  # type: ignore[assignment]
    padding: Padding = Padding()
    annotations: Path = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.identifier or "/" in self.identifier or "\\" in self.identifier:
            raise InputError(
                f"identifier {self.identifier!r} cannot be used in file names: use letters, "
                "digits, '-' and '_'"
            )
        object.__setattr__(self, "base", Path(self.base))
        if cast("Path | None", self.raw) is None:
            object.__setattr__(self, "raw", self.base / "raw")
        else:
            object.__setattr__(self, "raw", Path(self.raw))
        if cast("Path | None", self.annotations) is None:
            object.__setattr__(self, "annotations",
                               self.base / f"{self.identifier}{_ANNOTATIONS_SUFFIX}")

    @classmethod
    def from_annotations_folder(cls, folder: str | Path) -> WorkingFolder:
        """The working folder of an annotations folder ``{base}/{identifier}_annotations``.

        Raises
        ------
        InputError
            The folder's name is not ``{identifier}_annotations``.
        """
        folder = Path(folder)
        if not folder.name.endswith(_ANNOTATIONS_SUFFIX) or folder.name == _ANNOTATIONS_SUFFIX:
            raise InputError(
                "the annotations folder must be named '{identifier}_annotations' (inside the "
                "working folder), as save_annotations_from_csv makes it",
                path=folder,
            )
        return cls(folder.parent, folder.name[: -len(_ANNOTATIONS_SUFFIX)], annotations=folder)

    def with_counts(
        self, *, num_x: int = 1, num_y: int = 1, frames: int = 1, montages: int = 1
    ) -> WorkingFolder:
        """The same folder with padding widened to fit these counts."""
        padding = Padding.for_counts(num_x=num_x, num_y=num_y, frames=frames, montages=montages)
        return replace(self, padding=padding)

    # -- logs and CSVs ------------------------------------------------------------------

    @property
    def json_logs(self) -> Path:
        return self.base / "json_logs"

    @property
    def chopper_log(self) -> Path:
        return self.json_logs / f"{self.identifier}_overlapping_chopper_log.json"

    @property
    def montage_log(self) -> Path:
        """The montage-maker log; the older ``{id}_montage_maker.json`` name is found too."""
        new = self.json_logs / f"{self.identifier}_montage_maker_log.json"
        old = self.json_logs / f"{self.identifier}_montage_maker.json"
        return old if not new.exists() and old.exists() else new

    @property
    def csv(self) -> Path:
        return self.base / "CSV"

    @property
    def upload_csv(self) -> Path:
        return self.csv / f"{self.identifier}_upload.csv"

    def report_csv(self, job_id: int | str, report_type: str = "full") -> Path:
        return self.csv / f"job_{job_id}_{report_type}_report.csv"

    def report_zip(self, job_id: int | str, report_type: str = "full") -> Path:
        return self.csv / f"job_{job_id}_{report_type}_report.zip"

    def broken_links_csv(self, job_id: int | str, report_type: str = "full") -> Path:
        return self.csv / f"job_{job_id}_{report_type}_report_broken_links.csv"

    def reupload_csv(self, job_id: int | str) -> Path:
        return self.csv / f"job_{job_id}_reupload.csv"

    def failures_csv(self, job_id: int | str) -> Path:
        return self.csv / f"job_{job_id}_download_failures.csv"

    def report_problems_csv(self, job_id: int | str) -> Path:
        """Report rows that could not be used, each with its reason."""
        return self.csv / f"job_{job_id}_report_problems.csv"

    # -- montages, annotations, labels --------------------------------------------------

    @property
    def montages(self) -> Path:
        return self.base / "montages"

    def montage_name(self, key: MontageKey) -> str:
        return montage_name(key, self.padding)

    def montage_path(self, key: MontageKey) -> Path:
        return self.montages / f"{self.montage_name(key)}.png"

    @property
    def truth(self) -> Path:
        """Ground-truth label montages (synthetic data and the emulator only)."""
        return self.base / "truth"

    def truth_path(self, montage: str) -> Path:
        return self.truth / f"{montage}_truth.png"

    def annotation_path(self, montage: str) -> Path:
        """The seed's single annotation of a montage: ``{montage}_annotation.png``."""
        return self.annotations / f"{montage}_annotation.png"

    @property
    def judgments(self) -> Path:
        return self.annotations / "judgments"

    def judgment_path(self, montage: str, unit: str | int, judgment: str | int) -> Path:
        """One file per judgment, so several annotators never overwrite each other."""
        return self.judgments / f"{montage}_unit_{unit}_judgment_{judgment}.png"

    @property
    def labels(self) -> Path:
        return self.base / f"{self.identifier}_labels"

    def label_path(self, montage: str) -> Path:
        """Cleaned labels of a montage (uint16 PNG); the download is never overwritten."""
        return self.labels / f"{montage}_labels.png"

    # -- movies ---------------------------------------------------------------------------

    @property
    def movies(self) -> Path:
        return self.base / "movies"

    def part_dir(self, part: int) -> Path:
        return self.movies / part_name(part)

    def part_folders(self) -> dict[int, Path]:
        """The ``movies/part{N}`` folders that exist, by part number."""
        if not self.movies.is_dir():
            return {}
        found = {parse_part_name(p.name): p for p in self.movies.iterdir() if p.is_dir()}
        return {n: p for n, p in sorted(found.items(), key=lambda kv: kv[0] or 0)
                if n is not None}

    def position_dir(self, part: int, pos: Position) -> Path:
        return self.part_dir(part) / position_name(pos, self.padding)

    def annotated_dir(self, part: int, pos: Position) -> Path:
        return self.position_dir(part, pos) / "annotated"

    def raw_tile_dir(self, part: int, pos: Position) -> Path:
        return self.position_dir(part, pos) / "raw"

    def annotated_frame(self, part: int, pos: Position, frame: int) -> Path:
        name = position_name(pos, self.padding)
        return (self.annotated_dir(part, pos)
                / f"{self.identifier}_{name}_frame_{frame:0{self.padding.frame}d}.png")

    def raw_tile_frame(self, part: int, pos: Position, frame: int) -> Path:
        name = position_name(pos, self.padding)
        return (self.raw_tile_dir(part, pos)
                / f"{self.identifier}_raw_{name}_frame_{frame:0{self.padding.frame}d}.tif")

    # -- exports --------------------------------------------------------------------------

    @property
    def npz(self) -> Path:
        return self.base / "npz"

    def npz_part(self, part: int) -> Path:
        return self.npz / f"{self.identifier}_{part_name(part)}.npz"

    @property
    def npz_full_movie(self) -> Path:
        return self.npz / f"{self.identifier}_full_movie.npz"

    @property
    def stitched(self) -> Path:
        return self.base / "stitched"

    def stitched_frame(self, kind: str, frame: int) -> Path:
        """``stitched/annotated/{id}_frame_FFF.png`` or ``stitched/raw/{id}_frame_FFF.tif``."""
        if kind not in ("annotated", "raw"):
            raise ValueError(f"kind must be 'annotated' or 'raw', got {kind!r}")
        suffix = ".png" if kind == "annotated" else ".tif"
        return (self.stitched / kind
                / f"{self.identifier}_frame_{frame:0{self.padding.frame}d}{suffix}")

    @property
    def trk(self) -> Path:
        return self.base / "trk" / f"{self.identifier}.trk"

    @property
    def ctc(self) -> Path:
        return self.base / "ctc"

    @property
    def zarr_exports(self) -> Path:
        """The default folder of the OME-Zarr and GEFF exports: ``zarr/``."""
        return self.base / "zarr"

    @property
    def omezarr_name(self) -> str:
        """The stitched movie's OME-Zarr store: ``{id}.ome.zarr``."""
        return f"{self.identifier}.ome.zarr"

    def geff_name(self, part: int | None = None) -> str:
        """The lineage's GEFF store: ``{id}.geff``, or ``{id}_partN.geff`` for one part."""
        return f"{self.identifier}.geff" if part is None else \
            f"{self.identifier}_{part_name(part)}.geff"

    def export_receipt(self, kind: str) -> Path:
        """Where an export went (a path or URL) and its counts: ``zarr/{kind}_location.json``."""
        return self.zarr_exports / f"{kind}_location.json"

    @property
    def qc(self) -> Path:
        return self.base / "qc"

    @property
    def state(self) -> Path:
        """Folder for cellcrowd's own bookkeeping (manifest)."""
        return self.base / STATE_FOLDER

    def stitch_part_store(self, part: int) -> Path:
        """A stitched part kept for the next run: ``.cellcrowd/stitch/partN.stitched``."""
        return self.state / "stitch" / f"{part_name(part)}.stitched"

    @property
    def manifest(self) -> Path:
        return self.state / "manifest.json"

    @property
    def hash_cache(self) -> Path:
        """The SHA-256 of the files the last run read and wrote, by file identity:
        ``.cellcrowd/hashes.json`` (:mod:`cellcrowd.hashes`)."""
        return self.state / "hashes.json"

    @property
    def watch_state(self) -> Path:
        """What ``cellcrowd watch`` last harvested: ``.cellcrowd/watch.json``."""
        return self.state / "watch.json"

    @property
    def webhooks_seen(self) -> Path:
        """Webhooks already acted on (JSON lines): ``.cellcrowd/webhooks.jsonl``."""
        return self.state / "webhooks.jsonl"

    @property
    def resent(self) -> Path:
        """Rows already sent back to the job: ``.cellcrowd/resent.json``."""
        return self.state / "resent.json"

    def resend_csv(self, job_id: int | str) -> Path:
        """Rows to send back to the job (``identifier,image_url``): ``CSV/job_{id}_resend.csv``."""
        return self.csv / f"job_{job_id}_resend.csv"

    @property
    def stitched_lineage(self) -> Path:
        """The stitched movie's DeepCell lineage: ``stitched/lineage.json``."""
        return self.stitched / "lineage.json"

    def montage_log_in(self, folder: str | Path) -> Path:
        """The montage-maker log in another logs ``folder`` (the older name is found too)."""
        new = Path(folder) / f"{self.identifier}_montage_maker_log.json"
        old = Path(folder) / f"{self.identifier}_montage_maker.json"
        return old if not new.exists() and old.exists() else new

    @property
    def qc_index(self) -> Path:
        """The QC report page: ``qc/index.html``."""
        return self.qc / "index.html"

    def qc_overlay(self, montage: str) -> Path:
        """A QC overlay image of a montage: ``qc/{montage}_overlay.png``."""
        return self.qc / f"{montage}_overlay.png"

    def qc_thumbnail(self, montage: str) -> Path:
        """A montage's small overlay on the QC page: ``qc/thumbs/{montage}.png``."""
        return self.qc / "thumbs" / f"{montage}.png"

    @property
    def qc_units_csv(self) -> Path:
        """The QC page's unit table as CSV: ``qc/units.csv``."""
        return self.qc / "units.csv"

    @property
    def qc_workers_csv(self) -> Path:
        """The QC page's worker table as CSV: ``qc/workers.csv``."""
        return self.qc / "workers.csv"

    def judgment_label_path(self, montage: str, unit: str | int, judgment: str | int) -> Path:
        """Cleaned labels of one judgment, before the consensus of a montage's judgments:
        ``{id}_labels/judgments/{montage}_unit_{U}_judgment_{J}_labels.png``."""
        return self.labels / "judgments" / f"{montage}_unit_{unit}_judgment_{judgment}_labels.png"

    def consensus_report_path(self, montage: str) -> Path:
        """What the consensus of a montage's judgments did (JSON), next to its labels:
        ``{id}_labels/{montage}_consensus.json``."""
        return self.labels / f"{montage}_consensus.json"

    def review_csv(self, job_id: int | str) -> Path:
        """Units that need another judgment (``cellcrowd review``), in the re-upload CSV's
        format (``identifier,image_url``): ``CSV/job_{job}_review.csv``."""
        return self.csv / f"job_{job_id}_review.csv"

    @property
    def clean_stats_path(self) -> Path:
        """What cleaning did per montage (JSON, written by the clean stage):
        ``{id}_labels/clean_stats.json``.

        ``{"version": 1, "montages": {MONTAGE: {"cells", "specks_removed",
        "pixels_removed", "holes_filled", "pixels_filled", "judgments"}}}``: counts of
        :class:`cellcrowd.labels.CleanStats`, summed over the montage's cleaned
        judgments (``judgments`` of them); montages that could not be cleaned are absent.
        """
        return self.labels / "clean_stats.json"

    @property
    def consensus_workers_path(self) -> Path:
        """Job-wide worker reliability and unit agreement of the consensus (JSON):
        ``{id}_labels/consensus_workers.json``; format in :mod:`cellcrowd.jobconsensus`."""
        return self.labels / "consensus_workers.json"

    @property
    def npz_stitched_movie(self) -> Path:
        """The stitched movie as training data: ``npz/{id}_stitched_movie.npz``."""
        return self.npz / f"{self.identifier}_stitched_movie.npz"


def old_part_folders(wf: WorkingFolder, montages: int) -> list[Path]:
    """Part folders numbered from 1, as cellcrowd 0.1.0 wrote them, else ``[]``.

    With ``montages`` montages per position the parts are ``part0`` to
    ``part{montages - 1}``: a ``part{montages}`` folder (or any higher) can only
    come from the old numbering, where montage ``m`` went to ``part{m + 1}``.
    The old folders are returned (every ``part{N}`` folder) so a caller can say
    which ones to remove.
    """
    folders = wf.part_folders()
    if any(n >= FIRST_PART + montages for n in folders):
        return list(folders.values())
    return []
