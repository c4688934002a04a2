r"""Option texts parsed out of a question's text, where a benchmark writes its choices inline.

>>> split_options("What colour? (A) red (B) blue\nAnswer with the letter.")
('What colour?', ('red', 'blue'))
>>> mmstar_options("Which? Options: A: 5, B: 6")
('5', '6')
>>> lettered_lines("Which?\nA. left\nB. right")
('left', 'right')
"""

from __future__ import annotations

import re


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """A V* question ``"Q? (A) x (B) y\\nAnswer ..."`` -> ``("Q?", ("x", "y"))``."""
    found = re.findall(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|\nAnswer|$)", text, flags=re.S)
    if not found:
        return text.strip(), ()
    return text.split("(A)")[0].strip(), tuple(option for _, option in found)


def mmstar_options(question: str) -> tuple[str, ...]:
    """The option texts of an MMStar question (``"...\\nOptions: A: x, B: y"``)."""
    _, _, listed = question.rpartition("Options:")
    parts = re.split(r"(?:^|,\s*)([A-Z]):\s*", listed.strip())
    return tuple(text.strip() for text in parts[2::2])


def lettered_lines(question: str) -> tuple[str, ...]:
    """Options written one per line as ``A. x`` (RealWorldQA)."""
    return tuple(m[1].strip() for m in re.finditer(r"^[A-Z]\.\s+(.+)$", question, flags=re.M))


__all__ = ["lettered_lines", "mmstar_options", "split_options"]
