"""Multiple choice: which option letter a reply names (V*, MMStar, own data with choices) and
RealWorldQA's mix of letter and open-ended answers.

The letter is read by lmms-eval's 2026 extraction rule (``mcq_extract``) over the question's own
letters (:func:`choice_letters`; lmms-eval's MMStar and RealWorldQA tasks pass A-D whatever the
options, so there "It is A, not C." to a two-option question reads C), with two changes:

- a choice letter inside a word is never a candidate (lmms-eval reads "Cotton" as C and "Blue"
  as B through its any-occurrence fallback, and "The answer is Blue" as B through its phrase
  rule); a letter counts only when no ASCII letter touches it on either side ("答案是A" is
  still A);
- when no letter is found, a reply equal to exactly one option's text (case, surrounding
  spaces and end punctuation ignored) names that option, as VLMEvalKit does.

>>> extract_letter("The answer is (B).", "ABCD")
'B'
>>> extract_letter("Cotton", "ABCD")
''
>>> from types import SimpleNamespace
>>> sample = SimpleNamespace(answer="C", choices=("silk", "wool", "cotton"))
>>> judge_choice("Cotton.", sample)
Verdict(score=1.0, prediction='C', iou=None)
"""

from __future__ import annotations

import string

from analyses.scoring.base import Verdict, rule

DEFAULT_LETTERS = "ABCD"  # lmms-eval's MMStar and RealWorldQA tasks pass exactly these
END_CHARACTERS = ",.!?;:'\""  # stripped from both ends, one character kind after the other
# phrases after which the first choice letter is the answer (lmms-eval's list, which also
# holds a few Korean, Chinese and Japanese ones)
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is",
    "the best answer is", "best answer is", "the correct option is", "correct option is",
    "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
    "答えは",
)
# priority of each way a letter can appear; the highest wins, then the latest position
START, END, PHRASE, PARENTHESES, PERIOD, COLON, RIGHT_PAREN, SPACE, ANYWHERE = (
    10, 9, 7, 6, 5, 4, 3, 2, 0)
AFTER_LETTER = {".": PERIOD, ":": COLON, ")": RIGHT_PAREN, " ": SPACE}


def choice_letters(sample) -> str:
    """The letters a sample's options go by: A, B, ... one per choice (A-D without choices).
    When the answer letter lies beyond them (options parsed from a question's text can be
    miscounted), A up to the answer letter and at least D, so a right reply can be read."""
    choices = getattr(sample, "choices", ()) or ()
    letters = "".join(chr(ord("A") + i) for i in range(len(choices))) or DEFAULT_LETTERS
    answer = str(getattr(sample, "answer", "")).strip().upper()
    if len(answer) == 1 and "A" <= answer <= "Z" and answer not in letters:
        last = max(answer, DEFAULT_LETTERS[-1])
        letters = "".join(chr(c) for c in range(ord("A"), ord(last) + 1))
    return letters


def _strip_ends(reply: str) -> str:
    text = reply.strip()
    for character in END_CHARACTERS:
        text = text.strip(character)
    return text


def _hide_letters_in_words(text: str, letters: str) -> str:
    """``text`` with every choice letter that touches an ASCII letter lower-cased (choice
    letters are capitals, so a lower-cased one is no candidate); the length is unchanged."""
    def latin(at: int) -> bool:
        return 0 <= at < len(text) and text[at] in string.ascii_letters

    out = list(text)
    for i, character in enumerate(text):
        if character in letters and (latin(i - 1) or latin(i + 1)):
            out[i] = character.lower()
    return "".join(out)


def extract_letter(reply: str, letters: str = DEFAULT_LETTERS) -> str:
    """The option letter ``reply`` names, or "" (see the module docstring for the rule)."""
    stripped = _hide_letters_in_words(_strip_ends(reply), letters)
    if not stripped.strip():
        return ""
    text = f" {stripped} "  # padded so that a letter at either end has a neighbour
    bare = text.strip()
    found: list[tuple[int, int, str]] = []  # (priority, position, letter)
    for letter in letters:
        if f"({letter})" in text:
            found.append((PARENTHESES, text.rfind(f"({letter})"), letter))
        for follower, priority in AFTER_LETTER.items():
            if letter + follower in text:
                found.append((priority, text.rfind(letter + follower), letter))
        if bare.startswith(letter) and (len(bare) == 1 or not bare[1].isalpha()):
            found.append((START, 0, letter))
        if bare.endswith(letter) and (len(bare) == 1 or not bare[-2].isalpha()):
            found.append((END, len(text) - 1, letter))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at == -1:
            continue
        for letter in letters:
            position = text.find(letter, at + len(phrase))
            if position != -1:
                found.append((PHRASE, position, letter))
    if not found:
        found = [(ANYWHERE, text.rfind(letter), letter) for letter in letters if letter in text]
    return max(found)[2] if found else ""


def _plain(text: str) -> str:
    return _strip_ends(text).strip().lower()


def option_letter(reply: str, sample) -> str:
    """The letter of the one option whose text the reply is, or "" (none, or several)."""
    said = _plain(reply)
    choices = getattr(sample, "choices", ()) or ()
    hits = [i for i, choice in enumerate(choices) if said and _plain(str(choice)) == said]
    return chr(ord("A") + hits[0]) if len(hits) == 1 else ""


def read_choice(reply: str, sample) -> str:
    """The letter the reply names: by the extraction rule, else by an option's text."""
    return extract_letter(reply, choice_letters(sample)) or option_letter(reply, sample)


@rule("choice")
def judge_choice(reply: str, sample, frame=None) -> Verdict:
    """Right when the letter the reply names is the sample's answer letter."""
    letter = read_choice(reply, sample)
    return Verdict(float(letter == str(sample.answer).strip().upper()), letter)


@rule("realworldqa")
def judge_realworldqa(reply: str, sample, frame=None) -> Verdict:
    """A letter answer as :func:`judge_choice`; an open answer (a word, a number) must equal
    the reply lower-cased, stripped and without trailing periods."""
    gold = str(sample.answer).strip()
    if len(gold) == 1 and gold.upper() in DEFAULT_LETTERS + choice_letters(sample):
        letters = choice_letters(sample)  # A-D when the options could not be counted
        letters = letters if gold.upper() in letters else DEFAULT_LETTERS
        letter = extract_letter(reply, letters) or option_letter(reply, sample)
        return Verdict(float(letter == gold.upper()), letter)
    said = reply.lower().strip().rstrip(".")
    return Verdict(float(said == gold.lower()), said)
