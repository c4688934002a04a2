"""The text a model is asked: each benchmark's reference prompt per model family, and users' own.

A template holds ``{question}`` and optionally ``{choices}`` (the options as lettered lines,
``A. x``); every other character, braces included, is kept as written. Templates follow the
reference harnesses (lmms-eval 0.7; Qwen2.5-VL's own grounding protocol for RefCOCO): the
chat template around the prompt and the image placement are the adapter's, so most benchmarks
ask every family the same words. Families are the adapters' names (``llava``, ``llava-next``,
``qwen2_5_vl``); a family without an entry gets the benchmark's default.

>>> render(TEMPLATES["vstar"][""], "What is the colour of the cup?", ("red", "blue"))
"What is the colour of the cup?\\nA. red\\nB. blue\\nAnswer with the option's letter from the given choices directly."
>>> render("Q: {question} {json}", "Where?", ())
'Q: Where? {json}'
>>> template_for("refcoco", "qwen2_5_vl")
'Locate {question} in this image and output the bbox coordinates in JSON format.'
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from probes.errors import UserError

BARE = "{question}"  # the question as it is: easy-vqa, fine-grained, own data without choices
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
CHOICE = "{question}\n{choices}\n" + LETTER_INSTRUCTION
_LOCATE_NORMALISED = (
    "Bounding box coordinates are specified in the format (top-left x, top-left y, "
    "bottom-right x, bottom-right y). All values are floating point numbers bounded between 0 "
    "and 1. Please provide the bounding box coordinate of the region this sentence describes: "
    "{question}"
)
_REFCOCO = {
    "": _LOCATE_NORMALISED,  # lmms-eval's refcoco_bbox_rec
    "qwen2_5_vl": "Locate {question} in this image and output the bbox coordinates in JSON format.",
}

# style -> family -> template; "" is the default family. A dataset names its style.
TEMPLATES: dict[str, dict[str, str]] = {
    "plain": {"": BARE},
    "choice": {"": CHOICE},  # own data with choices: the V* / MMStar letter instruction
    "vstar": {"": CHOICE},
    # MMStar's question already lists its options ("Options: A: x, B: y")
    "mmstar": {"": "{question}\n" + LETTER_INSTRUCTION.rstrip(".")},
    # RealWorldQA's question already holds its options and instruction
    "realworldqa": {"": BARE},
    "textvqa": {"": BARE + SHORT_ANSWER},
    "countbench": {
        "": "Look at the image carefully and count the objects. Answer with just a number, "
        "without any additional text. {question}"
    },
    "pope": {"": BARE + SHORT_ANSWER},
    # the information-flow paper's GQA prompt (note the space before the newline)
    "gqa": {"": BARE + " " + SHORT_ANSWER},
    "refcoco": _REFCOCO,
}

_PLACEHOLDER = re.compile(r"\{(question|choices)\}")
LETTERS = string.ascii_uppercase


def lettered(choices: Sequence[str]) -> str:
    """Options as lines ``A. x``.

    >>> print(lettered(["cat", "dog"]))
    A. cat
    B. dog
    """
    if len(choices) > len(LETTERS):
        raise UserError(f"at most {len(LETTERS)} choices are supported, got {len(choices)}.")
    return "\n".join(f"{LETTERS[k]}. {choice}" for k, choice in enumerate(choices))


def check_template(template: str) -> str:
    """Return ``template``; UserError when it has no ``{question}``."""
    if "{question}" not in template:
        raise UserError(
            f"the prompt template {template!r} has no {{question}} placeholder; write e.g. "
            "'{question}\\n{choices}\\nAnswer with the letter.'"
        )
    return template


def render(template: str, question: str, choices: Sequence[str]) -> str:
    """``template`` with ``{question}`` and ``{choices}`` filled in.

    For a question without choices the ``{choices}`` line goes, and when the question comes
    before it so does the rest (the instruction about the options), so one template serves a
    file that mixes open and multiple-choice questions:

    >>> render(CHOICE, "what is it?", ())
    'what is it?'
    """
    if not choices and "{choices}" in template:
        lines = template.split("\n")
        at = next(k for k, line in enumerate(lines) if "{choices}" in line)
        asked = next((k for k, line in enumerate(lines) if "{question}" in line), len(lines))
        if asked == at:
            lines[at] = " ".join(lines[at].replace("{choices}", "").split())
        else:
            lines = lines[:at] if asked < at else lines[:at] + lines[at + 1:]
        template = "\n".join(lines)
    values = {"question": question, "choices": lettered(choices)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def template_for(style: str, family: str | None) -> str:
    """The reference template of a dataset ``style`` (see :data:`TEMPLATES`) for a family."""
    per_family = TEMPLATES.get(style, TEMPLATES["plain"])
    return per_family.get(family or "", per_family[""])


def default_template(dataset, family: str | None) -> str:
    """The template a :class:`~analyses.data.dataset.Dataset` is asked with by default for a
    model ``family``: its benchmark's reference prompt, ``{question}`` for easy-vqa,
    fine-grained and own data without choices."""
    return template_for(getattr(dataset, "prompt_style", "plain"), family)
