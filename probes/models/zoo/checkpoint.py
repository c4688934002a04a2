"""What every tiny checkpoint builder shares: greedy generation defaults and saving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig


def greedy_generation_config(text_config: Any) -> GenerationConfig:
    """Greedy decoding with the text model's special token ids."""
    return GenerationConfig(
        do_sample=False, max_new_tokens=8, bos_token_id=text_config.bos_token_id,
        eos_token_id=text_config.eos_token_id, pad_token_id=text_config.pad_token_id,
    )


def save(model: Any, processor: Any, directory: Path) -> None:
    """Save model (safetensors) and processor side by side, as hub checkpoints are laid out."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def random_model(model_class: Any, config: Any, seed: int, silenced: Sequence[int] = ()) -> Any:
    """An untrained ``model_class(config)`` (in eval mode, greedy generation) from ``seed``.

    ``silenced`` token ids get output rows of 0 (logit 0): an untrained model that ranks ``</s>``
    first would answer nothing, and one that emitted an image placeholder would have it read
    back as an image token; silenced, it says random *words*, which exercises more of the
    answer path."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight[list(silenced)] = 0.0
    model.generation_config = greedy_generation_config(config.get_text_config())
    return model
