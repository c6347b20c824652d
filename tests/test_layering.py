"""Imports run one way (docs/architecture.md, "Layers"): every import inside the package, at module level or
inside a function, goes to a lower layer or stays within its own subpackage, and the module graph has no
cycle. A failure names the offending import."""

from __future__ import annotations

import ast
from pathlib import Path

from tests._paths import REPO

PACKAGE = REPO / "qwen_audio_jax"

# Lower number = lower layer. A module may import from a strictly lower layer, or from its own subpackage.
LAYERS = {
    "errors": 0,
    "choices": 0,
    "_exports": 0,
    "config": 1,
    "runtime": 1,
    "jsonl": 1,
    "bundled": 1,
    "audio": 2,
    "text": 3,
    "model": 3,
    "eval": 3,
    "sharding": 4,
    "checkpoint": 4,
    "conversion": 5,
    "batching": 6,
    "generation": 7,
    "training": 7,
    "jobs": 8,
    "api": 9,
    "demo": 10,
    "serving": 10,
    "cli": 11,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the package in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("qwen_audio_jax")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("qwen_audio_jax"):
                for a in node.names:  # `from pkg import module` imports the module
                    sub = f"{base}.{a.name}"
                    found.append((node.lineno, sub if sub in _MODULES else base))
    return found


_MODULES = _modules()


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1:  # the package root: the curated facade above everything
        return "", max(LAYERS.values()) + 1
    top = parts[1]
    assert top in LAYERS, f"{module}: add its top-level name {top!r} to LAYERS in tests/test_layering.py"
    return top, LAYERS[top]


def test_imports_follow_the_layers():
    bad = []
    for module, path in sorted(_MODULES.items()):
        top, rank = _layer(module)
        for line, target in _imports(path, module):
            target_top, target_rank = _layer(target)
            if target_top == top:
                continue
            if target_rank >= rank:
                bad.append(
                    f"{path.relative_to(REPO)}:{line} imports {target} "
                    f"({top!r} is layer {rank}, {target_top!r} is layer {target_rank})"
                )
    assert not bad, "imports that run upward or sideways:\n" + "\n".join(bad)


def test_module_graph_has_no_cycle():
    graph = {m: {t for _, t in _imports(p, m) if t in _MODULES and t != m} for m, p in _MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_catches_an_upward_import(tmp_path):
    """The rule can fail: a model module importing the engine is reported with its file and line."""
    fake = tmp_path / "bad.py"
    fake.write_text("import os\n\ndef f():\n    from qwen_audio_jax.generation.engine import Engine\n")
    ((line, target),) = _imports(fake, "qwen_audio_jax.model.bad")
    assert (line, target) == (4, "qwen_audio_jax.generation.engine")
    assert _layer(target)[1] > _layer("qwen_audio_jax.model.bad")[1]
