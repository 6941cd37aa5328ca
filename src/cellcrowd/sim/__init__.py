"""Simulators: synthetic movies, a simulated crowd, the service's emulator, the demo.

Nothing in the library imports this package (a test checks it), so ``import cellcrowd``
stays light; the CLI's ``demo`` and ``emulator serve`` commands import it when run.

``synthetic``     :func:`~cellcrowd.sim.synthetic.synthetic_movie`: dividing cells with truth.
``paint``         :func:`~cellcrowd.sim.paint.paint_annotation`: truth painted as the crowd
                  paints it, with artifacts (sized across the cleaner's thresholds on request).
``annotators``    annotator styles: boundary noise, missed and merged cells.
``crowd``         :func:`~cellcrowd.sim.crowd.simulate_crowd`: a job of simulated judgments.
``live``          :class:`~cellcrowd.sim.live.LiveJob`: a job still running, with webhooks.
``emulator``      :class:`~cellcrowd.sim.emulator.Emulator`: the service on loopback.
``reports``       the service's reports of a simulated job, as the emulator serves them.
``faults``        transport faults and hostile content for the emulator.
``serve_folder``  jobs from a folder of label images or annotations (``emulator serve``).
``demo``          :func:`~cellcrowd.sim.demo.run_demo`: the whole round trip on loopback.
``testing``       :func:`~cellcrowd.sim.testing.assert_same_up_to_relabel` and friends.
"""

from __future__ import annotations

__all__: list[str] = []
