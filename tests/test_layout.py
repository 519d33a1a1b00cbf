"""The shape of gateway/ (docs/architecture.md): packages along a request's path, short modules, no import
cycles at run time (imports under `if TYPE_CHECKING:` are for types only, and cost nothing at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest_tools import REPO

GATEWAY = REPO / "gateway"
PACKAGES = {"edge", "upstream", "sessions", "ops"}
TOP = {"__init__", "__main__", "cli", "config", "app", "errors", "server", "demo", "demo_rasa"}
LONGEST = 400  # lines; config.py is one schema and may be longer
MOST = 300


def modules() -> dict[str, Path]:
    found = {}
    for path in GATEWAY.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The gateway modules `path` imports when it runs: at module level or in functions, not for types."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in known}


def test_gateway_is_a_few_packages_along_the_request_path() -> None:
    packages = {p.name for p in GATEWAY.iterdir() if (p / "__init__.py").exists()}
    assert packages == PACKAGES
    top = {p.stem for p in GATEWAY.glob("*.py")}
    assert top == TOP


def test_modules_are_short() -> None:
    lengths = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in modules().items()
        if name != "gateway.config"
    }
    assert {name: n for name, n in lengths.items() if n > LONGEST} == {}
    assert sum(n <= MOST for n in lengths.values()) > len(lengths) * 0.75


def test_no_import_cycles_at_run_time() -> None:
    found = modules()
    graph = {name: runtime_imports(path, set(found)) - {name} for name, path in found.items()}
    done: set[str] = set()

    def cycle_from(name: str, trail: list[str]) -> list[str]:
        for dep in sorted(graph[name]):
            if dep in trail:
                return [*trail[trail.index(dep) :], dep]
            if dep not in done:
                found_cycle = cycle_from(dep, [*trail, dep])
                if found_cycle:
                    return found_cycle
        done.add(name)
        return []

    cycles = [c for name in sorted(graph) if name not in done and (c := cycle_from(name, [name]))]
    assert cycles == []
