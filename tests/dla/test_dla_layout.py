"""The import layout of hf_dla, read from the source with `ast`: imports only run down, and no private name crosses
files.

Below the model (`configuration_dla`, `modeling_dla`, `convert`, the package root) are the memory plans and the ops:
`ops_utils` (shared helpers, imports nothing from hf_dla), `ops_naive`, `ops_chunk`, `ops_dispatch`, `memory_plans`
and the `hf_dla.ops` package. They never import the model, and the static imports between hf_dla modules form no
cycle. The one import by name at call time, of the optional Triton backend, lives in `ops_utils.import_triton_backend`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hf_dla

PACKAGE_DIR = Path(hf_dla.__file__).parent
MODEL_MODULES = {"hf_dla", "hf_dla.configuration_dla", "hf_dla.modeling_dla", "hf_dla.convert"}
OPS_MODULES_PREFIXES = ("hf_dla.ops", "hf_dla.memory_plans")  # hf_dla.ops_* and hf_dla.ops.* too


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def resolve(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute name an `ImportFrom` in `module` imports from (None when outside hf_dla)."""
    if node.level == 0:
        target = node.module or ""
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    return target if target == "hf_dla" or target.startswith("hf_dla.") else None


def hf_dla_imports(module: str) -> list[tuple[str, str, ast.AST]]:
    """(imported module, imported name or "", node) for every static import of an hf_dla module in `module`.
    `from . import kernels` counts as an import of the module `hf_dla.ops.triton.kernels`."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node) for alias in node.names if alias.name.split(".")[0] == "hf_dla"]
        elif isinstance(node, ast.ImportFrom) and (target := resolve(module, node)) is not None:
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((submodule, "", node) if submodule in MODULES else (target, alias.name, node))
    return found


def test_every_module_is_parsed():
    assert {"hf_dla.ops_utils", "hf_dla.ops_naive", "hf_dla.modeling_dla", "hf_dla.ops.triton.plan"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_files(module):
    crossing = [
        f"line {node.lineno}: from {target} import {name}"
        for target, name, node in hf_dla_imports(module)
        if name.startswith("_") and name != "__version__"
    ]
    # `module._name` on an imported hf_dla module (`from . import kernels`, then `kernels._private`)
    aliases = {
        (alias.asname or alias.name): target
        for target, name, node in hf_dla_imports(module)
        if not name and isinstance(node, ast.ImportFrom)
        for alias in node.names
        if target.endswith("." + alias.name)
    }
    crossing += [
        f"line {node.lineno}: {node.value.id}.{node.attr}"
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
    ]  # fmt: skip
    assert not crossing, f"{module} uses private names of other hf_dla modules: {crossing}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name.startswith(OPS_MODULES_PREFIXES)))
def test_ops_and_plans_never_import_the_model(module):
    upward = sorted({target for target, _, _ in hf_dla_imports(module) if target in MODEL_MODULES})
    assert not upward, f"{module} imports the model layer {upward}: ops and plans sit below it"


def test_imports_between_hf_dla_modules_form_no_cycle():
    graph = {module: {target for target, _, _ in hf_dla_imports(module) if target in MODULES} for module in MODULES}
    # importing a package module runs its __init__: `from ...memory_plans import X` in hf_dla.ops.triton.plan also
    # runs hf_dla/__init__.py, but that is Python's doing, not an arrow of the layout; only written imports count.
    done, path = set(), []

    def visit(module):
        if module in path:
            cycle = path[path.index(module) :] + [module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_ops_utils_imports_no_other_hf_dla_module():
    assert not hf_dla_imports("hf_dla.ops_utils")


def test_the_only_import_by_name_is_the_triton_backend_loader():
    """`importlib.import_module("hf_dla...")` bypasses the static graph: allowed once, for the optional backend."""
    by_name = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
                by_name.append((module, ast.unparse(node.args[0])))
    assert by_name == [("hf_dla.ops_utils", "TRITON_BACKEND")]
    from hf_dla.ops_utils import TRITON_BACKEND

    assert TRITON_BACKEND == "hf_dla.ops.triton"


def test_saved_model_carries_every_flat_module_the_model_imports(make_config, tmp_path):
    """`save_pretrained` copies the modeling file's flat relative imports, recursively: all of the layout below it."""
    model = hf_dla.DLAForCausalLM(make_config(memory="dla"))
    model.save_pretrained(tmp_path)
    saved = {path.name for path in tmp_path.glob("*.py")}
    flat = {"configuration_dla", "modeling_dla", "memory_plans", "ops_utils", "ops_naive", "ops_chunk", "ops_dispatch"}
    assert saved == {f"{name}.py" for name in flat}
