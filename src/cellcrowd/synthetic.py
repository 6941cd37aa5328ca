"""Moved to :mod:`cellcrowd.sim.synthetic`: names taken from here warn (DeprecationWarning)."""

from __future__ import annotations

from typing import Any

from ._moved import moved_attribute, moved_names

__all__: list[str] = []  # nothing new is exported from here


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, "cellcrowd.sim.synthetic", name)


def __dir__() -> list[str]:
    return moved_names("cellcrowd.sim.synthetic")
