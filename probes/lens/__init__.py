"""TransformerLens interop (the ``lens`` extra: ``pip install 'fusionlens[lens]'``).

- :func:`to_activation_cache`: a fusionlens recording as a TransformerLens ``ActivationCache``
  under TL's hook names (``blocks.{l}.attn.hook_pattern``, [batch, head, query, key]), with the
  token groups' positions alongside;
- :func:`crosscheck`: our recorded attention and knockout effects against a TransformerBridge
  booted on a deep copy of the loaded model (``python -m probes.lens crosscheck``).

Importing this package needs no TransformerLens; calling into it without the extra is one
:class:`~probes.errors.UserError` sentence that names it.

>>> import torch
>>> from PIL import Image
>>> from probes import attention
>>> from probes.models.loading import load_model
>>> from probes.record import AttentionRecorder
>>> from probes.tokens import token_groups
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> groups = token_groups(loaded.adapter, inputs)
>>> recorder = AttentionRecorder(queries=range(groups.length))  # every row, every layer
>>> attention.enable(loaded.model)
'fusionlens_sdpa'
>>> with torch.no_grad(), attention.attach(loaded.adapter.attention_modules(loaded.model), recorder):
...     _ = loaded.model(**inputs.batch)
>>> view = to_activation_cache(recorder, groups)
>>> view.cache["blocks.2.attn.hook_pattern"].shape  # [batch, head, query, key]
torch.Size([1, 4, 74, 74])
>>> round(float(view.cache["pattern", 2][0, :, groups.last[0]].sum(-1).mean()), 5)  # rows sum to 1
1.0
>>> view.positions["last"].tolist()
[73]
"""

from __future__ import annotations

from probes.lens.compare import Crosscheck, crosscheck
from probes.lens.export import LensRecording, pattern_hook, scores_hook, to_activation_cache
from probes.lens.extra import require_transformer_lens

__all__ = [
    "Crosscheck",
    "LensRecording",
    "crosscheck",
    "pattern_hook",
    "require_transformer_lens",
    "scores_hook",
    "to_activation_cache",
]
