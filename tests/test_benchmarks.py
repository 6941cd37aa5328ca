"""The README's benchmark command runs from a checkout and prints its whole table.

Only that it runs, what it prints and that each verdict agrees with the figure it
judges are checked here, never how fast anything is: the speed and memory targets are
the benchmark's own (ratios measured in one run), not a unit test's.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = {"1 harvest", "2 sizes", "3 memory", "4 workers", "5 downloads", "6 prepare"}
#: The stages section 3 measures, each at two movie lengths.
MEMORY_STAGES = ("clean", "movies", "npz", "stitch", "trk", "ctc", "omezarr", "geff", "qc")
VERDICT = re.compile(r"(>=|<=) ([0-9.]+): (met|MISSED)")
NUMBER = re.compile(r"-?[0-9]+(?:\.([0-9]+))?")

Row = tuple[str, str, str, str, str]


def table_rows(stdout: str) -> list[Row]:
    """The rows of the printed table, cut at the columns its dashed lines mark."""
    lines = stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"-+(  -+)+", line)]
    assert len(rules) == 3, f"one table with a header, three dashed lines:\n{stdout}"
    spans = [m.span() for m in re.finditer(r"-+", lines[rules[0]])]
    starts = [start for start, _ in spans] + [None]

    def cells(line: str) -> Row:
        c = [line[a:b].strip() for a, b in itertools.pairwise(starts)]
        return c[0], c[1], c[2], c[3], c[4]

    assert cells(lines[rules[0] + 1]) == ("section", "measurement", "median", "ratio", "target")
    return [cells(line) for line in lines[rules[1] + 1:rules[2]]]


def judged(row: Row) -> tuple[float, int]:
    """The figure a row's target judges and its decimals: after ``=`` in the ratio
    column when there is one, else the ratio's first number, else the median."""
    _, _, median, ratio, _ = row
    text = ratio.rsplit("= ", 1)[1] if "= " in ratio else ratio or median
    found = NUMBER.search(text)
    assert found is not None, f"no figure to judge in {row}"
    return float(found.group()), len(found.group(1) or "")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                   Path]:
    tmp = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--memory"], cwd=ROOT,
        capture_output=True, text=True, timeout=1200, env={**os.environ, "TMPDIR": str(tmp)})
    return done, tmp


@pytest.mark.slow
def test_quick_benchmark_prints_every_section(
        quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, tmp = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.startswith("python benchmarks/run.py --quick --memory  (")
    rows = table_rows(done.stdout)
    assert {row[0] for row in rows} == SECTIONS
    names = {row[1] for row in rows}
    for contender in ("library, serial", "library, 2 local workers",
                      "cellcrowd run, 2 local workers", "cellcrowd run, serial"):
        assert f"ours: {contender}" in names
        assert f"ours: {contender} / I/O floor" in names
    for stage in MEMORY_STAGES:
        assert f"512^2 x 20: {stage}" in names
        assert f"512^2 x 40: {stage}" in names
        assert f"{stage}: peak at 40 frames / at 20" in names
    assert list(tmp.iterdir()) == [], "the benchmark leaves its inputs behind"


@pytest.mark.slow
def test_each_verdict_agrees_with_its_figure(
        quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, _ = quick_run
    assert done.returncode == 0, done.stderr[-4000:]
    verdicts = 0
    for row in table_rows(done.stdout):
        target = row[4]
        if not target:
            continue
        match = VERDICT.fullmatch(target)
        assert match is not None, f"not a verdict: {row}"
        sign, limit, said = match.group(1), float(match.group(2)), match.group(3)
        value, decimals = judged(row)
        if abs(value - limit) <= 0.5 * 10.0 ** -decimals:
            continue  # printed rounded to the limit: either verdict is right
        met = value >= limit if sign == ">=" else value <= limit
        assert said == ("met" if met else "MISSED"), f"{row}: {value} {sign} {limit}"
        verdicts += 1
    assert verdicts >= 20
