"""docs/ARCHITECTURE.md names real code: every module and function of its two paths exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import ROOT

DOC = ROOT / "docs" / "ARCHITECTURE.md"
PATHS = ("## One board frame", "## One stop click")


def path_rows() -> list[tuple[str, list[Path], list[str]]]:
    """(step, modules, functions) of each row of the two path tables."""
    text = DOC.read_text()
    rows = []
    for heading in PATHS:
        section = text[text.index(heading):].split("\n## ", 1)[0]
        for line in section.splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if len(cells) == 4 and cells[0].isdigit():
                modules = [ROOT / name for name in re.findall(r"`([\w/]+\.(?:py|js))`", cells[2])]
                rows.append((f"{heading[3:]} #{cells[0]}", modules, re.findall(r"`([\w.]+)`", cells[3])))
    return rows


def python_names(path: Path) -> set[str]:
    """``name`` for every top-level def and class, ``Class.name`` for every method."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


def defined_in(name: str, path: Path) -> bool:
    if path.suffix == ".py":
        return name in python_names(path)
    last = name.rsplit(".", 1)[-1]  # `handlers.board`: a method of an object literal
    return re.search(rf"(function\s+{last}\s*\(|^\s*{last}\s*\(.*\)\s*\{{)", path.read_text(), re.M) is not None


ROWS = path_rows()


def test_both_paths_are_tables_of_steps():
    assert len(ROWS) >= 15
    assert all(modules and functions for _, modules, functions in ROWS)


@pytest.mark.parametrize(("step", "modules", "functions"), ROWS, ids=[row[0] for row in ROWS])
def test_each_step_names_modules_that_exist_and_functions_they_define(step, modules, functions):
    for module in modules:
        assert module.is_file(), f"{step}: {module.relative_to(ROOT)} does not exist"
    for function in functions:
        assert any(defined_in(function, module) for module in modules), (
            f"{step}: none of {[str(m.relative_to(ROOT)) for m in modules]} defines {function}")


def test_the_readme_links_the_page():
    assert "docs/ARCHITECTURE.md" in (ROOT / "README.md").read_text()


FENCE = re.compile(r"^```[\w+-]*$")


@pytest.mark.parametrize("document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_code_fence_is_a_fence_line_of_its_own(document):
    """A fence with text after it does not close its block: the rest of the page would read as code."""
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    broken = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1)
              if line.lstrip().startswith("```") and not FENCE.match(line.strip())]
    assert not broken, broken
    assert sum(1 for line in path.read_text().splitlines() if line.strip().startswith("```")) % 2 == 0
