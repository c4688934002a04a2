"""What decides an evaluation's numbers (:class:`EvaluateConfig`), each reply's token budget,
and the image-free record of a sample that grading and summaries read (:func:`stub`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from analyses import scoring
from analyses.data import Sample
from analyses.evaluate import methods as m
from probes.errors import UserError


def max_new_tokens(sample, override: int | None = None) -> int:
    """The reply's token budget: ``override``, else its rule's (:func:`scoring.reply_tokens`)."""
    return override or scoring.reply_tokens(sample)


@dataclass(frozen=True)
class EvaluateConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    methods: tuple[str, ...] = ("clean", "aif")
    max_new_tokens: int | None = None  # None: per benchmark (:func:`max_new_tokens`)
    batch_size: int = 8  # clean replies per batch
    n_bootstrap: int = 2000
    seed: int = 0
    vif_sha256: dict[str, str] = field(default_factory=dict)  # vif:PATH -> the file's hash

    def validate(self) -> None:
        m.parse_methods(self.methods)
        m.check_vif_paths(self.methods)
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, not {self.max_new_tokens}.")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}.")
        if self.n_bootstrap < 1:
            raise UserError(f"--bootstrap must be at least 1, not {self.n_bootstrap}.")

    def recorded(self) -> dict[str, Any]:
        return {**asdict(self), "methods": list(self.methods),
                "contrastive": dict(m.CONTRASTIVE),
                "max_new_tokens_rule": {**scoring.REPLY_TOKENS,
                                        "other": scoring.DEFAULT_REPLY_TOKENS}
                if self.max_new_tokens is None else self.max_new_tokens}


def stub(sample: Sample) -> str:
    """What grading and summaries read of a sample, as JSON (no image)."""
    return json.dumps({"id": sample.id, "question": sample.question, "answer": sample.answer,
                       "kind": sample.kind, "dataset": sample.dataset,
                       "answers": list(sample.answers), "choices": list(sample.choices),
                       "scorer": sample.scorer, "meta": dict(sample.meta)}, default=str)


def unstub(text: str) -> Sample:
    """A sample of :func:`stub` (no image, no regions): enough to summarize its verdict."""
    values = json.loads(text)
    return Sample(values["id"], None, values["question"], values["answer"], values["kind"],
                  (), (), None, values["dataset"], answers=tuple(values["answers"]),
                  choices=tuple(values["choices"]), scorer=values["scorer"],
                  meta=values["meta"])
