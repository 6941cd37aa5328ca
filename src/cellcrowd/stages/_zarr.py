"""What the ``omezarr`` and ``geff`` stages share: where they write, their settings.

Each writes its export to ``[outputs] export_url`` (default ``zarr/`` in the working
folder) and a receipt ``zarr/{kind}_location.json`` naming where it went, which the
manifest records with the store's files (for a URL, only the receipt is local).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..layout import WorkingFolder
from ..pipeline.stage import StageOutput

if TYPE_CHECKING:
    from ..export.zarrstore import ExportTarget

__all__ = ["UPSTREAM", "export_target", "stage_output", "zarr_settings"]

#: The stages both read.
UPSTREAM = ("clean", "movies", "stitch")

_SECRET = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def export_target(config: Config, wf: WorkingFolder) -> ExportTarget:
    """Where the configuration sends the OME-Zarr and GEFF exports."""
    from ..export.zarrstore import ExportTarget

    out = config.outputs
    return ExportTarget(out.export_url or str(wf.zarr_exports), dict(out.export_storage_options))


def zarr_settings(config: Config) -> dict[str, Any]:
    """The settings the two stages depend on (secret-looking options by name only)."""
    out = config.outputs
    options = {k: ("***" if _SECRET.search(k) else v)
               for k, v in sorted(out.export_storage_options.items())}
    return {"export_url": out.export_url, "storage_options": options,
            "geff_parts": out.geff_parts}


def stage_output(target: ExportTarget, wf: WorkingFolder, kind: str, names: list[str],
                 counts: dict[str, int]) -> StageOutput:
    """Write the receipt; the stage's output is the stores' files and the receipt."""
    receipt = wf.export_receipt(kind)
    target.receipt(receipt, names[0], counts)
    files = [f for name in names for f in target.files(name)]
    return StageOutput([*files, receipt], {**counts, "stores": len(names)})
