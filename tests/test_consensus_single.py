"""With one judgment per unit, the consensus path gives the single-judgment path's outputs.

An emulator job with exactly one judgment per unit (some reported broken) is
harvested twice, end to end: with the default ``[clean] strategy = "reliability"``
and with ``strategy = "latest"`` (the original tool's one judgment per montage).
Every file either run writes must be the same bytes (the run's own bookkeeping,
``.cellcrowd/``, aside).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cellcrowd.config import load_config
from cellcrowd.pipeline import run
from cellcrowd.sim.crowd import CrowdConfig
from cellcrowd.sim.demo import ExampleSettings, emulated_job, make_example, save_config

SETTINGS = ExampleSettings(frames=6, shape=(96, 96), cells=6, divisions=1, montage_len=3,
                           row_length=3)


def _files(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and ".cellcrowd" not in p.relative_to(base).parts}


def test_one_judgment_per_unit_gives_the_single_judgment_outputs(tmp_path: Path) -> None:
    example = make_example(tmp_path / "prepared", SETTINGS)
    crowd = CrowdConfig(workers_per_unit=(1, 1), broken_share=0.2, reupload=False)
    outputs = {}
    with emulated_job(example, api_key="single-key", seed=5, crowd=crowd) as (_, cfg):
        for strategy in ("reliability", "latest"):
            dest = tmp_path / strategy
            shutil.copytree(example.config.base, dest)
            save_config(cfg.model_copy(update={"base": dest, "raw": None}),
                        dest / "cellcrowd.toml")
            config = load_config(dest / "cellcrowd.toml").with_overrides(
                {"clean.strategy": strategy})
            summary = run(config)
            assert "clean" in summary.ran
            outputs[strategy] = _files(dest)
    merged, single = outputs["reliability"], outputs["latest"]
    assert sorted(merged) == sorted(single)
    assert [k for k in merged if merged[k] != single[k]] == []
    assert any(k.endswith("_labels.png") for k in merged)
    assert any(k.endswith("clean_stats.json") for k in merged)
