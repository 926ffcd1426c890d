"""The shape of the code, checked: the package's modules form no import circle, velo_am uses
velo_event only through its public API (``velo_event`` and ``velo_event.lowlevel``), no
module outgrows the ~500-line guide, and docs/architecture.md maps every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("velo_am", "velo_event")
MAX_LINES = 520  # the guide says ~500: a module past this wants splitting


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, wherever the import sits (TYPE_CHECKING blocks and
    function bodies included): an import circle is one however it is hidden. ``from P import
    m`` imports module ``P.m`` where there is one, else names of ``P``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    submodules = {module for package in PACKAGES for module in modules(package)}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in submodules else base)
    return found


def graph(package: str) -> dict[str, set[str]]:
    known = modules(package)
    return {
        name: {target for target in imports(name, path) if target in known and target != name}
        for name, path in known.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(edges[node]):
            if (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(edges):
        if (cycle := visit(start)) is not None:
            return cycle
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package: str) -> None:
    edges = graph(package)
    # A package's __init__ re-exports its modules; a module importing its own package is
    # the circle this test exists to catch, so nothing is exempt.
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_velo_am_uses_only_velo_events_public_api() -> None:
    public = {"velo_event", "velo_event.lowlevel"}
    for name, path in modules("velo_am").items():
        used = {module for module in imports(name, path) if module.split(".")[0] == "velo_event"}
        private = {module for module in used if module not in public and "._" in module}
        assert not private, f"{name} imports {sorted(private)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package: str) -> None:
    sizes = {
        name: len(path.read_text("utf-8").splitlines()) for name, path in modules(package).items()
    }
    large = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not large, f"modules over {MAX_LINES} lines: {large}"


def test_the_architecture_page_maps_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    missing = [
        name
        for package in PACKAGES
        for name, path in modules(package).items()
        if path.name != "__main__.py" and f"`{path.relative_to(ROOT)}`" not in page
    ]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
