"""TextVQA's score: the standard VQA accuracy over ten human answers, after the standard VQA
answer normalisation (the official VQA evaluation's, as lmms-eval's TextVQA task applies it to
the reply and to every human answer).

Normalisation, in order: lower-case; delete "," and "?"; "'s" -> " 's"; newlines and tabs ->
spaces; strip; each punctuation mark of :data:`PUNCTUATION` is deleted everywhere when it
touches a space anywhere in the text, else replaced by a space; a period not followed by a
digit is deleted (the official pattern's look-behind is a typo, so "5." loses its period but
"a.5" keeps it; at most 32 are deleted, the official code passes ``re.UNICODE`` as the count);
number words none/zero..ten -> digits; the articles a/an/the are dropped; words are re-joined
by single spaces and common contractions written without apostrophes get them back.

>>> normalize_answer("The Two Dogs' bowl.")
"2 dogs' bowl"
>>> vqa_accuracy("two", ["2"] * 3 + ["3"] * 7)
0.9
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence

from analyses.scoring.base import Verdict, acceptable, rule

PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
LONE_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official evaluation's pattern
MAX_PERIODS = 32  # the official code passes re.UNICODE (32) where re.sub takes the count
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Contractions the official evaluation restores: each written form is reached from every
# spelling that lacks exactly one of its apostrophes ("dont" -> "don't", "couldnt've" and
# "couldn'tve" -> "couldn't've"). "let's" and "she's" map to themselves there (so "lets" and
# "shes" stay), and "somebody'd" maps to "somebodyd" (sic), both reproduced below.
CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've
you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    table = {}
    for written in CONTRACTED:
        for at in (i for i, character in enumerate(written) if character == "'"):
            table[written[:at] + written[at + 1:]] = written
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contraction_table()


def _punctuation(text: str) -> str:
    out = text
    delete_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or delete_all else " ")
    return LONE_PERIOD.sub("", out, count=MAX_PERIODS)


def _words(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """The VQA normal form of an answer (the steps in the module docstring)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(text))


def vqa_accuracy(reply: str, answers: Sequence[str]) -> float:
    """Mean over the answers i of min(1, (number of the other answers equal to the reply) / 3),
    everything normalised first."""
    said = normalize_answer(reply)
    truth = [normalize_answer(answer) for answer in answers]
    matches = sum(answer == said for answer in truth)
    return statistics.mean(
        min(1, float(matches - (answer == said)) / 3) for answer in truth
    )


@rule("vqa")
def judge_vqa(reply: str, sample, frame=None) -> Verdict:
    """VQA accuracy of the reply against the sample's acceptable answers (TextVQA's ten)."""
    return Verdict(vqa_accuracy(reply, acceptable(sample)), normalize_answer(reply))
