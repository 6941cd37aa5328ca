"""The library never imports the simulators (``cellcrowd.sim``); their old paths still work.

Only the CLI's ``demo`` and ``emulator serve`` commands import ``cellcrowd.sim``, inside
the command functions; the deprecated shims (old module paths) forward to it lazily.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import cellcrowd

SRC = Path(cellcrowd.__file__).resolve().parent

#: Old module paths kept as DeprecationWarning shims (cellcrowd/_moved.py does the work).
SHIMS = {
    "cellcrowd.synthetic": "cellcrowd.sim.synthetic",
    "cellcrowd.demo": "cellcrowd.sim.demo",
    "cellcrowd.testing": "cellcrowd.sim.testing",
    "cellcrowd.appen.emulator": "cellcrowd.sim.emulator",
    "cellcrowd.appen.crowd": "cellcrowd.sim.crowd",
    "cellcrowd.appen.annotators": "cellcrowd.sim.annotators",
    "cellcrowd.appen.live": "cellcrowd.sim.live",
    "cellcrowd.appen.faults": "cellcrowd.sim.faults",
    "cellcrowd.appen.serve_folder": "cellcrowd.sim.serve_folder",
}
#: Functions allowed to import cellcrowd.sim (lazily, when the command runs).
LAZY_COMMANDS = {("cellcrowd.cli", "_cmd_demo"), ("cellcrowd.cli", "_cmd_emulator")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> list[tuple[str, Path]]:
    """Every module of the package outside ``cellcrowd.sim`` and the shims."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        if not (name == "cellcrowd.sim" or name.startswith("cellcrowd.sim.") or name in SHIMS):
            found.append((name, path))
    return found


def is_sim(name: str) -> bool:
    return name == "cellcrowd.sim" or name.startswith("cellcrowd.sim.")


def imported_names(module: str, path: Path, node: ast.AST) -> list[str]:
    """Absolute names of the modules an import statement imports (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
    base = f"{package}.{node.module}" if node.level and node.module else (
        package if node.level else node.module or "")
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


class SimImports(ast.NodeVisitor):
    """Imports of cellcrowd.sim outside the allowed command functions and type checks."""

    def __init__(self, module: str, path: Path) -> None:
        self.module, self.path = module, path
        self.function: str | None = None
        self.found: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self.function = self.function, self.function or node.name
        self.generic_visit(node)
        self.function = outer

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test) in ("TYPE_CHECKING", "_typing.TYPE_CHECKING",
                                      "typing.TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return  # never runs: type-only imports
        self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> None:
        allowed = (self.module, self.function) in LAZY_COMMANDS
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not allowed:
            for name in imported_names(self.module, self.path, node):
                if is_sim(name):
                    self.found.append(f"{self.module}:{node.lineno}: imports {name}")
        super().generic_visit(node)


def sim_imports(module: str, path: Path) -> list[str]:
    visitor = SimImports(module, path)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return sorted(set(visitor.found))


def test_the_check_sees_imports_of_sim() -> None:
    """The checker itself: each spelling of an import of cellcrowd.sim is caught."""
    for code in ("from .sim import demo", "from .sim.emulator import Emulator",
                 "import cellcrowd.sim.synthetic", "def f():\n    from cellcrowd.sim import x",
                 "from cellcrowd import sim"):
        found = SimImports("cellcrowd.labels", SRC / "labels.py")
        found.visit(ast.parse(code))
        assert found.found, code
    visitor = SimImports("cellcrowd.cli", SRC / "cli.py")
    visitor.visit(ast.parse("def _cmd_demo(a):\n    from .sim.demo import run_demo\n"
                            "if TYPE_CHECKING:\n    from .sim.emulator import Emulator"))
    assert visitor.found == []


@pytest.mark.parametrize(("module", "path"), library_modules(), ids=lambda v: str(v))
def test_the_library_never_imports_the_simulators(module: str, path: Path) -> None:
    assert sim_imports(module, path) == []


def test_importing_the_library_loads_no_simulator() -> None:
    modules = [name for name, _ in library_modules() if not name.endswith("__main__")]
    code = ("import sys\n"
            f"for name in {modules!r}:\n"
            "    __import__(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('cellcrowd.sim')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stdout.strip() == "[]"
    assert len(modules) > 40  # the walk found the library


@pytest.mark.parametrize(("old", "new"), sorted(SHIMS.items()))
def test_old_paths_warn_and_give_the_moved_objects(old: str, new: str) -> None:
    shim = importlib.import_module(old)  # importing the shim itself is silent
    target = importlib.import_module(new)
    name = target.__all__[0]
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {new}"):
        value = getattr(shim, name)
    assert value is getattr(target, name)
    assert name in dir(shim)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        _ = shim.nothing_here


def test_the_appen_package_forwards_its_old_simulator_names() -> None:
    import cellcrowd.appen
    from cellcrowd.sim.crowd import CrowdJob
    from cellcrowd.sim.emulator import Emulator

    with pytest.warns(DeprecationWarning, match="cellcrowd.appen.Emulator moved"):
        assert cellcrowd.appen.Emulator is Emulator
    with pytest.warns(DeprecationWarning, match="cellcrowd.appen.CrowdJob moved"):
        assert cellcrowd.appen.CrowdJob is CrowdJob
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = cellcrowd.appen.Nothing
    assert cellcrowd.Emulator is Emulator  # the top-level name stays (lazily, no warning)
