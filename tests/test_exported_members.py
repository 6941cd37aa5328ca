from __future__ import annotations

import importlib
import pkgutil

import pytest

import cellcrowd


def test_all_exports_exist_and_are_sorted() -> None:
    names = cellcrowd.__all__
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    order = sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    assert names == order
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(cellcrowd, name), name
    public = {n for n in vars(cellcrowd) if not n.startswith("_")} - {"annotations"}
    modules = {m.name for m in pkgutil.iter_modules(cellcrowd.__path__)}
    assert public - set(names) - modules == set()


@pytest.mark.parametrize(
    "module",
    sorted(m.name for m in pkgutil.walk_packages(cellcrowd.__path__, "cellcrowd.")),
)
def test_every_module_lists_what_it_exports(module: str) -> None:
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    if module.endswith("__main__"):
        return
    assert exported is not None, f"{module} has no __all__"
    for name in exported:
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which does not exist"


def test_import_is_light_and_names_load_on_first_use() -> None:
    import subprocess
    import sys

    heavy = ("numpy", "httpx", "pydantic", "skimage", "cellcrowd.sim.emulator")
    code = ("import sys, cellcrowd; "
            f"print([m for m in {heavy!r} if m in sys.modules]); "
            "cellcrowd.TileGrid; print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"  # the name was imported on first use
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = cellcrowd.nothing_here
