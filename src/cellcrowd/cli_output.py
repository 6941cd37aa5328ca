"""What the ``cellcrowd`` command shows: console, progress bars, log lines and tables.

:class:`Ui` prints (nothing under ``-q``), :class:`RichProgress` draws one bar per
stage, :func:`logging_to` sends cellcrowd's log to the console while a command runs,
:func:`show_summary` and :func:`show_status` draw a run's and a folder's tables.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RichProgress", "Ui", "logging_to", "show_status", "show_summary"]


class Ui:
    """Console output: nothing under -q; rich progress bars and tables otherwise."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def print(self, *objects: Any, soft_wrap: bool = False) -> None:
        """Print (never interpreting ``[...]`` in text as markup), unless quiet.

        ``soft_wrap``: one line however long (for lines scripts read, e.g. a URL).
        """
        if not self.quiet:
            self.out.print(*objects, markup=False, highlight=False, soft_wrap=soft_wrap)


class RichProgress:
    """:class:`cellcrowd.pipeline.Progress` drawn as one rich bar per stage."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bars = Progress(TextColumn("{task.description:>8}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                             transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, stage: str, total: int | None) -> None:
        if stage in self.tasks:
            self.bars.update(self.tasks[stage], total=total)
        else:
            self.tasks[stage] = self.bars.add_task(stage, total=total)

    def advance(self, stage: str, count: int) -> None:
        if stage in self.tasks:
            self.bars.advance(self.tasks[stage], count)

    def finish(self, run: Any) -> None:
        task = self.tasks.get(run.name)
        if task is not None:
            done = self.bars.tasks[self.tasks[run.name]].completed
            self.bars.update(task, total=max(done, 1), completed=max(done, 1))


@contextlib.contextmanager
def logging_to(console: Any, verbose: int, quiet: bool) -> Iterator[None]:
    """Send cellcrowd's log to ``console`` (rich) while the command runs, then restore."""
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else (
        logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger("cellcrowd")
    saved = (root.level, root.propagate)
    handler = RichHandler(console=console, show_path=False, show_time=verbose > 1,
                          markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]


# -- output ----------------------------------------------------------------------------------


def _counts_text(counts: Any) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())


def _relative(path: Path, base: Path) -> Path:
    with contextlib.suppress(ValueError):
        return path.relative_to(base)
    return path


def _qc_page(stage: Any) -> Path | None:
    """The QC report's page among a stage's outputs (None for other stages)."""
    if stage.name != "qc":
        return None
    return next((p for p in stage.outputs if p.name == "index.html"), None)


def _where(stage: Any, base: Path) -> str:
    """The stage's output file or folder, relative to the working folder when inside it."""
    page = _qc_page(stage)
    if page is not None:
        others = len(stage.outputs) - 1
        more = f" (+{others} image{'s' if others != 1 else ''} and tables)" if others else ""
        return f"{_relative(page, base)}{more}"
    where = stage.location
    if where is None:
        return ""
    where = _relative(where, base)
    if len(stage.outputs) > 1:
        return f"{where}/ ({len(stage.outputs)} files)"
    return str(where)


def show_summary(ui: Ui, summary: Any, title: str = "cellcrowd run", *,
                  show_qc: bool = True) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"{title}: {summary.base}"), title_justify="left")
    for col in ("stage", "status", "counts", "skipped", "outputs"):
        table.add_column(col, overflow="fold")
    for s in summary.stages:
        table.add_row(*map(Text, (s.name, s.status, _counts_text(s.counts),
                                  str(len(s.skipped)), _where(s, summary.base))))
    ui.print(table)
    _show_totals(ui, summary.counts, len(summary.skipped_units))
    _show_skipped(ui, summary.skipped_units)
    page = _qc_report(summary) if show_qc else None
    if page is not None:
        ui.print(f"QC report: {page}")


def _qc_report(summary: Any) -> Path | None:
    """The QC report page of a run, when the qc stage wrote (or kept) it."""
    for stage in summary.stages:
        page = _qc_page(stage)
        if page is not None:
            return Path(page)
    return None


def _show_totals(ui: Ui, counts: dict[str, int], skipped: int) -> None:
    wanted = [("units", "report.units"), ("judgments", "report.judgments"),
              ("broken links", "report.broken_links"), ("failed downloads", "fetch.failed"),
              ("cleaned montages", "clean.cleaned"),
              ("merged montages", "clean.montages_merged"),
              ("cells dropped by the consensus", "clean.cells_dropped")]
    parts = [f"{label} {counts[key]}" for label, key in wanted if key in counts]
    parts.append(f"skipped units {skipped}")
    ui.print("totals: " + ", ".join(parts))


def _show_skipped(ui: Ui, units: Sequence[Any], limit: int = 20) -> None:
    if not units:
        return
    ui.print("skipped units:")
    for unit in units[:limit]:
        ui.print(f"  [{unit.stage}] {unit.unit}: {unit.reason}")
    if len(units) > limit:
        ui.print(f"  ... and {len(units) - limit} more (see `cellcrowd status CONFIG`)")


def show_status(ui: Ui, report: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"cellcrowd status: {report.base}"), title_justify="left")
    for col in ("stage", "state", "reason", "counts", "outputs"):
        table.add_column(col, overflow="fold")
    for s in report.stages:
        table.add_row(*map(Text, (s.name, s.state, s.reason, _counts_text(s.counts),
                                  str(s.outputs))))
    ui.print(table)
    left = report.left
    ui.print("left to do: " + (", ".join(left) if left else "nothing"))
    _show_skipped(ui, report.skipped_units, limit=1000)
