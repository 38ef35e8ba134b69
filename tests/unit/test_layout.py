"""The house rules the tree keeps (docs/architecture.md): a root of packages and a few leaves, small
functions, a unit-test folder per package. The import contracts are lint-imports' (pyproject.toml)."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

PACKAGE = ROOT / "launcher"
ROOT_LEAVES = 4  # standard-library modules any side may import, besides __init__.py
MAX_LINES, MAX_PARAMETERS = 60, 8


def test_the_root_holds_packages_and_at_most_four_leaves():
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= ROOT_LEAVES, modules


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def _is_click_command(node: ast.FunctionDef) -> bool:
    """A verb: Click passes every option as a parameter, so the count is the command line's."""
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
               for d in node.decorator_list)


def test_no_function_is_over_60_lines_or_8_parameters():
    too_long, too_many = [], []
    for path, node in _functions():
        lines = node.end_lineno - node.lineno + 1
        arguments = node.args
        count = len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
        count -= bool(arguments.args) and arguments.args[0].arg in ("self", "cls")
        if lines > MAX_LINES:
            too_long.append(f"{path}:{node.lineno} {node.name}: {lines} lines")
        if count > MAX_PARAMETERS and not _is_click_command(node):
            too_many.append(f"{path}:{node.lineno} {node.name}: {count} parameters")
    assert not too_long and not too_many, too_long + too_many


def test_every_package_has_its_unit_test_folder():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    missing = [name for name in packages if not list((ROOT / "tests" / "unit" / name).glob("test_*.py"))]
    assert not missing, f"tests/unit/<package>/ missing for {missing}"
