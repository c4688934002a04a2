"""The verdict on one reply and the registry of rules that produce it.

>>> verdict = Verdict(score=1.0, prediction="b")
>>> verdict.full
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from probes.errors import UserError


@dataclass(frozen=True)
class Verdict:
    """How a rule graded one reply.

    ``score`` lies in [0, 1] (TextVQA's VQA accuracy is fractional, every other rule gives 0 or
    1); ``prediction`` is what the rule read from the reply: the extracted letter, "yes"/"no",
    the normalised answer, the parsed box in original-image pixels ("" when it read nothing);
    ``iou`` is the box overlap, for box rules only.
    """

    score: float
    prediction: str
    iou: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a score lies in [0, 1], got {self.score}.")

    @property
    def full(self) -> bool:
        """Full credit: what :func:`analyses.scoring.is_correct` calls correct."""
        return self.score == 1.0


Rule = Callable[..., Verdict]  # rule(reply, sample, frame) -> Verdict

RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    """Register a scoring rule under ``name`` (the value of ``Sample.scorer``)."""

    def register(function: Rule) -> Rule:
        RULES[name] = function
        return function

    return register


def rule_named(name: str) -> Rule:
    """The rule registered as ``name``; an unknown name is a :class:`UserError`."""
    try:
        return RULES[name]
    except KeyError:
        raise UserError(
            f"unknown scoring rule {name!r}; the known ones are {', '.join(sorted(RULES))}."
        ) from None


def acceptable(sample) -> tuple[str, ...]:
    """Every acceptable reference answer of ``sample`` (also for bare objects with ``answer``)."""
    answers = tuple(getattr(sample, "answers", ()) or ())
    return answers or (str(sample.answer),)
