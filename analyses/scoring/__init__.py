"""How fusionlens grades a model's reply to a benchmark question, one rule per benchmark, each
the reference harness's rule (lmms-eval 0.7.3, LLaVA's POPE script, Qwen2.5-VL's grounding
protocol) except where that harness has a known bug. Every analysis grades through
:func:`judge` (``analyses.grading.is_correct`` delegates here).

Rules, by ``Sample.scorer``:

- ``exact``: the reply stripped and lower-cased equals an acceptable answer likewise (the
  embedded datasets; unchanged from before).
- ``choice`` (V*, MMStar, own data with choices): lmms-eval's 2026 letter extraction over the
  sample's letters (A, B, ... one per choice; A-D without choices), see
  :mod:`analyses.scoring.choice`.
- ``realworldqa``: letter answers as ``choice``; open answers: the reply lower-cased, stripped,
  without trailing periods, equals the answer.
- ``vqa`` (TextVQA): VQA accuracy over the ten answers with the standard normalisation
  (:mod:`analyses.scoring.vqa`); fractional.
- ``count`` (CountBench): number words zero..twenty as digits, exact match.
- ``pope``: LLaVA's rule: the first sentence says no if it has the word "no" or "not".
- ``gqa``: exact match ignoring case, ASCII punctuation and surrounding spaces.
- ``refcoco``: the reply's box mapped to the original image (a :class:`BoxFrame`, from
  :func:`frame_for`), a hit at IoU >= 0.5.

Correct (:func:`is_correct`) means full credit, ``score == 1``; for TextVQA that is a reply
matching at least 4 of the 10 human answers (3 matches score 0.9), so a TextVQA accuracy is
the mean of :attr:`Verdict.score`, not the share of correct replies.

Where fusionlens deviates from lmms-eval 0.7.3, on purpose (docs/scoring.md lists every class
of reply graded differently, each with its reason and its test):

- letters inside words are never read as a choice ("Cotton" is not C, "Blue" not B, "The
  answer is Blue" not B), a reply equal to exactly one option's text names that option, and
  only the question's own letters are read (lmms-eval's MMStar and RealWorldQA read A-D
  whatever the options); V* is graded by this rule, not by lmms-eval's V* extractor, which
  reads any reply starting with A-D (and many with a lone a-d anywhere) as that letter;
- CountBench: trailing periods are dropped ("3." counts as 3);
- POPE: every reply is read as yes or no by LLaVA's rule (lmms-eval counts only an exact
  "yes"/"no" and scores anything else wrong on both sides), words compared ignoring case
  (LLaVA's script reads "NO" as yes); the yes share counts predicted yes (lmms-eval's counts
  the gold labels, always 0.5);
- GQA: whitespace left where punctuation was deleted is ignored (lmms-eval strips the reply
  before it deletes punctuation, so "yes ." is wrong there);
- RefCOCO: the first box in the model's own coordinates, clipped to the image (lmms-eval keeps
  whichever box of the reply, read as pixels or as 0..1000, best overlaps the target).

A reply is decoded with its rule's token budget (:func:`reply_tokens`): 16 new tokens, as
lmms-eval gives letters, numbers, words and short phrases; 128 for RefCOCO's JSON boxes; 4 for
``exact`` (the embedded sets' one-word answers, as the tiny model was trained). The analyses'
"correctly answered" and ``analyses.evaluate`` decode with the same budget.

>>> from types import SimpleNamespace
>>> mc = SimpleNamespace(answer="B", choices=("red", "blue"), scorer="choice")
>>> reply_tokens(mc), reply_tokens(SimpleNamespace(scorer="refcoco"))
(16, 128)
>>> judge("The answer is (B).", mc)
Verdict(score=1.0, prediction='B', iou=None)
>>> is_correct("Blue", mc), is_correct("Bright red", mc)
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence

from analyses.scoring import boxes, choice, rules, vqa  # noqa: F401  (they register the rules)
from analyses.scoring.base import RULES, Verdict, rule_named
from analyses.scoring.boxes import BoxFrame, frame_for, iou, parse_box
from analyses.scoring.summary import SUMMARIES, SUMMARY_OF_DATASET, SUMMARY_OF_SCORER
from probes.errors import UserError

REPLY_TOKENS = {"exact": 4, "refcoco": 128}  # max new tokens by rule; every other rule: 16
DEFAULT_REPLY_TOKENS = 16


def reply_tokens(sample) -> int:
    """How many new tokens a reply to ``sample`` is decoded with (its rule's budget)."""
    return REPLY_TOKENS.get(getattr(sample, "scorer", "exact"), DEFAULT_REPLY_TOKENS)

__all__ = [
    "RULES", "SUMMARIES", "SUMMARY_OF_DATASET", "SUMMARY_OF_SCORER", "BoxFrame", "Verdict",
    "frame_for", "iou", "is_correct", "judge", "parse_box", "reply_tokens", "summarize",
    "summary_name",
]


def judge(reply: str, sample, frame: BoxFrame | None = None) -> Verdict:
    """Grade ``reply`` by the rule ``sample.scorer`` names ("exact" when it names none);
    ``frame`` maps a box reply to the original image (box rules only)."""
    return rule_named(getattr(sample, "scorer", "exact") or "exact")(reply, sample, frame)


def is_correct(reply: str, sample, frame: BoxFrame | None = None) -> bool:
    """Whether the reply gets full credit (``judge(...).score == 1``)."""
    return judge(reply, sample, frame).full


def summary_name(samples: Sequence) -> str:
    """Which entry of :data:`SUMMARIES` applies to ``samples`` (all from one benchmark)."""
    scorers = {getattr(s, "scorer", "exact") or "exact" for s in samples}
    datasets = {getattr(s, "dataset", "") for s in samples}
    if len(scorers) != 1:
        raise UserError(
            f"summarize one benchmark at a time; these samples mix the rules {sorted(scorers)}."
        )
    (dataset,) = datasets if len(datasets) == 1 else ("",)
    (scorer,) = scorers
    return SUMMARY_OF_DATASET.get(dataset) or SUMMARY_OF_SCORER.get(scorer, "mean")


def summarize(samples: Sequence, verdicts: Sequence[Verdict], how: str | None = None) -> dict:
    """The benchmark's numbers: ``score`` (the headline), ``n``, ``per_kind`` and the
    summary's own extras (POPE: precision, recall, F1, yes share; RefCOCO: mean IoU);
    ``summary`` names the entry of :data:`SUMMARIES` used (``how`` overrides the choice)."""
    if len(samples) != len(verdicts):
        raise ValueError(f"{len(samples)} samples but {len(verdicts)} verdicts.")
    if not samples:
        raise UserError("there is nothing to summarize: no samples were graded.")
    name = how or summary_name(samples)
    if name not in SUMMARIES:
        raise UserError(f"unknown summary {name!r}; the known ones are {sorted(SUMMARIES)}.")
    return SUMMARIES[name](samples, verdicts)
