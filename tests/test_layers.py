"""The layer order of the Python folders, enforced: every import (top level or inside a function) of an
``accllm.*`` module must point to the same folder or a lower one, and no two modules may import each other
through any chain. The order is declared once, in ``accllm.host.flow_steps.LAYERS`` (the flow hashes a step's code
by it), and shown in the README's layout table."""
from __future__ import annotations

import ast
from pathlib import Path

from accllm.host.flow_steps import LAYERS  # bottom to top: a folder imports only from itself and those before it

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "accllm." + ".".join(parts)


def _imports(path: Path, module: str):
    """(line, imported module) for every accllm import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("accllm."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("accllm."):
                continue
            # ``from accllm.sim import golden`` imports the submodule ``accllm.sim.golden``.
            names = [f"{target}.{a.name}" for a in node.names]
            yield node.lineno, target
            for n in names:
                yield node.lineno, n


def _source_files():
    for layer in LAYERS:
        folder = ROOT / layer
        for path in sorted(folder.rglob("*.py")):
            yield layer, path


def import_graph():
    modules = {_module_name(p): (layer, p) for layer, p in _source_files()}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    upward = []
    for module, (layer, path) in modules.items():
        for line, target in _imports(path, module):
            if target not in modules:
                continue  # a name imported from a module, not a submodule
            if target == module:
                continue
            t_layer = modules[target][0]
            if LAYERS.index(t_layer) > LAYERS.index(layer):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {layer} imports {target} (layer {t_layer})")
            edges[module].add(target)
    return modules, edges, upward


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_folder_is_a_declared_layer():
    python_folders = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert python_folders <= set(LAYERS), f"undeclared Python folders: {sorted(python_folders - set(LAYERS))}"


def test_no_import_of_a_higher_layer():
    _, _, upward = import_graph()
    assert not upward, f"{len(upward)} upward import(s):\n" + "\n".join(upward)


def test_no_import_cycles():
    modules, edges, _ = import_graph()
    cycles = _cycles(edges)
    where = []
    for comp in cycles:
        members = set(comp)
        for m in comp:
            path = modules[m][1]
            for line, target in _imports(path, m):
                if target in members and target != m:
                    where.append(f"{path.relative_to(ROOT)}:{line}: {m} -> {target}")
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(sorted(set(where)))


def test_the_checker_sees_function_level_imports(tmp_path):
    src = "def f():\n    from accllm.host import flow\n"
    p = tmp_path / "x.py"
    p.write_text(src)
    assert list(_imports(p, "accllm.sim.x")) == [(2, "accllm.host"), (2, "accllm.host.flow")]
