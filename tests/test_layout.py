"""The package's layout (docs/ARCHITECTURE.md): subpackages in layers that import only downward, no import cycle
between modules, no import inside a function except of an optional extra, no private name imported from another
module, no module over ``MAX_MODULE_LINES`` lines and no function over ``MAX_FUNCTION_LINES`` lines of code (issue 18),
every module in docs/ARCHITECTURE.md."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "zf"
#: bottom to top; a module may import its own layer's modules and those of the layers below
LAYERS = [("zf.errors", "zf.faults", "zf.data", "zf.download", "zf.tracking"),
          ("zf.net",), ("zf.projection",), ("zf.mining",),
          ("zf.views",), ("zf.training",), ("zf.experiments",), ("zf.jobs",), ("zf.edge",), ("zf.explore",)]
#: imported inside functions only: optional extras (zf.explore.app needs Flask), and matplotlib (its backend is
#: picked at first use)
LAZY_OK = ("matplotlib", "wandb", "timm", "safetensors", "zf.explore.app")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(p.read_text(), str(p))
    return out


def layer(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return i
    return -1  # the package's __init__


def zf_imports(tree: ast.Module, top_only: bool):
    nodes = tree.body if top_only else ast.walk(tree)
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("zf"):
            yield n, n.module, [a.name for a in n.names]
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("zf"):
                    yield n, a.name, []


def test_imports_go_down_only():
    mods = modules()
    wrong = []
    for name, tree in mods.items():
        for _, target, names in zf_imports(tree, top_only=False):
            for full in [f"{target}.{n}" for n in names if f"{target}.{n}" in mods] or [target]:
                if layer(full) > layer(name):
                    wrong.append(f"{name} imports {full}")
    assert not wrong, wrong


def test_no_import_cycle():
    mods = modules()
    graph = {}
    for name, tree in mods.items():
        deps = set()
        for _, target, names in zf_imports(tree, top_only=False):
            deps |= {f"{target}.{n}" for n in names if f"{target}.{n}" in mods} or {target}
        graph[name] = {d for d in deps if d in mods and d != name}
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(path + [n, d]))
            if d not in state:
                visit(d, path + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_no_import_inside_functions_but_extras():
    lazy = []
    for name, tree in modules().items():
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for m in ast.walk(n):
                    if isinstance(m, (ast.Import, ast.ImportFrom)):
                        mod = m.module if isinstance(m, ast.ImportFrom) else m.names[0].name
                        if not (mod or "").startswith(LAZY_OK):
                            lazy.append(f"{name}:{m.lineno} {mod}")
    assert not lazy, lazy


def test_no_private_names_across_modules():
    found = [f"{name} imports {target}.{n}" for name, tree in modules().items()
             for _, target, names in zf_imports(tree, top_only=False) for n in names if n.startswith("_")]
    assert not found, found


def test_no_module_getattr():
    found = [name for name, tree in modules().items()
             if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)]
    assert not found, found


def test_matplotlib_backend_is_left_to_the_scripts():
    """The library never calls ``matplotlib.use``: a notebook keeps its backend; the scripts and the ``zf`` command's
    entry point (``zf.edge.command``) pick Agg."""
    found = [name for name, tree in modules().items() if name != "zf.edge.command" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "use"
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "matplotlib"]
    assert not found, found


def code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """The lines of ``fn``'s body that hold code: its docstring, blank lines and comment lines left out (nested
    functions count as part of it)."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    rows = {i for stmt in body for i in range(stmt.lineno, stmt.end_lineno + 1)}
    return sum(1 for i in rows if lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def test_code_lines_counts_code_only():
    src = 'def f(x):\n    """Doc\n    string."""\n    # a comment\n\n    y = (x +\n         1)\n    return y\n'
    assert code_lines(ast.parse(src).body[0], src.splitlines()) == 3


def test_modules_and_functions_are_short():
    """A module a reader can hold (at most ``MAX_MODULE_LINES`` lines) and functions that fit on a screen (at most
    ``MAX_FUNCTION_LINES`` lines of code)."""
    long_modules, long_functions = [], []
    for p in sorted(ROOT.rglob("*.py")):
        lines = p.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            long_modules.append(f"{p.relative_to(ROOT.parent)}: {len(lines)} lines")
        for n in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(n, lines) > MAX_FUNCTION_LINES:
                long_functions.append(f"{p.relative_to(ROOT.parent)}:{n.lineno} {n.name}: {code_lines(n, lines)}")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_architecture_lists_every_module():
    """docs/ARCHITECTURE.md names every module of the package (a subpackage's ``__init__`` by its folder)."""
    doc = (ROOT.parent / "docs" / "ARCHITECTURE.md").read_text()
    missing = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).as_posix()
        if p.name == "__init__.py":
            rel = rel[:-len("__init__.py")]
            if p.parent == ROOT or len(p.read_text().splitlines()) < 20:  # a package docstring only
                continue
        if f"`{rel}`" not in doc and f"`{rel.rstrip('/')}`" not in doc:
            missing.append(rel)
    assert not missing, missing
