"""Whether an answer is right: the one grading path every analysis uses (answers are decoded
once, by :func:`probes.models.answer.answer_text`).

>>> from types import SimpleNamespace
>>> is_correct(" Red", SimpleNamespace(answer="red "))
True
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from analyses import scoring
from probes.models.answer import answer_questions
from probes.models.loading import LoadedModel


def is_correct(answer: str, sample) -> bool:
    """Whether ``answer`` gets full credit by the sample's scoring rule
    (:func:`analyses.scoring.is_correct`; the embedded datasets' "exact": the answer stripped
    and lower-cased equals the reference likewise)."""
    return scoring.is_correct(answer, sample)


def replies(loaded: LoadedModel, samples: Sequence, max_new_tokens: Sequence[int]) -> list[str]:
    """Each sample's greedy reply decoded with its own token budget, one batch per distinct
    budget (greedy, so a row's reply does not depend on its batch)."""
    texts = [""] * len(samples)
    for budget in sorted(set(max_new_tokens)):
        rows = [k for k, b in enumerate(max_new_tokens) if b == budget]
        answers = answer_questions(loaded, [samples[k].image for k in rows],
                                   [samples[k].ask for k in rows], max_new_tokens=budget)
        for k, answer in zip(rows, answers):
            texts[k] = answer.text
    return texts


def grade(loaded: LoadedModel, samples: Sequence, batch_size: int = 128,
          progress: bool = False, max_new_tokens: int | None = None) -> list[bool]:
    """Per sample, whether the greedy answer is right (:func:`is_correct`), each decoded with
    ``max_new_tokens`` or, when None, its scoring rule's budget
    (:func:`analyses.scoring.reply_tokens`)."""
    correct = []
    batches = range(0, len(samples), batch_size)
    for start in tqdm(batches, disable=not progress, desc="answering", unit="batch"):
        chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        budgets = [max_new_tokens or scoring.reply_tokens(s) for s in chunk]
        correct += [is_correct(text, s) for text, s in zip(replies(loaded, chunk, budgets), chunk)]
    return correct
