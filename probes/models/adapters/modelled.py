"""What the engine reproduces of a language model's attention, and the refusal of the rest.

The executor (:mod:`probes.run`) runs the decoder layers itself: it builds its own additive
causal masks (:class:`probes.suffix.SuffixMasks`, :mod:`probes.masking`), computes the rotary
tables of a whole run in one call of the model's own rotary embedding module
(:class:`probes.suffix.RotaryTables`), and records attention with its own softmax
(:mod:`probes.attention`). A config feature that lives in the mask, in the attention logits or
in a rotary table that changes with the length of each call is therefore outside what it
reproduces, and a model that turns one on is refused with one sentence naming the feature and
its config field rather than measured wrongly:

- a sliding window (``sliding_window``, gated by ``use_sliding_window`` / ``layer_types`` where
  the family has them) that is shorter than the context, unless the family's adapter models it
  (``Adapter.models_sliding_windows``: Gemma 3, whose windows and bidirectional image blocks
  the executor's masks carry, :mod:`probes.structure`), and other non-full ``layer_types``
  (chunked, linear attention) or ``attention_chunk_size``; the sentence for hybrid models
  (Qwen3.5, Qwen3-Next: Gated DeltaNet ``linear_attention`` layers) names the layers that have
  no attention matrix;
- attention logit soft-capping (``attn_logit_softcapping``): the attention functions and the
  recorded probabilities apply no tanh cap;
- ALiBi (``alibi``, ``use_alibi``, ``position_embedding_type="alibi"``): a bias the executor's
  own masks do not carry;
- bidirectional attention (``use_bidirectional_attention``): the masks are causal;
- position encodings other than rotary ones (a text config without ``rope_parameters``:
  Bloom's ALiBi, MPT's, GPT-2's learned positions);
- rotary scaling whose tables depend on the longest position of each call (``rope_type``
  "dynamic" or "longrope" in ``rope_parameters`` / ``rope_scaling``): a decode's tables are
  computed at once for every position, the model's step by step.

Modelled, so not refused: every other rotary type (linear, yarn, llama3, Qwen's mrope: static
tables, computed by the model's own module); ``attention_bias`` and q/k norms (inside the
attention module's projections, which run unchanged); ``attention_dropout`` (models run in
eval mode); a ``query_pre_attn_scalar`` (the module's scaling reaches every attention path);
``final_logit_softcapping``: it caps logits, not attention, and the vision-language classes
fusionlens loads (LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, and Gemma 3: only the text-only
``Gemma3ForCausalLM`` caps, ``Gemma3ForConditionalGeneration`` does not; the tiny Gemma 3 sets
it to prove so) compute their logits as ``lm_head(hidden)`` without it, exactly as the
executor does, so its numbers equal the model's own forward. Gemma 3's two rotary tables (one
per layer type) are computed by the model's own module, each layer given its type's
(:meth:`~probes.models.adapters.base.Adapter.rotary_type`).
"""

from __future__ import annotations

import inspect
from typing import Any

from probes.errors import UserError

DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")  # their tables change with the call's length


def _refuse(feature: str, evidence: str) -> UserError:
    return UserError(f"fusionlens refuses this model: its text config turns on {feature} "
                     f"({evidence}), which fusionlens' engine does not reproduce.")


def _ranges(indices: list[int]) -> str:
    """Layer indices as runs: [0, 1, 2, 4, 5, 6, 8] -> '0-2, 4-6, 8'.

    >>> _ranges([0, 1, 2, 4, 5, 6, 8])
    '0-2, 4-6, 8'
    """
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


def _declares(config: Any, name: str) -> bool:
    """Whether the config's class has the field ``name`` (a dataclass field from transformers
    5.x's typed configs, or an ``__init__`` argument), not just an extra attribute."""
    for cls in type(config).__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return True
    init = getattr(type(config), "__init__", None)
    try:
        return name in inspect.signature(init).parameters
    except (TypeError, ValueError):
        return False


def _sliding_window(text_config: Any) -> int | None:
    """The window a layer of this model attends within, where it can cut a query off a key
    within the model's context; None where it never does."""
    window = getattr(text_config, "sliding_window", None)
    if window is None:
        return None
    # the Qwen2 family uses the window only with use_sliding_window; a family whose config
    # declares layer_types slides in the layers named "sliding_attention" (the Qwen2 family
    # derives them from max_window_layers: the layers from that index on); Mistral declares
    # neither and slides in every layer (it ignores a layer_types given to it)
    if getattr(text_config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(text_config, "layer_types", None)
    if _declares(text_config, "layer_types") and layer_types is not None:
        if "sliding_attention" not in layer_types:
            return None
    elif hasattr(text_config, "use_sliding_window"):  # the Qwen2 family before layer_types
        if int(text_config.max_window_layers) >= int(text_config.num_hidden_layers):
            return None
    # a query at position q reads key k when q - k < window (transformers' sliding-window
    # overlay). Within the model's context (Adapter.build_inputs refuses a longer prompt)
    # q - k <= max_position_embeddings - 1, so a window at least that long masks nothing and
    # the model is exactly the causal one the engine reproduces (a window of None likewise)
    context = getattr(text_config, "max_position_embeddings", None)
    if context is not None and int(window) >= int(context):
        return None
    return int(window)


def _rope_types(text_config: Any) -> list[tuple[str, str]]:
    """(field, rope type) of every rotary setting: ``rope_parameters`` (transformers 5, maybe
    one dict per layer type) and a legacy ``rope_scaling``."""
    found = []
    for field in ("rope_parameters", "rope_scaling"):
        settings = getattr(text_config, field, None)
        if not isinstance(settings, dict):
            continue
        nested = [value for value in settings.values() if isinstance(value, dict)]
        for entry in nested or [settings]:
            kind = entry.get("rope_type", entry.get("type"))
            if kind is not None:
                found.append((field, str(kind)))
    return found


def check_hybrid(config: Any) -> None:
    """Refuse a hybrid model (Qwen3.5, Qwen3-Next: Gated DeltaNet ``linear_attention`` layers
    between full-attention ones) in one sentence naming the layers without an attention matrix.

    >>> from transformers import Qwen3NextConfig
    >>> check_hybrid(Qwen3NextConfig(num_hidden_layers=8))
    Traceback (most recent call last):
    ...
    probes.errors.UserError: fusionlens refuses this model: its layers 0-2, 4-6 are linear-attention layers (layer_types 'linear_attention'), which have no attention matrix to knock out or record; only layers 3, 7 attend with one.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    linear = [index for index, kind in enumerate(layer_types) if kind == "linear_attention"]
    if linear:
        full = [index for index, kind in enumerate(layer_types) if kind != "linear_attention"]
        raise UserError(
            f"fusionlens refuses this model: its layers {_ranges(linear)} are linear-attention "
            f"layers (layer_types 'linear_attention'), which have no attention matrix to knock "
            f"out or record; only layers {_ranges(full) or 'none'} attend with one.")


def check_modelled(config: Any, sliding_windows: bool = False) -> None:
    """Refuse, in one sentence, a model whose text config turns on an attention feature the
    engine does not reproduce (see the module docstring); return quietly otherwise.
    ``sliding_windows``: the family's adapter models its sliding-window layers (Gemma 3), so
    a window shorter than the context is allowed."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = _sliding_window(text)
    if window is not None and not sliding_windows:
        context = getattr(text, "max_position_embeddings", None)
        switch = "use_sliding_window=True, " if hasattr(text, "use_sliding_window") else ""
        raise _refuse("sliding-window attention",
                      f"{switch}sliding_window={window} with max_position_embeddings={context}")
    check_hybrid(config)
    layer_types = getattr(text, "layer_types", None) or []
    other = sorted({kind for kind in layer_types if kind not in ("full_attention", "sliding_attention")})
    if other:
        raise _refuse(f"{other[0].replace('_', ' ')} layers", f"layer_types names {other[0]!r}")
    if getattr(text, "attention_chunk_size", None) is not None:
        raise _refuse("chunked attention", f"attention_chunk_size={text.attention_chunk_size}")
    if getattr(text, "attn_logit_softcapping", None) is not None:
        raise _refuse("attention logit soft-capping",
                      f"attn_logit_softcapping={text.attn_logit_softcapping}")
    for field in ("alibi", "use_alibi"):
        if getattr(text, field, False) is True:
            raise _refuse("ALiBi position biases", f"{field}=True")
    if getattr(text, "position_embedding_type", None) == "alibi":
        raise _refuse("ALiBi position biases", "position_embedding_type='alibi'")
    if getattr(text, "use_bidirectional_attention", False):
        raise _refuse("bidirectional attention", "use_bidirectional_attention=True")
    if not any(hasattr(text, field) for field in ("rope_parameters", "rope_scaling", "rope_theta")):
        # learned, sinusoidal or ALiBi positions without a field of their own (Bloom, MPT, GPT-2):
        # the executor hands every layer rotary tables and nothing else
        raise _refuse("position encodings other than rotary ones", "it has no rope_parameters")
    for field, kind in _rope_types(text):
        if any(dynamic in kind for dynamic in DYNAMIC_ROPE_TYPES):
            raise _refuse(f"{kind!r} rotary scaling, whose tables depend on each call's length",
                          f"{field} rope type {kind!r}")
