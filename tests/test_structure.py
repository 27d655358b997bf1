"""The project's shape, read from its source: which way the imports go, and one copy of each
shared helper.

- The command-line modules (``runtime/cli.py`` and each command) depend on the core; no core
  module imports them (an app embedding the core must not pull in argv parsing or printing).
- No two modules import each other (at any depth of a function: a lazy import is still a
  dependency).
- Helpers every part needs live once: the one-line error text, file sha256, ONNX Runtime
  sessions, the audio/image extension lists, mm:ss, row cosines.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "training")
# The runtime's command-line side: argv parsing and printing live only here.
CLI_MODULES = {"runtime.cli", "runtime.query", "runtime.index", "runtime.publish"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """Project modules ``name`` imports anywhere in its source (module level or in a function)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    base = name.split(".") if _is_package(name) else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                head = base[:len(base) - node.level + 1]
                mod = ".".join(head + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _is_cli(name: str) -> bool:
    return name in CLI_MODULES or name.endswith(".__main__") or name.endswith(".cli")


def test_the_core_never_imports_the_command_line_modules():
    core = [m for m in MODULES if m.startswith("runtime") and not _is_cli(m)]
    offenders = sorted(f"{m} -> {t}" for m in core for t in GRAPH[m] if _is_cli(t))
    assert offenders == []


def test_no_two_modules_import_each_other():
    pairs = sorted({tuple(sorted((a, b))) for a, targets in GRAPH.items() for b in targets if a in GRAPH.get(b, ())})
    assert pairs == []


def _definitions() -> list[tuple[str, str, ast.AST]]:
    out = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.Assign)):
                out.append((name, path.name, node))
    return out


DEFINITIONS = _definitions()


def _where_defined(pred) -> set[str]:
    return {name for name, _, node in DEFINITIONS if isinstance(node, ast.FunctionDef) and pred(node.name)}


def test_each_shared_helper_is_defined_once():
    assert _where_defined(lambda n: n in ("one_line", "_one_line", "_first_line", "first_line")) == {"runtime.errors"}
    assert _where_defined(lambda n: "sha256" in n and "cached" not in n) == {"runtime.hashing"}
    assert _where_defined(lambda n: n == "make_session") == {"runtime.sessions"}
    assert _where_defined(lambda n: n == "mmss") == {"runtime.timecode"}
    assert _where_defined(lambda n: n in ("cosines", "row_cosines")) == {"runtime.selfcheck"}


def test_one_list_of_audio_and_image_extensions():
    def holds(node, word: str) -> bool:
        return isinstance(node.value, (ast.Tuple, ast.List, ast.Set)) and any(
            isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.lstrip(".").lower() == word
            for e in node.value.elts)

    for word in ("wav", "png"):
        where = {name for name, _, node in DEFINITIONS if isinstance(node, ast.Assign) and holds(node, word)}
        assert where == {"runtime.formats"}, word
