"""The import layout of hf_compress, read from the source with `ast`: no import circle, nothing imports the command
line, and the lower layers stay light.

Every written import counts, those inside functions too (a deferred import is still an arrow of the layout; it only
hides a circle from Python), except those under `if TYPE_CHECKING:`, which never run (annotations only). Importing a submodule also runs its package's `__init__`, but that is Python's doing,
not an arrow: only written imports count, as in tests/dla/test_dla_layout.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hf_compress

PACKAGE_DIR = Path(hf_compress.__file__).parent
HEAVY = ("torch", "transformers", "trl", "datasets", "math_verify", "peft", "vllm")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def without_type_checking(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    return tree


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
TREES = {module: without_type_checking(ast.parse(path.read_text())) for module, path in MODULES.items()}


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name an `ImportFrom` in `module` imports from."""
    if node.level == 0:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import written in `module`; `from . import x` imports the submodule `x`."""
    nodes = TREES[module].body if top_level_only else ast.walk(TREES[module])
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((submodule if submodule in MODULES else target, node.lineno))
    return found


GRAPH = {module: {target for target, _ in imports_of(module) if target in MODULES} for module in MODULES}


def test_every_module_is_parsed():
    assert {
        "hf_compress.cli",
        "hf_compress.commands.registry",
        "hf_compress.stages",
        "hf_compress.evaluation",
        "hf_compress.backends.config",
        "hf_compress.hardware",
    } <= set(MODULES)


def test_imports_between_hf_compress_modules_form_no_cycle():
    done, path = set(), []

    def visit(module):
        if module in path:
            pytest.fail(f"import cycle: {' -> '.join(path[path.index(module) :] + [module])}")
        if module in done:
            return
        path.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_no_module_imports_the_command_line():
    importers = sorted(module for module, targets in GRAPH.items() if "hf_compress.cli" in targets)
    assert not importers, f"{importers} import hf_compress.cli: it is argv -> registry -> run, and sits on top"


def test_the_registry_imports_no_command_and_no_stage():
    below = {"hf_compress.arguments", "hf_compress.validation", "hf_compress.constants"}
    assert GRAPH["hf_compress.commands.registry"] <= below, GRAPH["hf_compress.commands.registry"]


@pytest.mark.parametrize(
    "module",
    sorted(
        m
        for m in MODULES
        if m.startswith("hf_compress.commands")
        or m in ("hf_compress.cli", "hf_compress.arguments", "hf_compress.validation", "hf_compress.constants")
    ),
)
def test_the_command_layer_imports_nothing_heavy_when_loaded(module):
    """`hf-compress --help` and `report` start at once: a command imports what it runs only when it runs."""
    heavy = sorted(
        {
            (target, line)
            for target, line in imports_of(module, top_level_only=True)
            if target.split(".")[0] in HEAVY
            or target in MODULES
            and target.split(".")[1:2]
            not in (["commands"], ["arguments"], ["validation"], ["constants"], ["backends"])
        }
    )
    assert not heavy, f"{module} imports at load time {heavy}"


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += GRAPH[current]
    return seen


def test_evaluation_imports_no_trl():
    """Evaluating a student needs the hardware helpers, not TRL's trainer (`hf_compress.hardware`)."""
    users = sorted(
        module
        for module in reachable("hf_compress.evaluation")
        if any(target.split(".")[0] == "trl" for target, _ in imports_of(module))
    )
    assert not users, f"hf_compress.evaluation reaches TRL through {users}"
