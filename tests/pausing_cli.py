"""``python tests/pausing_cli.py ARGS...``: the ``cellcrowd`` command, paused at a known point.

The interruption tests start this instead of ``python -m cellcrowd`` to kill a run at
a known point. With ``CELLCROWD_TEST_PAUSE_AFTER=stage:N`` in the environment a run
sleeps (for ``CELLCROWD_TEST_PAUSE_SECONDS``, default 600) once ``N`` items of
``stage`` are done (``N = 0``: before the stage's first item; ``N = end``: after its
outputs are written but before its manifest entry is committed), after creating the
file named by ``CELLCROWD_TEST_PAUSE_SIGNAL`` if set. It does so through the engine's
observers (:data:`cellcrowd.pipeline.engine.observers`); each run gets a fresh
:class:`Pause`, so a watch pauses in the first harvest that gets there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

PAUSE_ENV = "CELLCROWD_TEST_PAUSE_AFTER"
SIGNAL_ENV = "CELLCROWD_TEST_PAUSE_SIGNAL"
SECONDS_ENV = "CELLCROWD_TEST_PAUSE_SECONDS"


class Pause:
    """A :class:`cellcrowd.pipeline.engine.StageObserver` that sleeps at ``stage:N``."""

    def __init__(self, spec: str, *, seconds: float = 600.0, signal: str | None = None
                 ) -> None:
        self.stage, _, count = spec.partition(":")
        self.at_end = count == "end"
        self.count: int | None = None
        if self.stage and not self.at_end:
            try:
                self.count = int(count or 0)
            except ValueError:
                raise ValueError(
                    f"{PAUSE_ENV}={spec!r}: expected 'stage:N' or 'stage:end'") from None
        self.seconds, self.signal = seconds, signal
        self.done = 0
        self.paused = False

    @classmethod
    def factory(cls, env: Mapping[str, str]) -> Callable[[], Pause]:
        """Makes a fresh pause per run from ``env`` (checked now, once)."""
        spec = env.get(PAUSE_ENV, "")
        seconds, signal = float(env.get(SECONDS_ENV, "600")), env.get(SIGNAL_ENV)
        cls(spec)  # a bad spec fails before any run

        def make() -> Pause:
            return cls(spec, seconds=seconds, signal=signal)

        return make

    def started(self, stage: str) -> None:
        self.advanced(stage, 0)

    def advanced(self, stage: str, count: int) -> None:
        if stage != self.stage or self.count is None or self.paused:
            return
        self.done += count
        if self.done >= self.count:
            self._sleep(stage, f"after {self.done} items")

    def written(self, stage: str) -> None:
        if stage == self.stage and self.at_end and not self.paused:
            self._sleep(stage, "before its manifest entry")

    def _sleep(self, stage: str, where: str) -> None:
        from cellcrowd.files import atomic_write_text, confine

        self.paused = True
        if self.signal:
            with confine(Path(self.signal).parent):  # the test's folder, not the harvest's
                atomic_write_text(self.signal, f"{stage} {where}\n")
        time.sleep(self.seconds)


def main(argv: list[str] | None = None) -> int:
    """Install the pause from the environment and run the ``cellcrowd`` command."""
    from cellcrowd.cli import main as cellcrowd_main
    from cellcrowd.pipeline.engine import observers

    try:
        make = Pause.factory(os.environ)
    except ValueError as exc:
        print(f"pausing_cli: {exc}", file=sys.stderr)
        return 2
    observers.append(make)
    return cellcrowd_main(argv)


if __name__ == "__main__":
    sys.exit(main())
