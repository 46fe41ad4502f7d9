"""The import graph is a stack and every module keeps its private names to itself.

Read from the source with `ast` (function-local imports included): ops -> pangu -> mindvl -> models ->
parallel_strategies -> recipes; a package never imports one above it, no two files import each other
(directly or through a circle), and no module uses another module's `_private` name.
"""
import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = ("ops", "pangu", "mindvl", "models", "parallel_strategies", "recipes")


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every product module."""
    out = {}
    for pkg in STACK:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The product module an imported name lives in (longest known prefix), or None (stdlib, mindspore)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, tree) -> tuple[list, dict]:
    """([(imported module, imported name or None, line)], {local alias: product module}) of `tree`."""
    out, aliases = [], {}
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, None, node.lineno))
                if a.asname and a.name in MODULES:
                    aliases[a.asname] = a.name
                elif a.name.split(".")[0] in MODULES:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:
                    out.append((sub, None, node.lineno))
                    aliases[a.asname or a.name] = sub
                else:
                    out.append((base, a.name, node.lineno))
    return out, aliases


def _graph():
    edges, private = {}, []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        imports, aliases = _imports(module, tree)
        for target, name, line in imports:
            resolved = _resolve(target)
            if resolved is None or resolved == module:
                continue
            edges.setdefault(module, set()).add(resolved)
            if resolved.rpartition(".")[2].startswith("_") and not resolved.endswith("__init__") \
                    and resolved.split(".")[0] != module.split(".")[0]:
                private.append(f"{module}:{line} imports the private module {resolved}")
            if name is not None and name.startswith("_") and not name.startswith("__"):
                private.append(f"{module}:{line} imports {resolved}.{name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] != module
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return edges, private


EDGES, PRIVATE = _graph()


def test_packages_only_import_down_the_stack():
    level = {pkg: i for i, pkg in enumerate(STACK)}
    up = [f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
          if level[b.split(".")[0]] > level[a.split(".")[0]]]
    assert not up, up


def test_models_never_import_the_tools():
    tools = ("recipes", "parallel_strategies")
    bad = [f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
           if a.split(".")[0] in ("ops", "pangu", "mindvl") and b.split(".")[0] in tools]
    assert not bad, bad


def test_no_import_cycle_between_files():
    sys.setrecursionlimit(10000)
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):   # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in EDGES.get(v, ()):
            # a package's __init__ importing its own submodules is how a package is built, not a cycle
            if v == w.rpartition(".")[0] and MODULES[v].endswith("__init__.py"):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_uses_another_modules_private_names():
    assert not PRIVATE, PRIVATE


@pytest.mark.parametrize("package", ["pangu", "mindvl", "ops"])
def test_the_graph_reader_sees_the_real_imports(package):
    """The checks above are not vacuous: the reader finds this package's imports down the stack."""
    assert any(b.split(".")[0] != a.split(".")[0] or package == "ops"
               for a, targets in EDGES.items() if a.split(".")[0] == package for b in targets)
    assert any(a.split(".")[0] == package for a in EDGES)
