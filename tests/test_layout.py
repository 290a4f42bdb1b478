"""Each piece has one home: the shipped packages import neither `examples` nor `kit` nor each other, and no private
name (`_x`) is imported from one of their modules into another (hf_dla's finer rules: tests/dla/test_dla_layout.py)."""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hf_flowcredit", "hf_dla", "hf_compress")


def imports(path: Path):
    """(module named, names imported, line) of each import in the file; relative modules start with '.'."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or ""), [a.name for a in node.names], node.lineno


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_no_examples_no_kit_and_no_other_package(package):
    others = {"examples", "kit", *(p for p in PACKAGES if p != package)}
    found = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for module, _, line in imports(path)
        if module.split(".")[0] in others
    ]
    assert not found, found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_crosses_files(package):
    found = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for module, names, line in imports(path):
            own = module.startswith(".") or module.split(".")[0] == package
            private = [name for name in names if name.startswith("_") and not name.startswith("__")]
            if own and private:
                found.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {private} from {module}")
    assert not found, found
