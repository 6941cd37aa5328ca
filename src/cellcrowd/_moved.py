"""Old import paths of the simulators, kept working with a :class:`DeprecationWarning`.

The simulators (synthetic movies, the crowd, the emulator, the demo) moved to
:mod:`cellcrowd.sim`, which the library never imports. Each old module
(``cellcrowd.synthetic``, ``cellcrowd.appen.emulator`` …) is a shim whose
module-level ``__getattr__`` calls :func:`moved_attribute`: importing the shim is
silent, taking a name from it warns once per use and returns the new module's object.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = ["moved_attribute", "moved_names"]


def moved_attribute(old: str, new: str, name: str) -> Any:
    """``new.name``, with a DeprecationWarning naming the import to use instead.

    Raises AttributeError (as a module does) when ``new`` has no ``name``.
    """
    if name.startswith("__"):  # dunder probes (copy, pickle, doctest) are no use of the shim
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    module = importlib.import_module(new)
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
    warnings.warn(f"{old}.{name} moved to {new}: import it from there "
                  "(the old name will be removed)", DeprecationWarning, stacklevel=3)
    return value


def moved_names(new: str) -> list[str]:
    """The public names of ``new`` (for a shim's ``__dir__``)."""
    return sorted(getattr(importlib.import_module(new), "__all__", []))
