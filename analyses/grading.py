"""Whether an answer is right: the one grading path every analysis uses (answers are decoded
once, by :func:`probes.models.answer.answer_text`).

>>> from types import SimpleNamespace
>>> is_correct(" Red", SimpleNamespace(answer="red "))
True
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from analyses import scoring
from probes.models.answer import answer_questions
from probes.models.loading import LoadedModel


def is_correct(answer: str, sample) -> bool:
    """Whether ``answer`` gets full credit by the sample's scoring rule
    (:func:`analyses.scoring.is_correct`; the embedded datasets' "exact": the answer stripped
    and lower-cased equals the reference likewise)."""
    return scoring.is_correct(answer, sample)


def grade(loaded: LoadedModel, samples: Sequence, batch_size: int = 128,
          progress: bool = False, max_new_tokens: int = 4) -> list[bool]:
    """Per sample, whether the greedy answer is right (:func:`is_correct`)."""
    correct = []
    batches = range(0, len(samples), batch_size)
    for start in tqdm(batches, disable=not progress, desc="answering", unit="batch"):
        chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        answers = answer_questions(loaded, [s.image for s in chunk], [s.ask for s in chunk],
                                   max_new_tokens=max_new_tokens)
        correct += [is_correct(a.text, s) for a, s in zip(answers, chunk)]
    return correct
