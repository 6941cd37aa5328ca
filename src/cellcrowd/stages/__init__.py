"""The harvest's stages, one module each, in the order they run.

Each module owns its whole step and exposes one entry, ``STAGE``
(:class:`cellcrowd.pipeline.Stage`), which the engine (:mod:`cellcrowd.pipeline`)
runs; :data:`HARVEST` is the table of them::

    report   download the job report (CSV) and write the broken-link CSVs   appen/
    fetch    download every judgment's annotation image                      download.py
    clean    annotation colours -> clean, relabelled uint16 label montages;  labels.py
             several judgments of a montage -> one consensus montage         jobconsensus.py
    movies   label montages and raw frames -> movies/partN/x_XX_y_YY/...     movies.py
    npz      DeepCell training data, one .npz per part (and the full movie)  export/npz.py
    stitch   tiles -> full-size frames, parts -> one tracked movie           stitch.py
             (and the stitched movie's .npz when outputs.npz_full_movie)     export/npz.py
    trk      DeepCell .trk of the stitched movie                             export/trk.py
    ctc      Cell Tracking Challenge folders of the stitched movie           export/ctc.py
    omezarr  OME-Zarr of the stitched movie (image, tracked labels)          export/omezarr.py
    geff     GEFF graph of the stitched movie's lineage                      export/geff.py
    qc       the quality-control report, qc/index.html and overlays          qc/

The engine opens the working folder and its job (the geometry, read from the logs
once per run) through :func:`.jobview.open_folder`; every stage gets the job as
``ctx.job``. Modules are imported inside the
stage bodies, so importing the table (e.g. for ``cellcrowd status``) stays cheap.
:func:`.prepare.prepare_folder`, the step before the harvest, is not in the table.
"""

from __future__ import annotations

from ..pipeline.stage import StageTable
from . import clean, ctc, fetch, geff, movies, npz, omezarr, qc, report, stitch, trk
from .jobview import open_folder

__all__ = ["HARVEST", "STAGES"]

#: The harvest: its stages in order, sharing the folder :func:`.jobview.open_folder` opens.
HARVEST = StageTable(
    tuple(m.STAGE for m in (report, fetch, clean, movies, npz, stitch, trk, ctc, omezarr, geff,
                            qc)),
    open_folder,
)

#: The harvest's stages, in the order they run.
STAGES: tuple[str, ...] = HARVEST.names
