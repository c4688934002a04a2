"""The short-answer rules: exact match (the embedded datasets), CountBench's number, POPE's
yes/no and GQA's word or phrase.

>>> from types import SimpleNamespace
>>> judge_count("Three.", SimpleNamespace(answer="3"))
Verdict(score=1.0, prediction='3', iou=None)
>>> pope_answer("Yes, there is a dog in the image.")
'yes'
>>> pope_answer("There is no dog.")
'no'
>>> judge_gqa("Left.", SimpleNamespace(answer="left"))
Verdict(score=1.0, prediction='left', iou=None)
"""

from __future__ import annotations

import string

from analyses.scoring.base import Verdict, acceptable, rule

COUNT_WORDS = {
    word: str(number) for number, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
COUNT_WORDS["none"] = "0"
NEGATIONS = frozenset({"no", "not"})  # LLaVA's POPE rule: a reply with one of these says no
NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


@rule("exact")
def judge_exact(reply: str, sample, frame=None) -> Verdict:
    """Right when the reply, stripped and lower-cased, equals an acceptable answer likewise."""
    said = reply.strip().lower()
    return Verdict(float(any(said == answer.strip().lower() for answer in acceptable(sample))),
                   said)


def count_answer(text: str) -> str:
    """A count as digits: stripped, lower-cased, trailing periods dropped, number words
    zero..twenty (and "none") written as digits."""
    said = str(text).strip().lower().rstrip(".").strip()
    return COUNT_WORDS.get(said, said)


@rule("count")
def judge_count(reply: str, sample, frame=None) -> Verdict:
    """Right when the reply's count (:func:`count_answer`) is the sample's number."""
    said = count_answer(reply)
    return Verdict(float(said == count_answer(sample.answer)), said)


def pope_answer(reply: str) -> str:
    """LLaVA's POPE reading of a reply: its text before the first ".", commas removed, split
    into words; "no" if a word is "no" or "not" (ignoring case), else "yes"."""
    first_sentence = reply.split(".")[0].replace(",", "")
    return "no" if NEGATIONS.intersection(first_sentence.lower().split()) else "yes"


@rule("pope")
def judge_pope(reply: str, sample, frame=None) -> Verdict:
    """Right when :func:`pope_answer` of the reply is the sample's yes/no label."""
    said = pope_answer(reply)
    return Verdict(float(said == str(sample.answer).strip().lower()), said)


def gqa_answer(text: str) -> str:
    """A GQA answer compared: lower-cased, ASCII punctuation deleted, stripped."""
    return str(text).lower().translate(NO_PUNCTUATION).strip()


@rule("gqa")
def judge_gqa(reply: str, sample, frame=None) -> Verdict:
    """Right when the reply equals an acceptable answer, both as :func:`gqa_answer`."""
    said = gqa_answer(reply)
    return Verdict(float(any(said == gqa_answer(a) for a in acceptable(sample))), said)
