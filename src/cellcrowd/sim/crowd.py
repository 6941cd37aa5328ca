"""Simulated annotators: judgments for a job, painted from ground-truth label montages.

The emulator (:mod:`cellcrowd.sim.emulator`) serves what this module makes. Everything
is seeded: the same rows, truths, config and seed give byte-identical judgments.

What the simulated crowd does
    * a pool of workers with trust scores; a share of them is *tainted* (they later
      failed quality control);
    * each unit gets ``workers_per_unit`` judgments (a random count in the range) from
      distinct workers;
    * a share of judgments report a broken link (no annotation);
    * with ``reupload=True`` one unit is broken in every judgment and its image is
      uploaded again later as a new unit, which then gets a good annotation (the seed
      notebook's re-upload case);
    * each annotation is the truth montage painted by
      :func:`cellcrowd.sim.synthetic.paint_annotation` (ids in the red channel or as RGB
      colours, with the small holes and stray pixels of real annotators) as an RGBA PNG;
    * with ``styles``, the first workers draw as careful or careless annotators do
      (:mod:`cellcrowd.sim.annotators`: boundary noise, missed and merged cells,
      specks) before their drawing is painted.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..appen.report import montage_from_url
from ..errors import InputError
from ..files import read_image
from ..geometry import MontageLayout
from ..layout import WorkingFolder
from ..logs import read_montage_log
from .annotators import AnnotatorStyle, paint_styled

__all__ = [
    "CrowdConfig",
    "CrowdJob",
    "SimJudgment",
    "SimUnit",
    "SimWorker",
    "SourceRow",
    "crowd_from_folder",
    "encode_png",
    "read_upload_csv",
    "simulate_crowd",
]

#: ``painter(labels, *, encoding, layout, artifacts, seed) -> RGBA uint8 image``
Painter = Callable[..., NDArray[np.uint8]]
_START = datetime(2016, 1, 28, 19, 0, 0)
_PLACES = (("USA", "CA", "Fresno"), ("VEN", "A", "Caracas"), ("IND", "KA", "Bangalore"),
           ("PHL", "00", "Manila"), ("SRB", "00", "Belgrade"), ("EGY", "C", "Cairo"))


@dataclass(frozen=True)
class SourceRow:
    """One uploaded row (``identifier,image_url``)."""

    identifier: str
    image_url: str


@dataclass(frozen=True)
class SimUnit:
    """A unit (row) of the job."""

    unit_id: int
    identifier: str
    image_url: str
    montage: str
    created_at: datetime


@dataclass(frozen=True)
class SimWorker:
    """A contributor: trust score, quality-control outcome and where they work from."""

    worker_id: int
    trust: float
    tainted: bool
    channel: str
    country: str
    region: str
    city: str
    ip: str
    style: str = ""


@dataclass(frozen=True)
class SimJudgment:
    """One worker's answer: an annotation PNG, or a broken link (``annotation is None``)."""

    judgment_id: int
    unit_id: int
    worker: SimWorker
    started_at: datetime
    created_at: datetime
    broken_link: bool
    annotation: bytes | None
    golden: bool = False


@dataclass(frozen=True)
class CrowdJob:
    """A finished job: its units and every judgment, in the order they were made."""

    job_id: int
    title: str
    units: tuple[SimUnit, ...]
    judgments: tuple[SimJudgment, ...]

    @functools.cached_property
    def units_by_id(self) -> dict[int, SimUnit]:
        return {u.unit_id: u for u in self.units}

    @functools.cached_property
    def judgments_by_id(self) -> dict[int, SimJudgment]:
        return {j.judgment_id: j for j in self.judgments}


@dataclass(frozen=True)
class CrowdConfig:
    """How the simulated crowd behaves.

    Parameters
    ----------
    workers_per_unit : (int, int)
        Fewest and most judgments per unit.
    pool_size : int
        Number of distinct workers.
    trust_range : (float, float)
        Trust scores are drawn uniformly from this range.
    tainted_share : float
        Share of workers that later failed quality control.
    broken_share : float
        Share of judgments that report a broken link.
    reupload : bool
        One unit broken in every judgment, its image re-uploaded and annotated later.
    encoding : {"red", "rgb"}
        How annotation images carry cell ids.
    artifacts : bool
        Paint the small holes and stray pixels real annotators leave.
    styles : tuple of AnnotatorStyle
        Worker ``i`` (of the pool, in order) draws in ``styles[i]`` (e.g.
        :data:`~cellcrowd.sim.annotators.CAREFUL`); workers past the end draw as
        the painter does.
    """

    workers_per_unit: tuple[int, int] = (1, 3)
    pool_size: int = 12
    trust_range: tuple[float, float] = (0.6, 0.99)
    tainted_share: float = 0.15
    broken_share: float = 0.05
    reupload: bool = True
    encoding: Literal["red", "rgb"] = "red"
    artifacts: bool = True
    styles: tuple[AnnotatorStyle, ...] = ()

    def __post_init__(self) -> None:
        low, high = self.workers_per_unit
        if not 1 <= low <= high <= self.pool_size:
            raise ValueError(
                f"workers_per_unit {self.workers_per_unit} must be 1 <= low <= high <= "
                f"pool_size ({self.pool_size})"
            )
        for name in ("tainted_share", "broken_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0.0 <= self.trust_range[0] <= self.trust_range[1] <= 1.0:
            raise ValueError(f"trust_range must lie within [0, 1], got {self.trust_range}")
        if len(self.styles) > self.pool_size:
            raise ValueError(f"{len(self.styles)} styles for a pool of {self.pool_size} "
                             "workers: give at most one per worker")


def encode_png(image: NDArray[Any]) -> bytes:
    """PNG bytes of an image array (fast compression)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_upload_csv(path: str | Path) -> list[SourceRow]:
    """The rows of an upload CSV (``identifier,image_url``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("upload CSV not found: run `cellcrowd prepare` first",
                         path=path) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for column in ("identifier", "image_url"):
        if column not in (reader.fieldnames or ()):
            raise InputError(f"no {column!r} column; columns are "
                             f"{', '.join(reader.fieldnames or ()) or 'none'}",
                             path=path, column=column)
    return [SourceRow(r["identifier"], r["image_url"]) for r in reader]


def _workers(config: CrowdConfig, rng: np.random.Generator) -> list[SimWorker]:
    count = config.pool_size
    tainted = set(rng.choice(count, size=round(config.tainted_share * count), replace=False))
    first_id = int(rng.integers(30_000_000, 40_000_000))
    workers = []
    for i in range(count):
        country, region, city = _PLACES[i % len(_PLACES)]
        workers.append(SimWorker(
            worker_id=first_id + 7 * i,
            trust=round(float(rng.uniform(*config.trust_range)), 4),
            tainted=i in tainted,
            channel=("neodev", "clixsense", "instagc")[i % 3],
            country=country, region=region, city=city,
            ip=f"10.{i // 250}.{i % 250}.{int(rng.integers(1, 255))}",
            style=config.styles[i].name if i < len(config.styles) else "",
        ))
    return workers


def simulate_crowd(
    rows: Sequence[SourceRow],
    truths: Mapping[str, NDArray[Any]] | Callable[[str], NDArray[Any]],
    *,
    job_id: int,
    layout: MontageLayout | None = None,
    config: CrowdConfig = CrowdConfig(),
    seed: int = 0,
    painter: Painter | None = None,
    title: str = "cellcrowd simulated job",
) -> CrowdJob:
    """Simulate a crowd annotating ``rows``.

    Parameters
    ----------
    rows : sequence of SourceRow
        The uploaded rows (one unit each).
    truths : mapping or callable
        Ground-truth label montage of each montage name (``montage_from_url(image_url)``).
    job_id : int
        The job's id.
    layout : MontageLayout, optional
        The montage layout, passed on to the painter (so artifacts stay inside frames).
    config : CrowdConfig
        How the crowd behaves.
    seed : int
        Everything random derives from it.
    painter : callable, optional
        Default :func:`cellcrowd.sim.synthetic.paint_annotation`.

    Returns
    -------
    CrowdJob
    """
    if painter is None:
        from .synthetic import paint_annotation

        painter = paint_annotation
    load = truths if callable(truths) else truths.__getitem__
    rng = np.random.default_rng(seed)
    workers = _workers(config, rng)
    trusted = [w for w in workers if not w.tainted] or workers
    unit_base = int(rng.integers(1_000_000_000, 2_000_000_000))
    judgment_base = int(rng.integers(4_000_000_000, 5_000_000_000))
    reuploaded = int(rng.integers(len(rows))) if config.reupload and rows else -1
    units: list[SimUnit] = []
    judgments: list[SimJudgment] = []
    styles = {w.worker_id: s for w, s in zip(workers, config.styles, strict=False)}

    def judge(unit: SimUnit, worker: SimWorker, when: datetime, broken: bool) -> None:
        index = len(judgments)
        annotation = None
        if not broken:
            truth = load(unit.montage)
            style = styles.get(worker.worker_id)
            paint = (painter if style is None
                     else functools.partial(paint_styled, style=style))
            annotation = encode_png(paint(truth, encoding=config.encoding, layout=layout,
                                          artifacts=config.artifacts,
                                          seed=seed * 100_003 + index))
        took = timedelta(seconds=int(rng.integers(40, 900)))
        judgments.append(SimJudgment(judgment_base + 3 * index, unit.unit_id, worker, when,
                                     when + took, broken, annotation))

    for i, row in enumerate(rows):
        montage, _ = montage_from_url(row.image_url)
        unit = SimUnit(unit_base + i, row.identifier, row.image_url, montage,
                       _START + timedelta(seconds=i))
        units.append(unit)
        count = int(rng.integers(config.workers_per_unit[0], config.workers_per_unit[1] + 1))
        for k, w in enumerate(rng.choice(len(workers), size=count, replace=False)):
            broken = i == reuploaded or bool(rng.random() < config.broken_share)
            judge(unit, workers[int(w)], _START + timedelta(hours=1, minutes=7 * i + k), broken)
    if reuploaded >= 0:
        row = rows[reuploaded]
        unit = SimUnit(unit_base + len(rows), row.identifier, row.image_url,
                       units[reuploaded].montage, _START + timedelta(days=1))
        units.append(unit)
        worker = trusted[int(rng.integers(len(trusted)))]
        judge(unit, worker, _START + timedelta(days=1, hours=2), False)
    return CrowdJob(job_id, title, tuple(units), tuple(judgments))


def crowd_from_folder(
    wf: WorkingFolder,
    *,
    job_id: int,
    config: CrowdConfig = CrowdConfig(),
    seed: int = 0,
    painter: Painter | None = None,
) -> CrowdJob:
    """Simulate the crowd on a prepared working folder.

    Units come from ``wf.upload_csv``; truths from ``wf.truth_path(montage)`` (written by
    ``prepare(..., truth=labels)``); the layout from the montage-maker log.
    """
    rows = read_upload_csv(wf.upload_csv)
    if not rows:
        raise InputError("the upload CSV has no rows: nothing to annotate",
                         path=wf.upload_csv)
    log = read_montage_log(wf.montage_log)

    @functools.lru_cache(maxsize=4)
    def load(montage: str) -> NDArray[Any]:
        path = wf.truth_path(montage)
        if not path.exists():
            raise InputError(
                f"no ground-truth labels for montage {montage!r}: the simulated crowd needs "
                "them; run prepare with truth= (synthetic data only)",
                path=path,
            )
        return read_image(path)

    first, _ = montage_from_url(rows[0].image_url)
    layout = log.layout_for_montage(load(first).shape, source=str(wf.truth_path(first)))
    return simulate_crowd(rows, load, job_id=job_id, layout=layout, config=config, seed=seed,
                          painter=painter, title=f"cellcrowd: {wf.identifier}")
