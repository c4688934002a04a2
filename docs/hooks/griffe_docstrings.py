"""A griffe extension for the API reference: the docstrings here are plain text with reST
touches, so before rendering, (1) each doctest example (a run of ``>>>`` lines and their output)
becomes a fenced ``pycon`` block, and (2) a reST role such as :class:`~probes.run.CleanPass`
becomes inline code (``CleanPass``). Nothing else is changed."""

from __future__ import annotations

import re

from griffe import Extension, Object

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|ref):`~?([^`]+)`")


def _short(match: re.Match) -> str:
    whole = match.group(0)
    target = match.group(1)
    return f"`{target.rsplit('.', 1)[-1] if ':`~' in whole else target}`"


def fence_examples(text: str) -> str:
    """Wrap every doctest example in a ``pycon`` fence; an example runs from a ``>>>`` line to
    the next blank line."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        stripped = line.strip()
        if not inside and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            inside = True
        elif inside and not stripped:
            out.append(f"{indent}```")
            inside = False
        out.append(line)
    if inside:
        out.append(f"{indent}```")
    return "\n".join(out)


class DocstringsAsMarkdown(Extension):
    def on_instance(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = fence_examples(obj.docstring.value)
            parts = text.split("```")  # roles only outside the fenced examples
            parts[::2] = [ROLE.sub(_short, part) for part in parts[::2]]
            obj.docstring.value = "```".join(parts)
