"""The README's compile/client/server snippet (issue #30) runs as written: every name it uses is
imported or assigned before, and it builds the client as the examples do, ``Client(net)``."""
from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _snippet() -> str:
    """The README's first Python block that starts with ``import ckksnet`` (a whole program)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if b.startswith("import ckksnet"))


def _undefined(code: str) -> list[str]:
    """Names read before any import or assignment binds them (top-level code)."""
    bound, missing = set(dir(builtins)), []
    for stmt in ast.parse(code).body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
                missing.append(f"{node.id} (line {node.lineno})")
        for node in ast.walk(stmt):  # bind after the reads: `x = f(x)` still needs x before
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
    return missing


def test_the_readme_snippet_defines_every_name_it_uses():
    assert _undefined(_snippet()) == []


def test_the_checker_finds_an_undefined_image():
    assert sorted(_undefined("import ckksnet\nct = client.encrypt(image)\n")) == ["client (line 2)", "image (line 2)"]


def test_the_readme_builds_the_client_as_the_examples_do():
    code = _snippet()
    assert "ckksnet.Client(net)" in code and "client_spec()" not in code
    assert "ckksnet.Client(net)" in (ROOT / "examples" / "encrypted_cifar.py").read_text()
