"""Exports of harvested movies: DeepCell ``.npz`` (:mod:`cellcrowd.export.npz`), and more."""

from __future__ import annotations

from .npz import load_npz, load_part, write_part_npz, write_parts_npz

__all__ = ["load_npz", "load_part", "write_part_npz", "write_parts_npz"]
