"""The floor plan: every import in src/ckksnet goes down the layers or stays in its package,
no two packages import each other (directly or round a loop), no two files either, torch is
imported only where models are read, OpenFHE only in the backend, and the core needs numpy alone.

An AST scan of every import statement, at the top of a module or inside a function alike (a
lazy import is still a dependency). Every import is resolved to the module it loads:
``from ckksnet import compiler`` and ``from ckksnet.core import plan`` name the modules
``ckksnet.compiler`` and ``ckksnet.core.plan``, so the rules see them. README "Design" and
"Architecture" draw the same layers.

Besides the layers, some edges are ruled out for good ("never" rules): the kernels and the
compiler never import the backend (they compute through ``core.evaluator.Evaluator``), and the
deploy package reaches the backend only through ``deploy.engine`` (and ``runtime``), so the HTTP
service and the Ray driver load no OpenFHE. A function-level (lazy) import is there only to defer
a heavy library (``HEAVY``): one that merely breaks a file circle, or imports a module the file
has loaded anyway, belongs at the top.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ckksnet"

#: bottom to top; a package may import its own modules and those of lower layers only
LAYERS = [
    {"errors"},
    {"layout", "inputs"},
    {"core"},
    {"approx", "data", "imagefile"},
    {"backend"},
    {"kernels"},
    {"runtime"},
    {"nn", "models", "compiler"},
    {"training"},
    {"fidelity", "inference"},
    {"deploy", "__main__"},  # python -m ckksnet: the command line
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
TORCH_USERS = {"nn", "models", "compiler", "training", "fidelity", "inference", "deploy"}
OPENFHE_USERS = {"backend"}
#: third-party modules the core may import: numpy; scipy.sparse only lazily, to read plans
#: whose kernels hold sparse maps
CORE_THIRD_PARTY = {"numpy"}
CORE_LAZY_THIRD_PARTY = {"scipy"}

#: (package, package it never imports, why), whatever the layers allow. Kernels and the compiler
#: compute through ``core.evaluator.Evaluator`` and a backend found by name, never OpenFHE's
#: classes. ``inference`` and ``fidelity`` are left out on purpose: they may import
#: ``backend.measure`` (which loads OpenFHE only when it measures) to measure the backend, which is
#: their job.
FORBIDDEN = [
    ("kernels", "backend", "a kernel is written once against core.evaluator.Evaluator"),
    ("compiler", "backend", "the compiler reaches a backend by name (core.backend.get_backend)"),
]
#: the one deploy module that may import the backend (the service and Ray go through it and runtime)
DEPLOY_BACKEND_DOOR = {"ckksnet.deploy.engine"}

#: libraries worth deferring: slow to import (numpy ~50 ms, torch seconds), or optional
#: (PIL, matplotlib, ray, uvicorn). A lazy import is justified when the module it names loads
#: one of these that the importing file does not already load at its top.
HEAVY = {"torch", "torchvision", "openfhe", "numpy", "scipy", "mpmath", "ray", "fastapi", "starlette",
         "uvicorn", "httpx", "matplotlib", "PIL", "tqdm", "nbformat", "nbclient", "psutil"}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield ".".join(parts), path, is_pkg


MODULES = {name: (path, is_pkg) for name, path, is_pkg in _modules()}


@dataclass(frozen=True)
class Edge:
    """One module an import statement loads. ``when``: "top" (runs on import, also inside a
    top-level ``try``/``if``), "lazy" (inside a function), "typing" (under ``if TYPE_CHECKING``),
    "main" (under ``if __name__ == "__main__"``). ``root``: the statement takes a name from the
    root package that is not a module (``from ckksnet import Client``: the root's lazy
    ``__getattr__``), or is a bare ``import ckksnet``."""

    module: str
    target: str
    line: int
    when: str
    root: bool = False

    @property
    def lazy(self) -> bool:
        return self.when != "top"

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}" + ("" if self.when == "top" else f" ({self.when})")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _when(tree: ast.Module) -> dict[int, str]:
    """id(node) -> when it runs (see :class:`Edge`)."""
    when: dict[int, str] = {}

    def visit(node: ast.AST, ctx: str) -> None:
        for name, value in ast.iter_fields(node):
            for child in value if isinstance(value, list) else [value]:
                if not isinstance(child, ast.AST):
                    continue
                c = ctx
                if ctx == "top" and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    c = "lazy"
                elif ctx == "top" and isinstance(node, ast.If) and name == "body":
                    c = "typing" if _is_type_checking(node.test) else "main" if _is_main(node.test) else ctx
                when[id(child)] = c
                visit(child, c)

    visit(tree, "top")
    return when


def _imports(name: str, path: Path, is_pkg: bool):
    """Every :class:`Edge` of one module, each import resolved to the module it loads."""
    tree = ast.parse(path.read_text())
    when = _when(tree)
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [(a.name, a.name == "ckksnet") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from pkg import sub` loads the module pkg.sub when there is one, else takes a name from pkg
                found.append((sub, False) if sub in MODULES else (base, base == "ckksnet"))
        else:
            continue
        for target, root in found:
            if (target, node.lineno) not in seen:
                seen.add((target, node.lineno))
                yield Edge(name, target, node.lineno, when[id(node)], root and name != "ckksnet")


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ckksnet" else None


ALL = [edge for mod, (path, is_pkg) in MODULES.items() for edge in _imports(mod, path, is_pkg)]
#: the scan in the form the package rules read: (module, its package, target, line, lazy)
EDGES = [(e.module, _package(e.module), e.target, e.line, e.lazy) for e in ALL]
OUT = defaultdict(list)
for _e in ALL:
    OUT[_e.module].append(_e)


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _loaded(module: str) -> set[str]:
    """Every module ``import module`` executes (its packages' ``__init__`` too), following
    top-level imports only; third-party modules are named but not followed."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for m in _with_parents(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.extend(e.target for e in OUT.get(m, ()) if e.when == "top")
    return seen


def _heavy(module: str) -> set[str]:
    """The heavy libraries ``import module`` loads."""
    return {m.split(".")[0] for m in _loaded(module)} & HEAVY


def _cycles() -> list[list[str]]:
    """Strongly connected sets of two or more src modules in the module -> module graph of
    every import statement (lazy and typing-only ones too), largest first (Tarjan)."""
    graph = {m: sorted({e.target for e in OUT.get(m, ()) if e.target in MODULES and e.target != m})
             for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found, key=lambda g: (-len(g), g))


def test_every_package_has_a_layer():
    packages = {_package(mod) for mod, *_ in EDGES} - {None}
    assert packages <= set(LEVEL), f"packages without a layer: {sorted(packages - set(LEVEL))}"


def test_no_import_goes_up_a_layer():
    upward = [f"{mod}:{line} imports {target}" for mod, pkg, target, line, _ in EDGES
              if pkg is not None and _package(target) not in (None, pkg)
              and LEVEL[_package(target)] > LEVEL[pkg]]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_no_package_cycle():
    graph: dict[str, set[str]] = {}
    for _, pkg, target, _, _ in EDGES:
        dep = _package(target)
        if pkg is not None and dep not in (None, pkg):
            graph.setdefault(pkg, set()).add(dep)

    def reaches(start: str, goal: str, seen: set) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(p for p in graph if reaches(p, p, set()))
    assert not cycles, f"packages on an import cycle: {cycles}"


def test_no_file_cycle():
    """No two modules import each other, directly or round a loop, not even lazily: a lazy
    import that breaks a circle hides it, it does not end it."""
    report = []
    for group in _cycles():
        inside = [str(e) for m in group for e in OUT[m] if e.target in group and e.target != m]
        report.append(" <-> ".join(group) + "\n    " + "\n    ".join(inside))
    assert not report, f"{len(report)} file-level import circle(s):\n" + "\n".join(report)


def test_the_cycle_scan_finds_a_circle():
    """The scan is worth something only if it sees a circle made of a lazy import."""
    OUT["ckksnet.errors"].append(Edge("ckksnet.errors", "ckksnet.inputs", 1, "lazy"))
    try:
        assert ["ckksnet.errors", "ckksnet.inputs"] in _cycles()
    finally:
        OUT["ckksnet.errors"].pop()


def test_imports_resolve_to_modules(tmp_path):
    """``from ckksnet import compiler`` is an import of ``ckksnet.compiler``, seen as such; a
    name taken from the root package is marked."""
    path = tmp_path / "probe.py"
    path.write_text("from ckksnet import inference, Client\nfrom ckksnet.core import plan, envelope\n"
                    "from . import relu\nfrom .base import Kernel\nimport ckksnet.compiler as c\n"
                    "def f():\n    import torch\n")
    found = {(e.target, e.root, e.when) for e in _imports("ckksnet.kernels.probe", path, False)}
    assert found == {("ckksnet.inference", False, "top"), ("ckksnet", True, "top"), ("ckksnet.core.plan", False, "top"),
                     ("ckksnet.core.envelope", False, "top"), ("ckksnet.kernels.relu", False, "top"),
                     ("ckksnet.kernels.base", False, "top"), ("ckksnet.compiler", False, "top"),
                     ("torch", False, "lazy")}


def test_nothing_in_ckksnet_imports_through_the_root_package():
    """Inside the library, an import names the module that defines the name
    (``from ckksnet.runtime import Client``), never the root package's re-exports or its lazy
    ``__getattr__`` (``from ckksnet import Client, compile``), which hide the real dependency
    from these rules (and drag in whatever the root resolves lazily)."""
    bad = [str(e) for e in ALL if e.root]
    assert not bad, "imports through the root package `ckksnet` (name the module instead):\n" + "\n".join(bad)


@pytest.mark.parametrize("pkg,dep,why", FORBIDDEN)
def test_never_imports(pkg, dep, why):
    bad = [str(e) for e in ALL if _package(e.module) == pkg and _package(e.target) == dep]
    assert not bad, f"{pkg} never imports {dep} ({why}); offenders:\n" + "\n".join(bad)


def test_deploy_reaches_the_backend_only_through_the_engine():
    """Only ``deploy.engine`` imports ``ckksnet.backend`` (every other deploy module goes
    through it or through ``runtime``), and no deploy module imports OpenFHE itself: the HTTP
    service, the Ray driver and the CLI's parser load no OpenFHE."""
    bad = [str(e) for e in ALL if _package(e.module) == "deploy" and e.module not in DEPLOY_BACKEND_DOOR
           and (_package(e.target) == "backend" or e.target.split(".")[0] == "openfhe")]
    assert not bad, ("deploy modules other than deploy.engine that import the backend or OpenFHE "
                     "(go through ckksnet.deploy.engine or ckksnet.runtime):\n" + "\n".join(bad))


def _vestigial_lazy_imports() -> list[str]:
    out = []
    for e in ALL:
        if e.when != "lazy":
            continue
        brings = _heavy(e.target)
        if not brings:
            out.append(f"{e}: loads no heavy library")
        elif brings <= _heavy(e.module):
            out.append(f"{e}: defers nothing ({', '.join(sorted(brings))} already loaded by {e.module}'s own import)")
    return out


def test_lazy_imports_only_defer_heavy_libraries():
    """An import inside a function is there to keep a heavy library (``HEAVY``) out of a
    module's import; one that defers nothing (a standard module, a numpy-only module imported by
    a file that has numpy anyway, a module imported to break a circle) belongs at the top."""
    bad = _vestigial_lazy_imports()
    assert not bad, f"{len(bad)} lazy imports that defer no heavy library (move them to the top):\n" + "\n".join(bad)


def test_the_heavy_scan_follows_imports():
    assert "openfhe" in _heavy("ckksnet.backend.context")
    assert "torch" in _heavy("ckksnet.compiler") and "torch" not in _heavy("ckksnet.core.plan")
    assert _heavy("ckksnet.errors") == set()
    assert _heavy("ckksnet.core.plan") == {"numpy"}


@pytest.mark.parametrize("lib,users", [("torch", TORCH_USERS), ("torchvision", TORCH_USERS),
                                       ("openfhe", OPENFHE_USERS)])
def test_heavy_libraries_stay_in_their_packages(lib, users):
    bad = [f"{mod}:{line}" for mod, pkg, target, line, _ in EDGES
           if target.split(".")[0] == lib and pkg not in users]
    assert not bad, f"{lib} imported outside {sorted(users)}: {bad}"


def test_the_core_needs_numpy_alone():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for mod, pkg, target, line, lazy in EDGES:
        root = target.split(".")[0]
        if pkg != "core" or root in stdlib or root == "ckksnet" or root in CORE_THIRD_PARTY:
            continue
        if not (lazy and root in CORE_LAZY_THIRD_PARTY):
            bad.append(f"{mod}:{line} imports {target}")
    assert not bad, "the core imports more than numpy:\n" + "\n".join(bad)


def test_the_scan_sees_lazy_imports():
    """The scan is worth something only if it finds imports inside functions too."""
    lazy = [(mod, target) for mod, _, target, _, is_lazy in EDGES if is_lazy]
    assert ("ckksnet.core.artifact", "scipy.sparse") in lazy


@pytest.mark.parametrize("module", ["ckksnet.runtime", "ckksnet.core", "ckksnet.kernels",
                                    "ckksnet.core.artifact", "ckksnet.deploy.engine",
                                    "ckksnet.deploy.service.app"])
def test_server_side_modules_import_no_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"


def test_the_service_the_ray_batch_and_the_engine_load_no_openfhe():
    """The HTTP service, the Ray batch driver and the engine import without OpenFHE: they reach
    the backend (through ``deploy.engine`` and ``runtime``) only when a plan is run."""
    code = ("import sys, ckksnet.deploy.service.app, ckksnet.deploy.distributed, ckksnet.deploy.engine; "
            "print('openfhe' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "importing the service, the Ray batch and the engine loads openfhe"


def test_the_core_loads_neither_openfhe_nor_torch():

    code = ("import sys, ckksnet.core.plan, ckksnet.core.schedule, ckksnet.core.walker, ckksnet.core.artifact, "
            "ckksnet.core.slots, ckksnet.core.tracer, ckksnet.core.envelope; "
            "print(sorted(m for m in ('torch', 'openfhe', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["plan", "--help"], ["run", "--help"], ["serve", "--help"]])
def test_cli_help_loads_no_heavy_library_and_is_fast(argv):
    """`ckksnet --help` (and a command's) parses without torch, OpenFHE, numpy or Ray: measured
    0.05-0.07 s here. CPU seconds, which a loaded machine does not stretch as it does wall time;
    importing torch alone takes 1.6."""
    code = ("import sys, time; t = time.process_time(); from ckksnet.deploy.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'openfhe', 'numpy', 'ray', 'fastapi') if m in sys.modules),"
            " time.process_time() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("LOADED"))
    loaded, seconds = line.split(" ", 1)[1].rsplit(" ", 1)
    assert loaded == "[]", f"ckksnet {' '.join(argv)} loads {loaded}"
    assert float(seconds) < 1.0
    assert "usage: ckksnet" in out.stdout


def test_every_name_imported_from_ckksnet_exists():
    """`from ckksnet.x import name` anywhere in src, inside functions too, names something that
    exists: a moved function is caught here, not when a rarely run command reaches it."""
    import importlib

    missing = []
    for mod, path, is_pkg in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("ckksnet"):
                continue
            try:
                target = importlib.import_module(node.module)
            except ImportError as exc:
                missing.append(f"{mod}:{node.lineno} {node.module} ({exc})")
                continue
            for alias in node.names:
                if not hasattr(target, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{mod}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)
