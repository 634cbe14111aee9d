"""The package's layers, read from the source with `ast`: no import cycle between modules, each
part imports only the parts below it, and every module and package says what it owns.

Every import counts, also one inside a function; only those under `if TYPE_CHECKING:` do not
(they are never run). `TASKSYNC_LAYERS_ROOT` points the checks at another checkout's `sync/`
(to see them fail on a layout that breaks the rules).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ROOT

PACKAGE = Path(os.environ.get("TASKSYNC_LAYERS_ROOT", ROOT / "sync"))

# The parts, bottom up, and what each may import besides itself. A part is a top-level module
# or package of sync (`sync.server.walk` is in `server`); an entry with a dot is one module.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "files": {"errors"},
    "when": {"errors"},  # times people write (7d, yesterday, last month), read in a zone
    "config": {"errors", "files", "archive.urls", "jobs.crontab", "server.families"},
    "tasks": {"errors"},
    "server": {"errors", "tasks"},
    "archive": {"errors", "when", "files", "config", "tasks"},
    "images": {"errors", "files", "config", "tasks", "archive", "server.transport"},
    "console": {"errors", "when", "config", "tasks", "archive"},
    "jobs": {
        "errors",
        "when",
        "files",
        "config",
        "tasks",
        "server",
        "archive",
        "images",
        "console",
    },
    "views": {"errors", "when", "files", "config", "tasks", "server", "archive", "console"},
    "simulator": {"errors", "server.families"},
}
# Leaves inside a part, which parts below it read: they import no more than this.
LEAVES: dict[str, set[str]] = {
    "archive.urls": {"errors"},
    "jobs.crontab": {"errors"},
    "server.families": set(),  # the family names
}
EDGES = {"", "__main__", "cli", "app", "commands", "demo"}  # they put the parts together
DATA = {"deploy"}  # data only (the deployment kit): imports nothing, is imported by nothing


def modules(root: Path) -> dict[str, Path]:
    """Every module under `root`, by dotted name relative to the package (`server.walk`;
    a package by its own name, `server`; the package itself as "")."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere, but under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (by the names `modules` gives)."""
    mods = modules(root)
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            else:
                if node.level:
                    base = here[: len(here) - node.level + 1] if node.level > 1 else here
                    module = ".".join(["sync", *base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                wanted = [f"{module}.{a.name}" for a in node.names]  # a.b: a module, or a name in a
            for dotted in wanted:
                if not dotted.startswith("sync."):
                    continue
                rel = dotted.removeprefix("sync.")
                while rel and rel not in mods:  # a name defined in a module, not a module
                    rel = rel.rpartition(".")[0]
                if rel != name:
                    targets.add(rel)
        out[name] = targets
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round about (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def part(module: str) -> str:
    return module.split(".")[0]


def may_import(module: str, target: str) -> bool:
    """Whether `module` may import `target` by the rules above."""
    if part(module) in EDGES or (part(module) == part(target) and module not in LEAVES):
        return True
    allowed = LEAVES.get(module, ALLOWED.get(part(module), set()))
    return part(target) in allowed or target in allowed


def test_layers_have_no_import_cycle() -> None:
    """No module imports itself round about, not even from inside a function."""
    assert cycles(graph(PACKAGE)) == []


def test_layers_import_only_what_they_may() -> None:
    """Each part imports only the parts below it (servers and the archive never each other),
    and the leaves the settings read import no more than the errors."""
    g = graph(PACKAGE)
    unknown = sorted(
        m for m in g if part(m) not in ALLOWED and part(m) not in EDGES and part(m) not in DATA
    )
    assert unknown == [], "modules outside every part: place them in ALLOWED or EDGES"
    against = sorted(
        f"{m} -> {t}" for m, targets in g.items() for t in targets if not may_import(m, t)
    )
    assert against == []


def test_layers_every_module_says_what_it_owns() -> None:
    """Every module, and every package's `__init__.py`, opens with a docstring."""
    silent = [
        str(path.relative_to(PACKAGE))
        for path in modules(PACKAGE).values()
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert silent == []


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        pytest.param("views.status", "jobs.pipeline", False, id="a view importing a job"),
        pytest.param("server.client", "archive.store", False, id="server importing archive"),
        pytest.param("archive.engine", "server.pages", False, id="archive importing server"),
        pytest.param("images.client", "server.client", False, id="images using the task client"),
        pytest.param("images.client", "server.transport", True, id="images using the transport"),
        pytest.param("config", "jobs.crontab", True, id="config reading a leaf"),
        pytest.param("config", "jobs.pipeline", False, id="config reading a job"),
        pytest.param("config", "server.families.adapters", False, id="config loading adapters"),
        pytest.param("archive.urls", "config", False, id="a leaf importing config"),
        pytest.param("jobs.pipeline", "server.walk", True, id="a job using the server"),
        pytest.param("commands.reading", "views.status", True, id="an edge using anything"),
    ],
)
def test_layers_rules_tell_allowed_from_refused(module: str, target: str, allowed: bool) -> None:
    """The rules themselves: what they let through and what they refuse."""
    assert may_import(module, target) is allowed
