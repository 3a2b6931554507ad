"""The package's shape: every module's imports (function-local ones included) form no cycle and never
reach up a layer, and pyproject.toml installs every package folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Folders of the repo and the package names they install as.
SOURCES = {"rl_plasticity": ROOT / "rl_plasticity", "rl_plasticity.envs": ROOT / "envs",
           "rl_plasticity.agents": ROOT / "agents"}
# Lower layers never import higher ones. Within a layer, packages may import each other (without cycles).
LAYERS = [
    ["rl_plasticity.errors", "rl_plasticity.config"],  # foundation: one-line errors, config schema
    ["rl_plasticity.core"],  # the learner core
    ["rl_plasticity.run", "rl_plasticity.envs", "rl_plasticity.datasets", "rl_plasticity.integrations"],
    ["rl_plasticity.agents"],
    ["rl_plasticity.problems"],
    ["rl_plasticity.train", "rl_plasticity.bench", "rl_plasticity.sweep", "rl_plasticity.compare",
     "rl_plasticity.evaluate"],  # commands
    ["rl_plasticity.cli", "rl_plasticity.sweep.child"],  # entry points (a sweep run's process starts in child)
]


def module_files() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "rl_plasticity" and parts and parts[0] in ("envs", "agents"):
                continue
            found[name] = path
    return found


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `from pkg import name`: the module is pkg
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    # modules named in strings for importlib (the CLI's lazy commands, the problem registry)
    source = path.read_text()
    for named in re.findall(r'"(rl_plasticity(?:\.\w+)+)"', source) if "importlib" in source else []:
        if named in modules and named != name:
            out.add(named)
    return out


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        pytest.fail(f"{module} belongs to no layer of tests/test_architecture.py: add its package to LAYERS")
    return best[0]


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if n.startswith("rl_plasticity") and n != "rl_plasticity":
                if state.get(n) == 1:
                    cycle = stack[stack.index(n):] + [n]
                    pytest.fail("import cycle: " + " -> ".join(cycle))
                if n not in state:
                    visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_no_upward_imports():
    upward = [f"{m} -> {n}" for m, targets in graph().items() if m != "rl_plasticity"
              for n in targets if n != "rl_plasticity" and layer_of(n) > layer_of(m)]
    assert not upward, "imports reaching up a layer:\n" + "\n".join(sorted(upward))


def test_the_checker_sees_function_local_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from rl_plasticity.cli import main\n")
    assert imports_of("rl_plasticity.core.x", tmp_path / "m.py", {"rl_plasticity.cli"}) == {"rl_plasticity.cli"}


def test_pyproject_installs_every_package_folder():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert set(setuptools["packages"]) == folders
    assert setuptools["package-dir"] == {"rl_plasticity.envs": "envs", "rl_plasticity.agents": "agents"}


def test_envs_and_agents_install_under_the_toolkit_namespace():
    import rl_plasticity.agents
    import rl_plasticity.envs

    assert Path(rl_plasticity.envs.__file__).parent == ROOT / "envs"
    assert Path(rl_plasticity.agents.__file__).parent == ROOT / "agents"
