"""The code map holds: the gRPC surface -> the engine -> the store, nothing imports upward, only the
store talks to Redis, and modules stay small (README "Code map")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scheduler"

# Higher layers may import lower ones, never the reverse. The shared vocabulary sits below the three;
# the composition root and the tools around it sit above them.
LAYERS = {"api": 3, "engine": 2, "store": 1}
BOTTOM = {"_proto", "protocol", "errors", "config", "redis_options", "logs", "tracing"}
TOP = {"app", "cli", "runner", "stopping", "inspector", "testing", "processes", "ports", "__main__", "__init__"}
REDIS_CLIENTS = {"redis", "hiredis", "fakeredis"}
MAX_LINES = 400


def layer(module: str) -> int:
    """The layer of a module named ``scheduler.<part>[...]``."""
    part = module.split(".")[1]
    if part in LAYERS:
        return LAYERS[part]
    if part in BOTTOM:
        return 0
    assert part in TOP, f"{module} is in no layer: add it to the code map (README) and to this test"
    return 4


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imports(module: str, path: Path) -> list[str]:
    """Every module name the file imports, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # "from . import x" names a module
    return names


MODULES = [(name, path) for name, path in modules() if name != "scheduler"]


@pytest.mark.parametrize("module,path", MODULES, ids=[name for name, _ in MODULES])
def test_nothing_imports_upward(module, path):
    own = layer(module)
    upward = sorted({name for name in imports(module, path)
                     if name.startswith("scheduler.") and name.split(".")[1] != "__init__"
                     and _is_module(name) and layer(name) > own})
    assert not upward, f"{module} (layer {own}) imports {upward} from a higher layer"


@pytest.mark.parametrize("module,path", MODULES, ids=[name for name, _ in MODULES])
def test_only_the_store_imports_a_redis_client(module, path):
    clients = sorted({name for name in imports(module, path) if name.split(".")[0] in REDIS_CLIENTS})
    if module.split(".")[1] != "store":
        assert not clients, f"{module} imports {clients}: only scheduler.store may talk to Redis"


@pytest.mark.parametrize("module,path", MODULES, ids=[name for name, _ in MODULES])
def test_hand_written_modules_stay_small(module, path):
    if module.startswith(("scheduler._proto.orchestrator_service_pb2", "scheduler._proto.dapr.orchestrator_service_pb2")):
        return  # generated
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it (style.md: most modules under ~300)"


def test_the_rule_is_checked_on_every_layer():
    """The walk above sees modules of each layer, so the rule cannot pass by finding nothing."""
    seen = {name.split(".")[1] for name, _ in MODULES}
    assert set(LAYERS) | {"protocol", "errors", "config", "app"} <= seen


def _is_module(name: str) -> bool:
    """True for a module or package of ours (not a class or function imported from one)."""
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()



def _our_imports(module: str, path: Path) -> set[str]:
    """The modules of ours that ``module`` imports anywhere: at the top, under ``if TYPE_CHECKING`` or
    inside a function (an import put off until a call still closes a circle; it only hides it).
    ``from . import keys`` needs ``keys``; ``from . import Store`` needs the package's ``__init__``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if base.startswith("scheduler") and _is_module(name) else base)
    return {name for name in found if name.startswith("scheduler.") and _is_module(name)} - {module}


def test_no_import_cycles_among_our_modules():
    """No module imports a module that imports it back, directly or around a circle (the work kinds
    know the rules only through FailClaimed/FailBatch; the replica's lifecycle is in runner.py, which
    both the command line and the supervisor's processes use)."""
    graph = {name: _our_imports(name, path) for name, path in modules()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
