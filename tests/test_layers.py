"""The package's layering, checked from the source (every import, including those under
``TYPE_CHECKING`` and inside functions): no import cycle among the gateway's modules, and a
pure core that never reaches aiohttp, asyncio, redis or the edge, directly or through another
module of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Sans-IO: plain functions and small classes over bytes and values.
CORE = {
    "gateway.bootstrap",
    "gateway.body",
    "gateway.circuit",
    "gateway.codings",
    "gateway.config",
    "gateway.crossings",
    "gateway.events",
    "gateway.firstparty",
    "gateway.hosts",
    "gateway.identity",
    "gateway.inbound",
    "gateway.keys",
    "gateway.links",
    "gateway.outbound",
    "gateway.options",
    "gateway.store_url",
    "gateway.headers",
    "gateway.status",
    "gateway.strategies",
    # The standard library's ssl only: config.py checks CA files with the loader it uses.
    "gateway.tls",
}
# The rewriter library and any other module whose name marks it as core.
CORE_PREFIXES = ("gateway.html", "gateway.rewriter", "gateway._html", "gateway.charset")
CORE_OPTIONAL = {"gateway.params", "gateway.store_url", "gateway.codings"}
FORBIDDEN = ("aiohttp", "asyncio", "redis", "yarl", "uvloop", "httptools", "prometheus_client")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


KNOWN = set(modules())


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``name`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            # "from . import responses" imports a module, not a name of the package: then the
            # package itself is not what is imported (it is already being initialised).
            submodules = {f"{target}.{alias.name}" for alias in node.names}
            found.update(submodules)
            if not all(m in KNOWN for m in submodules):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        edges[name] = {i for i in imports_of(name, path) if i in known and i != name}
    return edges


def is_core(name: str) -> bool:
    return name in CORE or name in CORE_OPTIONAL or name.startswith(CORE_PREFIXES)


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_core_imports_no_io_and_no_edge_module() -> None:
    known = modules()
    problems = []
    for name, path in sorted(known.items()):
        if not is_core(name):
            continue
        for imported in sorted(imports_of(name, path)):
            top = imported.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"{name} imports {imported}")
            elif imported in known and not is_core(imported) and imported != "gateway":
                problems.append(f"{name} imports the edge module {imported}")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above would fail: the import reader resolves relative imports, including
    ``from . import x`` and imports inside ``if TYPE_CHECKING:``."""
    pkg = tmp_path / "gateway"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
    )
    (pkg / "b.py").write_text("from . import a\nimport asyncio\n")
    assert imports_of("gateway.a", pkg / "a.py") >= {"gateway.b"}
    assert imports_of("gateway.b", pkg / "b.py") >= {"gateway.a", "asyncio"}


def test_the_edge_modules_exist() -> None:
    """The layers named above are real modules (a rename must update this file)."""
    known = modules()
    assert {m for m in CORE if m not in known} == set()


def test_every_module_has_a_line_in_the_readme() -> None:
    """The README's "Where things live" table names every module (a newcomer finds each
    responsibility in the file named after it)."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    missing = []
    for name, path in sorted(modules().items()):
        if path.name == "__init__.py" or "demo" in path.parts or "html" in path.parts:
            continue  # packages are listed as folders
        if f"`{path.name}`" not in table and f"gateway/{path.name}" not in table:
            missing.append(name)
    for folder in ("gateway/html/", "gateway/demo/"):
        assert folder in table
    assert not missing, missing
