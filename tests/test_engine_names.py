"""No analysis or figure asks which engine it holds: no comparison outside ``probes`` names an
engine (the engine is an object chosen at the command line's edge, :mod:`probes.engines`)."""

from __future__ import annotations

import ast
from pathlib import Path

from probes.engines import names

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE_PROBES = ("analyses", "figures", "scripts")


def _engine_names_compared(source: str) -> list[tuple[int, str]]:
    """(line, name) of every engine name that a comparison (==, !=, in, a match case) uses."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Compare, ast.match_case)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Constant) and inner.value in names():
                    found.append((inner.lineno, inner.value))
    return found


def test_the_checker_finds_a_branch_on_an_engine_name():
    assert _engine_names_compared('if engine == "nnsight":\n    pass\n') == [(1, "nnsight")]
    assert _engine_names_compared('x = {} if e in ("fast",) else 1\n') == [(1, "fast")]
    assert _engine_names_compared('match e:\n    case "fast":\n        pass\n') == [(2, "fast")]
    assert _engine_names_compared('packages = ("torch", "nnsight")\n') == []


def test_no_module_outside_probes_branches_on_an_engine_name():
    offenders = []
    for folder in OUTSIDE_PROBES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}:{line}: {name!r}"
                          for line, name in _engine_names_compared(path.read_text())]
    assert offenders == []
