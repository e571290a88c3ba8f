"""The import layers of docs/architecture.md, enforced.

Every import in ``medae/`` is read from the source (module level and inside functions alike:
an import moved into a function to dodge a cycle is still an edge), and

- the graph of all of them has no cycle;
- each points down the layers (or stays inside its own package), never up or sideways to
  another package of the same layer;
- a few rules say more than the layers (evaluation reads written outputs, not models);
- every module imports on its own in a fresh interpreter, and the NumPy-only modules do so
  without loading torch or MONAI.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medae"

#: top to bottom; a module may import from its own package and from the layers below its own.
#: Packages in one layer are independent of each other (io never imports models, scoring never
#: imports samples, batch never imports train).  ``medae`` is the package root, the public facade.
LAYERS: list[tuple[str, ...]] = [
    ("medae", "medae.__main__"),
    ("medae.cli",),
    ("medae.demo", "medae.convert", "medae.calibrate"),
    ("medae.batch", "medae.train", "medae.evaluation"),
    ("medae.overlay", "medae.report", "medae.synthetic"),
    ("medae.scoring", "medae.samples"),
    ("medae.bundle",),
    ("medae.preprocess", "medae.config"),
    ("medae.brain", "medae.bias", "medae.register"),
    ("medae.io", "medae.models", "medae.masks", "medae.curves", "medae.device", "medae.itk"),
    ("medae.errors", "medae.version"),
]

#: rules beyond the layers: package -> packages (or third-party modules) it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # evaluation reads written outputs (maps, CSVs), never a model
    "medae.evaluation": ("medae.scoring", "medae.models", "medae.bundle", "medae.samples",
                         "medae.device", "torch", "monai"),
    # networks never read files
    "medae.models": ("medae.io",),
    # the demo data generator is NumPy / SciPy / nibabel / pydicom only
    "medae.synthetic": ("torch", "monai"),
}

#: known violations in files this refactor's first part could not edit, each with its reason;
#: the test fails when one of them disappears, so the list cannot go stale
KNOWN: dict[tuple[str, str], str] = {
}

#: modules that must import without torch or MONAI (a fresh interpreter checks sys.modules)
TORCH_FREE = ("medae", "medae.io", "medae.masks", "medae.curves", "medae.config",
              "medae.scoring",
              "medae.scoring.heatmap", "medae.scoring.threshold", "medae.scoring.candidates",
              "medae.evaluation", "medae.synthetic", "medae.overlay", "medae.report",
              "medae.register", "medae.itk")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of module ``name``; medae
    names resolve to the module that holds them, others to their top-level package."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if _is_package(name) else name.rpartition(".")[0]
    out: list[tuple[str, int, bool]] = []

    def target(module: str) -> str:
        if module == "medae" or module.startswith("medae."):
            while module not in MODULES:  # an attribute of a module, not a module
                module = module.rpartition(".")[0]
            return module
        return module.split(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue  # never runs
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((target(a.name), child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    out.append((target(full if full in MODULES else module), child.lineno,
                                in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def _unit(name: str) -> tuple[str, int] | None:
    """The layered package that holds module ``name`` and its layer (0 = top)."""
    best = None
    for level, units in enumerate(LAYERS):
        for unit in units:
            inside = name == unit or (unit != "medae" and name.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[0])):
                best = (unit, level)
    return best


def _edges() -> list[tuple[str, str, int, bool]]:
    return [(name, imported, line, inner) for name in MODULES
            for imported, line, inner in _imports(name) if imported != name]


def test_every_module_has_a_layer():
    missing = [name for name in MODULES if _unit(name) is None]
    assert not missing, f"place these modules in LAYERS (and in docs/architecture.md): {missing}"


def test_no_import_cycle_even_through_function_level_imports():
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for src, dst, _, _ in _edges():
        if dst in MODULES:
            graph[src].add(dst)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers():
    found: dict[tuple[str, str], str] = {}
    bad = []
    for src, dst, line, inner in _edges():
        if dst not in MODULES:
            continue
        (su, sl), (du, dl) = _unit(src), _unit(dst)
        if su == du or dl > sl:
            continue
        where = "above" if dl < sl else "beside"
        text = (f"{MODULES[src].relative_to(ROOT)}:{line}: {src} imports {dst}"
                f"{' inside a function' if inner else ''} ({du} is {where} {su})")
        if (src, dst) in KNOWN:
            found[(src, dst)] = text
        else:
            bad.append(text)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)
    stale = set(KNOWN) - set(found)
    assert not stale, f"known exceptions that no longer occur (remove them from KNOWN): {stale}"


def test_forbidden_imports():
    bad = []
    for src, dst, line, _ in _edges():
        for unit, banned in FORBIDDEN.items():
            inside = src == unit or src.startswith(unit + ".")
            if inside and any(dst == b or dst.startswith(b + ".") for b in banned):
                bad.append(f"{MODULES[src].relative_to(ROOT)}:{line}: {src} imports {dst}")
    assert not bad, "\n".join(bad)


#: imports each module named on the command line in a child forked from a clean parent, so each
#: is the first medae module of its interpreter (an import cycle shows up as an ImportError
#: only when entered from the right module); with --preload, the heavy third-party libraries
#: load once in the parent (they do not take part in medae's cycles) to keep this fast
_FRESH_IMPORTS = r"""
import importlib, json, os, sys, traceback
args = sys.argv[1:]
preload = args[0] == "--preload"
if preload:
    for lib in ("numpy", "scipy", "torch", "monai", "nibabel", "pydicom", "skimage",
                "matplotlib", "yaml", "safetensors"):
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
report = {}
for name in args[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            heavy = [m for m in ("torch", "monai") if m in sys.modules]
            msg = "" if preload or not heavy else "loads " + ", ".join(heavy)
        except BaseException:
            msg = traceback.format_exc(limit=-4)
        os.write(w, msg.encode()[:60000])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if msg or status:
        report[name] = msg or f"exit status {status}"
print(json.dumps(report))
"""


def _fresh_imports(names, preload: bool) -> dict[str, str]:
    res = subprocess.run([sys.executable, "-c", _FRESH_IMPORTS,
                          "--preload" if preload else "--bare", *names],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_first_in_a_fresh_interpreter():
    failed = _fresh_imports(sorted(MODULES), preload=True)
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_numpy_only_modules_do_not_load_torch():
    assert set(TORCH_FREE) <= set(MODULES)
    failed = _fresh_imports(TORCH_FREE, preload=False)
    assert not failed, failed
