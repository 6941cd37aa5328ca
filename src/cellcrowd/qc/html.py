"""The QC page: one self-contained HTML file (inline CSS, JS and SVG; images beside it).

Units come sorted by how much they need a person's eye, every one of them in the
table with a lazy-loaded thumbnail; a little inline script pages and filters the
table (without it, every row shows). Every value from a file is escaped; links
are relative, so the folder can be moved or copied.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .model import MontageQc, OverlayFile, QcSummary
from .plots import bar_chart, histogram, line_plot

__all__ = ["MAX_TABLE_ROWS", "PAGE_SIZE", "render_html"]

#: Rows shown per table of CSV rows (the counts are always complete).
MAX_TABLE_ROWS = 500
#: Units per page of the unit table (with JavaScript; without it every row shows).
PAGE_SIZE = 50
_SPARK = "▁▂▃▄▅▆▇█"
_BAR_WIDTH = 30
_THUMB_HEIGHT = 96  # px: thumbnails lower than this are shown enlarged (2x-4x)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.none { color: #999; text-align: center; }
.done { color: #1a7f37; font-weight: bold; }
.partial { color: #b36b00; font-weight: bold; }
.missing { color: #c62828; font-weight: bold; }
.bar { font-family: monospace; color: #3465a4; white-space: pre; }
.spark { font-size: 1.4em; letter-spacing: 1px; color: #3465a4; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; background: #eee; }
nav a { margin-right: 1em; }
.note { color: #666; font-size: 0.9em; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.controls { margin: 0.5em 0; display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
.kind { display: inline-block; border-radius: 3px; padding: 0 4px; margin: 1px;
        background: #fde2e1; color: #8a1c1c; font-size: 0.85em; white-space: nowrap; }
.facts th { min-width: 14em; }
#units td.text { min-width: 22em; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.5em; }
"""

_JS = """
(function () {
  var table = document.getElementById("units");
  if (!table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var kind = document.getElementById("unit-kind"), text = document.getElementById("unit-text");
  var info = document.getElementById("unit-page"), size = PAGE_SIZE, page = 0, shown = rows;
  function match(row) {
    var k = kind.value, t = text.value.trim().toLowerCase();
    if (k === "any" && row.dataset.kinds === "") { return false; }
    if (k !== "all" && k !== "any" && (" " + row.dataset.kinds + " ").indexOf(" " + k + " ") < 0) {
      return false;
    }
    return t === "" || row.dataset.unit.toLowerCase().indexOf(t) >= 0;
  }
  function draw() {
    shown = rows.filter(match);
    var pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    rows.forEach(function (r) { r.hidden = true; });
    shown.slice(page * size, (page + 1) * size).forEach(function (r) { r.hidden = false; });
    info.textContent = shown.length ? "units " + (page * size + 1) + "–" +
      Math.min((page + 1) * size, shown.length) + " of " + shown.length + " (page " +
      (page + 1) + " of " + pages + ")" : "no unit matches";
  }
  document.getElementById("unit-prev").onclick = function () {
    page = Math.max(0, page - 1); draw();
  };
  document.getElementById("unit-next").onclick = function () { page += 1; draw(); };
  kind.onchange = function () { page = 0; draw(); };
  text.oninput = function () { page = 0; draw(); };
  document.getElementById("unit-controls").hidden = false;
  draw();
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if value is None:
        return '<td class="none">—</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="n">{int(value)}</td>'
    if isinstance(value, float):
        return f'<td class="n">{value:.3f}</td>'
    return f"<td>{_e(value)}</td>"


def _table(table_id: str, header: Sequence[str], rows: Iterable[Sequence[object]],
           *, limit: int | None = None) -> str:
    rows = list(rows)
    shown = rows if limit is None else rows[:limit]
    out = [f'<table id="{_e(table_id)}">',
           "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    out += ["<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in shown]
    out.append("</tbody></table>")
    if len(shown) < len(rows):
        out.append(f'<p class="note">{len(rows) - len(shown)} more rows not shown.</p>')
    return "\n".join(out)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}-section">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def _href(path: Path, base: Path) -> str:
    """``path`` relative to the page's folder ``base`` (``../`` for the working folder's)."""
    return _e(quote(Path(os.path.relpath(path, base)).as_posix()))


# -- sections ---------------------------------------------------------------------------------


def _advice_html(qc: QcSummary) -> str:
    kinds: dict[str, tuple[int, str]] = {}
    for m in qc.montages:
        for p in m.problems:
            count, advice = kinds.get(p.kind, (0, p.advice))
            kinds[p.kind] = (count + 1, advice)
    if not kinds:
        return '<p id="advice">No unit needs a look: nothing failed, broke or disagreed.</p>'
    items = "\n".join(f'<li><span class="kind">{_e(k)}</span> {n} unit(s): {_e(a)}</li>'
                      for k, (n, a) in sorted(kinds.items(), key=lambda kv: -kv[1][0]))
    return f'<ul id="advice">\n{items}\n</ul>'


def _stages_html(qc: QcSummary) -> str:
    rows = "\n".join(
        f'<tr><td>{_e(s.name)}</td><td class="{_e(s.status)}">{_e(s.status)}</td>'
        f"<td>{_e(s.detail)}</td></tr>" for s in qc.stages)
    table = ('<table id="stages"><thead><tr><th>stage</th><th>status</th><th>details</th>'
             f"</tr></thead><tbody>\n{rows}\n</tbody></table>")
    if qc.missing:
        items = "\n".join(f"<li>{_e(m)}</li>" for m in qc.missing)
        missing = f'<h3>Missing or incomplete</h3>\n<ul id="missing">\n{items}\n</ul>'
    else:
        missing = '<p id="missing">Nothing is missing.</p>'
    runs = ""
    if qc.runs:
        # Not the counts: some (downloads, files already there) depend on how often a run
        # was interrupted, and the page of a resumed run is the same bytes.
        records = [(r.name, r.state, r.error) for r in qc.runs]
        runs = ("<h3>As the manifest records the stages</h3>\n"
                + _table("runs", ("stage", "state", "error"), records))
    return table + "\n" + missing + "\n" + runs


UNIT_COLUMNS = ("rank", "thumbnail", "montage", "part", "position", "needs", "agreement",
                "judgments", "low-support cells", "raw montage", "annotation", "cleaned labels",
                "cells", "min cells/frame", "max cells/frame", "pixels removed", "pixels filled",
                "problem", "advice")


def _thumb(m: MontageQc, image: OverlayFile | None, base: Path) -> str:
    if image is None or image.thumbnail is None or image.thumb_size is None:
        note = "; ".join(image.notes) if image is not None and image.notes else "no image"
        return f'<td class="none">{_e(note)}</td>'
    w, h = image.thumb_size
    zoom = max(1, min(4, _THUMB_HEIGHT // max(h, 1)))  # tiny montages shown larger
    img = (f'<img class="thumb" loading="lazy" src="{_href(image.thumbnail, base)}" '
           f'width="{w * zoom}" height="{h * zoom}" alt="{_e(m.name)}">')
    if image.path is not None:
        img = f'<a href="{_href(image.path, base)}">{img}</a>'
    return f"<td>{img}</td>"


def _unit_row(rank: int, m: MontageQc, image: OverlayFile | None, base: Path) -> str:
    kinds = " ".join(sorted({p.kind for p in m.problems}))
    needs = "".join(f'<span class="kind">{_e(p.kind)}</span>' for p in m.problems)
    cells = [_cell(v) for v in (
        m.name, m.part, m.position)] + [f"<td>{needs}</td>"] + [_cell(v) for v in (
        m.agreement, m.judgments, m.low_support_cells, m.raw, m.annotation, m.labels, m.cells,
        m.min_cells_per_frame, m.max_cells_per_frame, m.pixels_removed, m.pixels_filled)]
    for text in ("; ".join(p.detail for p in m.problems),
                 "; ".join(dict.fromkeys(p.advice for p in m.problems))):
        cells.append(f'<td class="text">{_e(text)}</td>' if text else _cell(None))
    return (f'<tr id="unit-{_e(m.name)}" data-unit="{_e(m.name)}" data-kinds="{_e(kinds)}">'
            f'<td class="n">{rank}</td>{_thumb(m, image, base)}{"".join(cells)}</tr>')


def _units_html(qc: QcSummary, images: Mapping[str, OverlayFile]) -> str:
    if not qc.montages:
        return "<p>No montages: no logs in this folder.</p>"
    units = qc.by_attention()
    kinds = sorted({p.kind for m in units for p in m.problems})
    options = "".join(f'<option value="{_e(k)}">{_e(k)}</option>' for k in kinds)
    base = qc.wf.qc
    controls = (
        '<div class="controls" id="unit-controls" hidden>'
        '<label>show <select id="unit-kind"><option value="all">every unit</option>'
        f'<option value="any">units with a problem</option>{options}</select></label>'
        '<label>montage <input id="unit-text" type="search" placeholder="name contains"></label>'
        '<button id="unit-prev" type="button">previous</button>'
        '<button id="unit-next" type="button">next</button>'
        '<span id="unit-page"></span></div>')
    note = (f'<p class="note">All {len(units)} units, those that most need a look first '
            "(failed, broken, unusable, empty, low agreement, a cell count far from their "
            "neighbours in time). Cells count the distinct ids in the cleaned labels, per "
            "frame over the montage's real frames. Click a thumbnail for the full overlay: "
            "left the raw montage with the cleaned outlines, right the annotation (white: "
            "pixels cleaning removed). The table is also in "
            f'<a href="{_href(qc.wf.qc_units_csv, base)}">units.csv</a>.</p>')
    head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in UNIT_COLUMNS) + "</tr></thead>"
    rows = "\n".join(_unit_row(i + 1, m, images.get(m.name), base)
                     for i, m in enumerate(units))
    return (f"{note}\n{controls}\n<table id=\"units\">{head}<tbody>\n{rows}\n</tbody></table>")


def _plots_html(qc: QcSummary) -> str:
    length = qc.montage_len or 1
    series: dict[str, list[tuple[float, float]]] = {}
    for m in qc.montages:
        for k, count in enumerate(m.frame_counts):
            series.setdefault(m.position, []).append((m.montage * length + k, count))
    agreements = [m.agreement for m in qc.montages if m.agreement is not None]
    rated = [(w.worker_id, w.reliability) for w in qc.workers if w.reliability is not None]
    label = "estimated reliability"
    if not rated:
        rated = [(w.worker_id, w.agreement) for w in qc.workers if w.agreement is not None]
        label = "mean agreement (no reliability estimate)"
    plots = [
        line_plot(series, svg_id="plot-cells", title="Cells per frame over time, per position",
                  xlabel="frame", ylabel="cells"),
        histogram(agreements, svg_id="plot-agreement",
                  title=f"Agreement of annotators per unit ({len(agreements)} units)",
                  xlabel="agreement (F1 with the consensus)"),
        bar_chart([(w, float(v)) for w, v in rated if v is not None], svg_id="plot-workers",
                  title=f"Workers: {label}", xlabel=label.split(" (")[0], width=480),
    ]
    return '<div class="plots">\n' + "\n".join(plots) + "\n</div>"


def _workers_html(qc: QcSummary) -> str:
    base = qc.wf.qc
    if not qc.workers:
        return ("<p>No workers: no consensus report or workers file yet (one judgment per "
                "unit, or the clean stage has not run).</p>")
    rows = [(w.worker_id, w.reliability, w.units, w.agreement) for w in qc.workers]
    note = (f'<p class="note">Also in <a href="{_href(qc.wf.qc_workers_csv, base)}">'
            "workers.csv</a>. Agreement: mean F1 of the worker's cells against the consensus.</p>")
    return note + "\n" + _table("workers", ("worker", "reliability", "units", "agreement"), rows)


def _frames_text(frames: Sequence[int]) -> str | None:
    if not frames:
        return None
    low, high = min(frames), max(frames)
    return str(low) if low == high else f"{low}–{high}"


def _parts_html(qc: QcSummary) -> str:
    if not qc.parts:
        return "<p>No parts: no logs.</p>"
    header = ("part", "expected positions", "annotated positions", "raw positions",
              "missing positions", "annotated frames per position", "npz", "X shape",
              "y shape", "problem")
    rows = [(p.part, len(p.expected_positions), len(p.annotated_positions),
             len(p.raw_positions), ", ".join(p.missing_positions) or "none",
             _frames_text(p.frames), p.npz.name if p.npz else None,
             str(p.x_shape) if p.x_shape else None, str(p.y_shape) if p.y_shape else None,
             p.npz_error) for p in qc.parts]
    return _table("parts", header, rows)


def _job_html(qc: QcSummary) -> str:
    if qc.job_id is None:
        return "<p>No job id given: broken links and download failures were not checked.</p>"
    out = []
    for table_id, title, table, none in (
        ("broken-links", "Broken links", qc.broken_links,
         "No broken-link CSV (no broken links left, or the report stage has not run)."),
        ("failures", "Download failures", qc.failures,
         "No download-failure CSV (nothing failed, or the fetch stage has not run)."),
    ):
        out.append(f"<h3>{_e(title)}</h3>")
        if table is None:
            out.append(f"<p>{_e(none)}</p>")
        elif table.error:
            out.append(f'<p class="missing">{_e(table.error)}</p>')
        else:
            out.append(f"<p>{len(table.rows)} row(s) in <code>{_e(table.path.name)}</code>.</p>")
            out.append(_table(table_id, table.columns, table.rows, limit=MAX_TABLE_ROWS))
    return "\n".join(out)


def _sparkline(values: Sequence[int]) -> str:
    top = max(values, default=0)
    if top == 0:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[round(v / top * (len(_SPARK) - 1))] for v in values)


def _stitched_html(qc: QcSummary) -> str:
    s = qc.stitched
    if s is None:
        return "<p>No stitched movie yet.</p>"
    counts = s.cells_per_frame
    top = max(counts, default=0)
    lineage = f", {s.divisions} division(s) in the lineage" if s.divisions is not None else ""
    out = [f"<p>{s.frames} frames, {s.cells} distinct cells{_e(lineage)}; cells per frame "
           f"from {min(counts, default=0)} to {top}.</p>",
           f'<p class="spark" id="sparkline">{_e(_sparkline(counts))}</p>']
    if s.error:
        out.append(f'<p class="missing">{_e(s.error)}</p>')
    rows = "\n".join(
        f'<tr><td class="n">{t}</td><td class="n">{c}</td><td class="bar">'
        f"{'█' * (round(c / top * _BAR_WIDTH) if top else 0)}</td></tr>"
        for t, c in enumerate(counts))
    out.append('<table id="stitched"><thead><tr><th>frame</th><th>cells</th><th></th></tr>'
               f"</thead><tbody>\n{rows}\n</tbody></table>")
    return "\n".join(out)


def _exports_html(qc: QcSummary) -> str:
    if not qc.exports:
        return '<p id="exports">No exports recorded yet (run `cellcrowd run`).</p>'
    items = []
    for link in qc.exports:
        code = f"<pre>{_e(link.snippet)}</pre>" if link.snippet else ""
        items.append(f'<li>{_e(link.stage)}: <a href="{_href(link.path, qc.wf.qc)}">'
                     f"{_e(link.name)}</a>{code}</li>")
    return '<ul id="exports">\n' + "\n".join(items) + "\n</ul>"


def _facts_html(qc: QcSummary) -> str:
    totals = qc.totals()
    # No absolute path: a rerun elsewhere (a copy, another machine) gives the same bytes.
    facts: list[tuple[str, object]] = [("identifier", qc.wf.identifier)]
    if qc.grid:
        facts.append(("geometry", qc.grid))
    if qc.job_id is not None:
        facts.append(("job", qc.job_id))
    facts += [("units", totals["montages"]), ("units with cleaned labels", totals["labels"]),
              ("units that need a look", totals["units_to_check"]),
              ("cells in the cleaned labels", totals["cells"]), ("workers", len(qc.workers))]
    rows = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in facts)
    return f'<table id="facts" class="facts">{rows}</table>'


def render_html(qc: QcSummary, overlays: Sequence[OverlayFile] = ()) -> str:
    """The report page (self-contained, inline CSS/JS/SVG; every value escaped).

    ``overlays`` are the images written for the montages (thumbnails, overlays);
    the page links them relative to ``qc.wf.qc``.
    """
    images = {o.montage: o for o in overlays}
    sections = [
        ("advice", "What to do", _advice_html(qc)),
        ("plots", "Plots", _plots_html(qc)),
        ("units", "Units, those that need a look first", _units_html(qc, images)),
        ("workers", "Workers", _workers_html(qc)),
        ("stages", "Stages", _stages_html(qc)),
        ("parts", "Parts (movies and npz)", _parts_html(qc)),
        ("job", "Broken links and download failures", _job_html(qc)),
        ("stitched", "Stitched movie", _stitched_html(qc)),
        ("exports", "Exports", _exports_html(qc)),
    ]
    if qc.run:
        sections.insert(5, ("run", "Run summary", _table("run", ("item", "value"), qc.run)))
    nav = " ".join(f'<a href="#{a}-section">{_e(t)}</a>' for a, t, _ in sections)
    body = "\n".join(_section(a, t, b) for a, t, b in sections)
    script = _JS.replace("PAGE_SIZE", str(PAGE_SIZE))
    name = _e(qc.wf.identifier)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>cellcrowd QC: {name}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<h1>cellcrowd QC report: {name}</h1>\n{_facts_html(qc)}\n<nav>{nav}</nav>\n"
        f"{body}\n<script>{script}</script>\n</body>\n</html>\n"
    )
