"""The layout is the architecture: no import cycles, data flows one way between subpackages,
modules stay small.  Reads the source (``ast``), imports nothing."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "acpx_trio"
#: ~500 lines is a smell to look at, not a rule to split by (issue 20: never split a module
#: just to pass a count); past this hard stop a module almost surely holds two concepts.
MAX_LINES = 600
#: Over the hard stop; each to be reshaped by concept, then removed here.
TOO_LONG_FOR_NOW: set[str] = set()

#: subpackage -> what its module-level imports may reach (besides itself and the leaf
#: modules ``_errors``, ``_events``, ``_log`` and ``_version``).  Mirrors each ``__init__``
#: docstring.
ALLOWED = {
    "_store": set(),
    "_acp": set(),
    "_process": {"_store", "_acp"},
    "_runtime": {"_process", "_acp", "_store"},
    "_service": {"_process", "_store"},  # the runtime only lazily (LazyAcpxRuntime)
    "_cli": {"_service", "_runtime", "_process", "_store", "_acp", "_owner"},
    # the service and runtime only lazily (in the owner process); _acp for stream_tap
    "_owner": {"_store", "_acp"},
    "testing": {"_store", "_acp", "_process", "_runtime", "_service"},
}
LEAVES = {"_errors", "_events", "_jsontext", "_log", "_version"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = path
    return out


def _top_level_imports(path: Path) -> set[str]:
    """acpx_trio modules imported at module level (not under TYPE_CHECKING, not in functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("acpx_trio"):
                found.add(node.module)
                for alias in node.names:
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("acpx_trio"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _top_level_imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_subpackages_import_only_downwards() -> None:
    bad = []
    for name, deps in _graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue
        own = parts[1]
        for dep in deps:
            target = dep.split(".")[1]
            if target in (own, *LEAVES) or target in ALLOWED[own]:
                continue
            bad.append(f"{name} imports {dep}")
    assert not bad, bad


def test_modules_stay_small() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert set(long) <= TOO_LONG_FOR_NOW, long


def test_few_modules_at_the_top() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 12, top
