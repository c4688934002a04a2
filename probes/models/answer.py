"""Greedy answers with their probabilities: the first user command's engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from probes.models.loading import LoadedModel


@dataclass(frozen=True)
class Answer:
    """A greedy answer. ``probability`` is the product of its tokens' probabilities (the
    end-of-sequence token excluded); ``token_probabilities`` lists them one by one."""

    text: str
    token_ids: tuple[int, ...]
    token_probabilities: tuple[float, ...]

    @property
    def probability(self) -> float:
        return float(torch.tensor(self.token_probabilities, dtype=torch.float64).prod())


@torch.inference_mode()
def answer_questions(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int = 16,
) -> list[Answer]:
    """Answer each (image, question) pair greedily, in one batch.

    >>> from probes.models.loading import load_model
    >>> loaded = load_model("tiny-random-llava")
    >>> [a] = answer_questions(loaded, [Image.new("RGB", (64, 64))], ["what shape is it?"], 2)
    >>> 0.0 <= a.probability <= 1.0
    True
    """
    inputs = loaded.adapter.build_inputs(images, questions).to(loaded.device, loaded.dtype)
    tokenizer = loaded.processor.tokenizer
    output = loaded.model.generate(
        **inputs.batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompt_length = inputs.input_ids.shape[1]
    new_tokens = output.sequences[:, prompt_length:]
    step_probs = torch.stack(
        [logits.float().softmax(-1) for logits in output.logits], dim=1
    )  # [batch, steps, vocab]
    chosen = step_probs.gather(-1, new_tokens[:, : step_probs.shape[1], None])[..., 0]
    answers = []
    for row_tokens, row_probs in zip(new_tokens.tolist(), chosen.tolist()):
        tokens = answer_tokens(loaded, row_tokens)
        text = answer_text(loaded, tokens)
        answers.append(Answer(text, tokens, tuple(row_probs[:len(tokens)])))
    return answers


def stop_ids(loaded: LoadedModel) -> set[int]:
    """Tokens that end an answer: end of sequence, and padding (batched rows that finished)."""
    pad = loaded.processor.tokenizer.pad_token_id
    return loaded.eos_token_ids() | ({pad} if pad is not None else set())


def answer_tokens(loaded: LoadedModel, tokens) -> tuple[int, ...]:
    """The generated tokens up to the first stop token (:func:`stop_ids`)."""
    stops = stop_ids(loaded)
    tokens = [int(t) for t in tokens]
    return tuple(tokens[:next((i for i, t in enumerate(tokens) if t in stops), len(tokens))])


def answer_text(loaded: LoadedModel, tokens) -> str:
    """The answer as every analysis reads it: the generated tokens up to the first stop token,
    decoded without special tokens, stripped. The one decoding of generated answers."""
    kept = answer_tokens(loaded, tokens)
    return loaded.processor.tokenizer.decode(list(kept), skip_special_tokens=True).strip()
