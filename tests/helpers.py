"""Helpers shared by the tests (import them: ``from helpers import ...``).

Fixtures live in ``conftest.py``; plain functions live here, once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcrowd.config import Config
from cellcrowd.pipeline import Context, Stage, StageOutput, StageTable
from cellcrowd.pipeline.stage import OpenFolder
from cellcrowd.sim.paint import PaintReport


def expected_after_cleaning(truth: NDArray[np.integer], report: PaintReport) -> NDArray[np.int64]:
    """``truth`` with every painted artifact as a correct cleaning leaves it.

    Each :class:`~cellcrowd.sim.paint.Artifact` carries its fate for the thresholds it
    was painted for: kept specks keep their id, removed ones and unfilled holes are
    background, filled ones are the cell around them. Ids are the painting's; compare
    with ``assert_same_up_to_relabel``.
    """
    out = np.asarray(truth).astype(np.int64)
    for artifact in report.artifacts:
        out[artifact.pixels()] = artifact.expected_value
    return out


def file_hashes(base: Path, *, skip_folders: Collection[str] = (".cellcrowd",),
                skip_names: Collection[str] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``base`` by relative path, skipping folders and names.

    The default skips cellcrowd's own bookkeeping (``.cellcrowd/``: lock, manifest).
    """
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*"))
            if p.is_file() and p.name not in skip_names
            and not set(skip_folders) & set(p.relative_to(base).parts)}


def toy_table(calls: list[str]) -> StageTable:
    """One stage: ``in/*.txt`` -> ``out/*.txt`` upper-cased, one unit per file."""

    def body(ctx: Context) -> StageOutput:
        outputs = []
        for src in sorted((ctx.wf.base / "in").glob("*.txt")):
            dst = ctx.wf.base / "out" / src.name
            key = ctx.units.file_digest([src])
            if not ctx.units.fresh(src.name, key, [dst]):
                calls.append(src.name)
                dst.parent.mkdir(exist_ok=True)
                dst.write_text(src.read_text().upper() + "!" * ctx.config.clean.min_size)
                ctx.units.done(src.name, key, [dst])
            outputs.append(dst)
        return StageOutput(outputs)

    def files(wf: Any, config: Config) -> list[Path]:
        return sorted((wf.base / "in").glob("*.txt"))

    stage = Stage("upper", (), body, settings=lambda c: {"bangs": c.clean.min_size},
                  files=files)
    return StageTable((stage,), lambda config: OpenFolder(config.working_folder()))
