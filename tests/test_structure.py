"""The package's shape: no import cycle between covfast modules, and every module importable on its own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covfast"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def covfast_imports(path: Path) -> set[str]:
    "Every covfast module `path` imports, at the top or inside a function, resolved to its dotted name."
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "covfast"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "covfast":
                target = node.module
            else:
                continue
            found.add(target)
            # `from . import distributed` imports a module, not a name of the package
            found |= {f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()}
    return {m for m in found if m != name}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): covfast_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "A cycle as a list of modules (first = last), or None."
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_are_resolved(tmp_path):
    graph = import_graph()
    assert "covfast.inference" in graph["covfast.evaluate"]  # `from .inference import ...`
    assert "covfast.errors" in graph["covfast.models"]  # `from ..errors import ...` one level up
    assert "covfast.distributed" in graph["covfast.train"]  # `from . import distributed`
    assert "covfast.train" in graph["covfast.cli"]  # imported inside a command function


def test_no_import_cycle_between_covfast_modules():
    assert find_cycle(import_graph()) is None


IMPORT_EACH_ALONE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "covfast" or m.startswith("covfast.")]:
        del sys.modules[loaded]  # no covfast module loaded before this one (third-party ones stay: they are slow to load)
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {e.__class__.__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    "Each covfast module, imported first (with no other covfast module loaded), imports without error."
    modules = sorted(import_graph())
    r = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *modules], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
