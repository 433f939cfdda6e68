"""The floor plan: every import in src/ckksnet goes down the layers or stays in its package,
no two packages import each other (directly or round a loop), torch is imported only where
models are read, OpenFHE only in the backend, and the core needs numpy alone.

An AST scan of every import statement, at the top of a module or inside a function alike (a
lazy import is still a dependency). README "Architecture" draws the same layers.
"""
from __future__ import annotations

import ast
import subprocess
import sys
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


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield ".".join(parts), path, is_pkg


def _imports(name: str, path: Path, is_pkg: bool):
    """(imported module, line, lazy) for every import statement of one module."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module]
        else:
            continue
        for target in targets:
            yield target, node.lineno, id(node) not in top


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ckksnet" else None


EDGES = [(mod, _package(mod), target, line, lazy)
         for mod, path, is_pkg in _modules() for target, line, lazy in _imports(mod, path, is_pkg)]


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
    0.05-0.07 s here; the bound leaves a wide margin for a loaded machine."""
    code = ("import sys, time; t = time.perf_counter(); from ckksnet.deploy.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'openfhe', 'numpy', 'ray', 'fastapi') if m in sys.modules),"
            " time.perf_counter() - t)")
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
