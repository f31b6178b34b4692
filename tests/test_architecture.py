"""ARCHITECTURE.md is true to the tree: every room (a package under autotune_cache/) has its line, every module of a
room and every top-level module is named there, and the names the code review found with two meanings keep one."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autotune_cache"
# Names that meant two things (issue 27): each is defined once in the package, at module level.
ONE_MEANING = ("install", "Lookup", "one_line", "shown", "env_flag", "Record")


def _room_lines() -> dict[str, str]:
    """Room name -> its bullet under '## Rooms', e.g. 'cache' -> '`cache/` — a cache directory: ...'."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text.split("\n## Rooms", 1)[1].split("\n## ", 1)[0]
    lines = {}
    for bullet in re.split(r"\n- ", section):
        m = re.match(r"`(\w+)/`", bullet.strip())
        if m:
            lines[m.group(1)] = bullet
        elif bullet.strip().startswith("Top level"):
            lines[""] = bullet
    return lines


def _named(bullet: str) -> set[str]:
    """The module names a bullet spells in backticks: `plan`, `plan.py`, `builder/plan.py`, `cache.scan`."""
    return {re.split(r"[/.]", ref)[-1] for ref in
            (re.sub(r"\.py$", "", m) for m in re.findall(r"`([\w./]+)", bullet))}


def test_every_room_has_its_line_and_no_line_is_of_a_room_gone():
    rooms = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    documented = set(_room_lines()) - {""}
    assert documented == rooms, f"in the tree, not in ARCHITECTURE.md: {sorted(rooms - documented)}; " \
                                f"in ARCHITECTURE.md, not in the tree: {sorted(documented - rooms)}"


@pytest.mark.parametrize("room", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_module_of_a_room_is_named_in_its_line(room):
    bullet = _room_lines().get(room, "")
    modules = {p.stem for p in (PACKAGE / room).glob("*.py") if p.stem != "__init__"}
    assert modules <= _named(bullet), f"{room}/: not named in ARCHITECTURE.md: {sorted(modules - _named(bullet))}"


def test_every_top_level_module_is_named():
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    named = _named(_room_lines().get("", ""))
    assert modules <= named, f"top level: not named in ARCHITECTURE.md: {sorted(modules - named)}"


def test_names_with_one_meaning():
    where: dict[str, list[str]] = {name: [] for name in ONE_MEANING}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in where:
                where[node.name].append(str(path.relative_to(ROOT)))
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, f"defined in more than one module: {twice}"
