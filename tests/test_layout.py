"""The layout keeps its promises: a curated public API, small modules, and layers that do not leak."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import thatdam_bus

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "thatdam_bus"
MAX_MODULE_LINES = 400


def test_public_api_is_exactly_all() -> None:
    public = {name for name in dir(thatdam_bus) if not name.startswith("_")}  # the lazy frames names too
    modules = {name for name in public if type(getattr(thatdam_bus, name)).__name__ == "module"}
    assert sorted(thatdam_bus.__all__) == sorted(public - modules)
    for name in thatdam_bus.__all__:
        assert getattr(thatdam_bus, name) is not None


def test_modules_stay_small() -> None:
    too_long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"split these modules (one concept each): {too_long}"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_never_imports_handlers_or_cli() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        bad = {n for n in _imports(path)
               if n in {"handlers", "thatdam_bus.cli"} or n.startswith(("handlers.", "thatdam_bus.cli."))}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders


def test_handlers_use_only_the_public_api() -> None:
    for path in (ROOT / "handlers").rglob("*.py"):
        internal = {n for n in _imports(path) if n.startswith("thatdam_bus.")}
        assert not internal, f"{path.name} reaches into {sorted(internal)}; use `from thatdam_bus import ...`"


@pytest.mark.timeout(600)
def test_every_module_imports_on_its_own() -> None:
    """A fresh interpreter per module catches import cycles that a warm test process hides."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    )
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"

    def import_alone(module: str) -> str | None:
        result = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        return None if result.returncode == 0 else f"{module}: {result.stderr[-500:]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [failure for failure in pool.map(import_alone, modules) if failure]
    assert not failures, "\n".join(failures)
