"""What every tiny checkpoint builder shares: greedy generation defaults and saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
