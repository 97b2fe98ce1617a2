"""The package's import graph has no cycle, lazy (function-level) imports included.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` statement anywhere in a module, mapped to the package's modules. Importing a
package's names (``from pkg import name``) is an edge to its ``__init__``; ``from pkg import mod``
is an edge to ``pkg.mod`` only (the parent packages' ``__init__`` run first, but do not count).
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source directory of each installed package (setup.cfg's package_dir: search/ and export/
# install as elasticvit_tf.search and elasticvit_tf.export), every subpackage included.
ROOTS = {
    "elasticvit_tf": "elasticvit_tf",
    "elasticvit_tf.search": "search",
    "elasticvit_tf.export": "export",
}


def _package_dirs() -> dict[str, str]:
    out = {}
    for pkg, d in ROOTS.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, d)):
            dirnames[:] = [n for n in dirnames if not n.startswith((".", "__"))]
            if "__init__.py" not in files:
                continue
            rel = os.path.relpath(dirpath, os.path.join(ROOT, d))
            name = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            out.setdefault(name, os.path.relpath(dirpath, ROOT))
    return out


PACKAGE_DIRS = _package_dirs()
# Cycles allowed, each as the sorted tuple of its modules: none.
KNOWN_CYCLES: set = set()


def _modules() -> dict[str, str]:
    """Module name -> source path."""
    out = {}
    for pkg, d in PACKAGE_DIRS.items():
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".py"):
                name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                out[name] = os.path.join(ROOT, d, f)
    return out


def _imports(name: str, path: str, modules) -> set[str]:
    """The package modules that module ``name`` imports (anywhere in its body)."""
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path).read(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            # ``from pkg import mod`` imports the module; ``from mod import name`` the module
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            # the module itself, else its closest enclosing package module
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_graph_sees_lazy_imports():
    graph = import_graph()
    # stages imports the training library inside a function only
    assert "elasticvit_tf.train.train_lib" in graph["elasticvit_tf.pipeline.stages"]
    assert "elasticvit_tf.search.search_lib" in graph["elasticvit_tf.pipeline.stages"]


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [("a", "b", "c")]


def test_no_import_cycle():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles in the package: {found}"
