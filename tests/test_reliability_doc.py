"""docs/reliability.md: every row of its fault tables names tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TEST = re.compile(r"`(test_\w+\.py)::(test_\w+)")


def test_every_fault_row_names_an_existing_test() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| ") and " | " in line
            and not line.startswith(("| Bad input", "| Setting", "| `"))]
    fault_rows = [r for r in rows if r.count("|") >= 4]
    assert len(fault_rows) >= 35
    for row in fault_rows:
        named = _TEST.findall(row)
        assert named, f"no test named in: {row}"
        for file, name in named:
            assert f"def {name}(" in (ROOT / "tests" / file).read_text(encoding="utf-8"), (
                f"{file}::{name} does not exist")
