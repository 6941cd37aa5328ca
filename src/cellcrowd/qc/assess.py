"""What needs a person's eye, and what to do about it: per unit and per stage.

A unit (montage) gets a :class:`~.model.Problem` for each of: a download that
failed, a broken link, an annotation or consensus that could not be used, labels
without cells, low agreement of its annotators, far more or fewer cells per frame
than the same position's neighbouring montages in time, and no labels while
others have them. Each problem carries advice that can help with it: a broken
link is re-uploaded (fetching again gets the same empty answer), a failed
download is retried by running again, low agreement is judged again.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import replace

from ..errors import InputError
from ..files import natural_key
from ..layout import WorkingFolder, parse_montage_name
from .model import CsvTable, MontageQc, PartQc, Problem, StageQc, StitchedQc
from .sources import Manifest, read_csv

__all__ = ["CELL_COUNT_RATIO", "LOW_AGREEMENT", "assess", "broken_links", "montage_problems"]

#: Units whose annotators agree less than this (F1 with the consensus) are flagged.
LOW_AGREEMENT = 0.7
#: A unit's mean cells per frame this many times above (or below 1/x) that of the same
#: position's montages up to two before and after in time is flagged (and at least
#: :data:`_MIN_CELL_GAP` cells apart, so that 1 against 2 cells is not).
CELL_COUNT_RATIO = 2.0
_MIN_CELL_GAP = 2.0
_NEIGHBOURS = 2


def broken_links(wf: WorkingFolder, job_id: int) -> CsvTable | None:
    """The broken-link rows, reduced to montage, number of judgments and image URL."""
    for report_type in ("full", "aggregated", "json"):
        table = read_csv(wf.broken_links_csv(job_id, report_type))
        if table is not None:
            break
    else:
        return None
    if table.error or "image_url" not in table.columns:
        note = table.error or f"{table.path.name} has no image_url column"
        return CsvTable(table.path, (), (), note)
    url_at = table.columns.index("image_url")
    counts: dict[str, list[str]] = {}
    for row in table.rows:
        url = row[url_at] if url_at < len(row) else ""
        try:
            montage = wf.montage_name(replace(parse_montage_name(url),
                                              identifier=wf.identifier))
        except InputError:
            montage = url
        counts.setdefault(montage, [url, "0"])
        counts[montage][1] = str(int(counts[montage][1]) + 1)
    rows = tuple((m, n, url) for m, (url, n) in sorted(counts.items(),
                                                      key=lambda kv: natural_key(kv[0])))
    return CsvTable(table.path, ("montage", "judgments", "image_url"), rows)


# -- per unit ---------------------------------------------------------------------------------


def _advice(wf: WorkingFolder, job_id: int | None) -> dict[str, str]:
    reupload = wf.reupload_csv(job_id if job_id is not None else "ID").name
    review = ("run `cellcrowd review` to write a re-upload CSV of the units that need "
              "another judgment, and upload it to the job")
    return {
        "failed": "run `cellcrowd run` again: failed downloads are retried",
        "broken": f"re-upload the rows of CSV/{reupload} to the job: the annotator could not "
                  "open the image, so fetching again cannot help",
        "unusable": "look at the annotation; if it is wrong, " + review,
        "empty": "look at the overlay: if the image has cells, " + review,
        "low agreement": "look at the overlay; " + review,
        "cell count": "look at the overlay and its neighbours in time: a missed or "
                      "half-done annotation shows here; " + review,
        "not harvested": "run `cellcrowd run` (its judgment may still be pending)",
    }


def _reasons(failures: CsvTable | None) -> dict[str, str]:
    if failures is None or "montage" not in failures.columns:
        return {}
    at = failures.columns.index("montage")
    why = failures.columns.index("reason") if "reason" in failures.columns else None
    return {r[at]: (r[why] if why is not None and why < len(r) else "download failed")
            for r in failures.rows if at < len(r)}


def montage_problems(
    wf: WorkingFolder, montages: Sequence[MontageQc], manifest: Manifest,
    job_id: int | None, broken: CsvTable | None, failures: CsvTable | None,
) -> tuple[MontageQc, ...]:
    """The montages, each with the problems found and what to do about them."""
    advice = _advice(wf, job_id)
    broken_names = {r[0]: r[1] for r in broken.rows} if broken else {}
    failed = _reasons(failures)
    unusable = {unit: reason for unit, reason in manifest.skipped("clean")
                if "unusable" in reason or "consensus failed" in reason}
    harvesting = any(m.labels for m in montages)
    out = []
    for m in montages:
        found: list[tuple[str, str]] = []
        if m.name in failed and not m.labels:
            found.append(("failed", f"download failed: {failed[m.name]}"))
        if m.name in broken_names and not m.labels:  # else its other judgments were used
            found.append(("broken", f"{broken_names[m.name]} judgment(s) with a broken link"))
        if m.error or m.name in unusable:
            found.append(("unusable", m.error or unusable[m.name]))
        if m.cells == 0:
            found.append(("empty", "the cleaned labels hold no cell"))
        if m.agreement is not None and m.agreement < LOW_AGREEMENT:
            found.append(("low agreement", f"annotators agree {m.agreement:.0%} with the "
                                           f"consensus (below {LOW_AGREEMENT:.0%})"))
        if harvesting and not m.labels and not found:
            found.append(("not harvested", "no cleaned labels yet"))
        out.append(replace(m, problems=tuple(Problem(k, d, advice[k]) for k, d in found)))
    return _cell_count_outliers(out, advice["cell count"])


def _mean(counts: Sequence[int]) -> float | None:
    return sum(counts) / len(counts) if counts else None


def _cell_count_outliers(montages: list[MontageQc], advice: str) -> tuple[MontageQc, ...]:
    """Flag units whose mean cells per frame is far from that of their neighbours in time."""
    by_position: dict[str, dict[int, float]] = {}
    for m in montages:
        mean = _mean(m.frame_counts)
        if mean is not None:
            by_position.setdefault(m.position, {})[m.montage] = mean
    out = []
    for m in montages:
        means = by_position.get(m.position, {})
        mine = means.get(m.montage)
        near = [means[k] for k in range(m.montage - _NEIGHBOURS, m.montage + _NEIGHBOURS + 1)
                if k != m.montage and k in means]
        if mine is None or not near:
            out.append(m)
            continue
        ref = statistics.median(near)
        far = abs(mine - ref) >= _MIN_CELL_GAP and (
            mine > CELL_COUNT_RATIO * ref or mine * CELL_COUNT_RATIO < ref)
        if far:
            detail = (f"{mine:.1f} cells per frame; its neighbours in time have "
                      f"{ref:.1f}")
            m = replace(m, problems=(*m.problems, Problem("cell count", detail, advice)))
        out.append(m)
    return tuple(out)


# -- per stage --------------------------------------------------------------------------------


def _status(have: int, want: int) -> str:
    if have == 0:
        return "missing"
    return "done" if have >= want else "partial"


def _some(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class _Stages:
    def __init__(self) -> None:
        self.stages: list[StageQc] = []
        self.missing: list[str] = []

    def add(self, name: str, have: int, want: int, detail: str, hint: str) -> None:
        status = _status(have, want)
        self.stages.append(StageQc(name, status, detail))
        if status != "done":
            self.missing.append(f"{name}: {detail}; {hint}")


def assess(
    wf: WorkingFolder, logs: tuple[bool, str | None], manifest: Manifest,
    montages: Sequence[MontageQc], parts: Sequence[PartQc], stitched: StitchedQc | None,
    job_id: int | None, broken: CsvTable | None, failures: CsvTable | None,
) -> tuple[list[StageQc], list[str]]:
    """One row per stage (done, partial, missing) and the list of what is missing.

    ``logs`` is ``(read, problem)``: whether the job was loaded from the logs, and what
    is wrong with them (why not, or why the tile grid is unknown; None when nothing is).
    """
    out = _Stages()
    read, problem = logs
    if not read:
        out.add("logs", 0, 1, problem or "no JSON logs",
                f"run `cellcrowd prepare`, or copy the json_logs folder into {wf.base}")
    else:
        detail = "both logs read" + (f"; {problem}" if problem else "")
        out.add("logs", 0 if problem else 1, 1, detail, "fix the chopper log")
    _montage_stages(out, montages)
    _file_stages(out, wf, manifest, parts, stitched)
    _job_stage(out, job_id, broken, failures)
    for name, entry in manifest.stages.items():
        state = str(entry.get("state", "?"))
        if state != "done":
            error = f": {entry['error']}" if entry.get("error") else ""
            out.missing.append(f"stage {name} is {state}{error}; run `cellcrowd run` again")
    return out.stages, out.missing


def _montage_stages(out: _Stages, montages: Sequence[MontageQc]) -> None:
    want = len(montages)
    for name, attr, what, hint in (
        ("montages", "raw", "raw montages", "run `cellcrowd prepare`"),
        ("annotations", "annotation", "downloaded annotations",
         "run `cellcrowd report` and `cellcrowd fetch`"),
        ("labels", "labels", "cleaned label montages", "run `cellcrowd clean`"),
    ):
        have = sum(bool(getattr(m, attr)) for m in montages)
        out.add(name, have, max(want, 1), f"{have} of {want} {what}", hint)
        if 0 < have < want:
            lacking = [m.name for m in montages if not getattr(m, attr)]
            out.missing.append(f"{len(lacking)} montage(s) without {what}: {_some(lacking)}")
    bad = [m.name for m in montages if m.error]
    if bad:
        out.missing.append(f"{len(bad)} label montage(s) could not be read: {_some(bad)}")


def _file_stages(out: _Stages, wf: WorkingFolder, manifest: Manifest,
                 parts: Sequence[PartQc], stitched: StitchedQc | None) -> None:
    slots = sum(len(p.expected_positions) for p in parts)
    for name, attr in (("movies (annotated)", "annotated_positions"),
                       ("movies (raw)", "raw_positions")):
        have = sum(len(getattr(p, attr)) for p in parts)
        out.add(name, have, max(slots, 1), f"{have} of {slots} part positions in movies/",
                "run `cellcrowd movies`")
    have_npz = sum(p.npz is not None for p in parts)
    out.add("npz", have_npz, max(len(parts), 1), f"{have_npz} of {len(parts)} part .npz files",
            "run `cellcrowd npz`")
    out.missing += [f"part {p.part}: {p.npz_error}" for p in parts if p.npz_error]
    frames = stitched.frames if stitched else 0
    out.add("stitched", frames, 1, f"{frames} stitched frames", "run `cellcrowd stitch`")
    if stitched is not None and stitched.error:
        out.missing.append(f"stitched movie: {stitched.error}")
    for name, path in (("trk", wf.trk), ("ctc", wf.ctc)):
        recorded = manifest.outputs(name)  # the stage's record; the files without one
        present = (bool(recorded) if recorded is not None
                   else path.is_file() or (path.is_dir() and any(path.iterdir())))
        out.stages.append(StageQc(name, "done" if present else "missing",
                                  f"{path.name} {'written' if present else 'not written'}"))


def _job_stage(out: _Stages, job_id: int | None, broken: CsvTable | None,
               failures: CsvTable | None) -> None:
    if job_id is None:
        out.missing.append("broken links and download failures not checked: no job id given")
        return
    links = len(broken.montages()) if broken else 0
    failed = len(failures.rows) if failures else 0
    files = [t.path.name for t in (broken, failures) if t is not None]
    found = f"from {', '.join(files)}" if files else (
        "no broken-link or download-failure CSV: nothing recorded, or the report and "
        "fetch stages have not run")
    out.stages.append(StageQc("job", "done" if not links and not failed else "partial",
                              f"job {job_id}: {links} montage(s) with broken links, "
                              f"{failed} failed download(s); {found}"))
    if links or failed:
        out.missing.append(f"job {job_id}: {links} montage(s) with broken links (re-upload "
                           f"them), {failed} failed download(s) (run `cellcrowd run` again)")
    out.missing += [t.error for t in (broken, failures) if t is not None and t.error]
