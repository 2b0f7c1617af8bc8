"""The house rules, checked from the source: no import cycles, no imports of another module's underscore names,
no file over ~600 lines, and each subpackage imports only the stages it may (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "emofast"
MAX_LINES = 600
COMPILED = {"_C"}  # the compiled extension is a module named _C, not a private name

# subpackage -> subpackages it must not import (function-level imports included)
FORBIDDEN = {
    "data": {"capture", "backends", "probe", "commands", "report", "cli"},
    "kernels": {"capture", "backends", "probe", "data", "commands", "report", "cli"},
    "capture": {"probe", "commands", "report", "cli"},
    "backends": {"probe", "commands", "report", "cli"},
    "probe": {"commands", "report", "cli"},
    "report": {"capture", "backends", "commands", "cli"},
    "commands": {"cli"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import in the file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # "from . import x" where x is a module
            for n in names:
                if f"{target}.{n}" in modules:
                    out.append((f"{target}.{n}", []))
            out.append((target, [n for n in names if f"{target}.{n}" not in modules]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return [(t, n) for t, n in out if t == "emofast" or t.startswith("emofast.")]


MODULES = _modules()
GRAPH = {m: _imports(m, p, MODULES) for m, p in MODULES.items()}


def test_no_module_imports_another_modules_private_names():
    bad = [
        f"{m} imports {n} from {t}"
        for m, edges in GRAPH.items()
        for t, names in edges
        for n in names
        if n.startswith("_") and not n.startswith("__") and t != m and n not in COMPILED
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Every import counts, also one inside a function: a cycle there is still two modules that need each other."""
    graph = {m: {t for t, _ in edges if t in MODULES and t != m} for m, edges in GRAPH.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of ideas; drop edges module -> own package
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t) :] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_file_size(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name]} has {n} lines (the house limit is ~{MAX_LINES})"


def test_stages_import_only_what_they_may():
    bad = []
    for m, edges in GRAPH.items():
        parts = m.split(".")
        if len(parts) < 2 or parts[1] not in FORBIDDEN:
            continue
        for t, _ in edges:
            tp = t.split(".")
            if len(tp) > 1 and tp[1] in FORBIDDEN[parts[1]]:
                bad.append(f"{m} imports {t}")
    assert not bad, "\n".join(bad)


def test_every_public_module_declares_all():
    missing = [
        m
        for m, p in MODULES.items()
        if not p.name.startswith("_")
        and p.name not in ("__init__.py",)
        and "__all__" not in p.read_text()
        and not m.endswith(("cli", "__main__"))
    ]
    assert not missing, missing


def test_setup_lists_every_subpackage():
    """A non-editable install ships only the packages setup.py lists: a new stage folder must be added there."""
    setup_py = (ROOT.parent / "setup.py").read_text()
    for init in ROOT.rglob("__init__.py"):
        pkg = ".".join(init.parent.relative_to(ROOT.parent).parts)
        if ".data.datasets." in pkg + ".":
            continue  # found by find_namespace_packages
        assert f'"{pkg}"' in setup_py, f"{pkg} is missing from setup.py's packages"
