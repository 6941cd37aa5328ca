"""``python -m cellcrowd``: the same as the ``cellcrowd`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
