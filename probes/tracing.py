"""nnsight is the tracing layer: trace a loaded model with nnsight and switch fusionlens edits
on around (or inside) your own trace; they compose with your interventions.

>>> import torch
>>> from PIL import Image
>>> from probes import attention
>>> from probes.masking import EdgeMaskPlan, Knockout
>>> from probes.models.loading import load_model
>>> from probes.record import AttentionRecorder
>>> from probes.tokens import token_groups
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> groups = token_groups(loaded.adapter, inputs)
>>> n = loaded.adapter.num_layers
>>> knockout = EdgeMaskPlan([Knockout.window("image->question,last", 2, 1, n).edges(groups, n)])
>>> recorder = AttentionRecorder(queries=groups.last, layers=[2])
>>> traced = traceable(loaded)
>>> with attention.attach(loaded.adapter.attention_modules(loaded.model),
...                       attention.CombinedPlan((knockout, recorder))):
...     with traced.trace(**inputs.batch):
...         traced.model.language_model.layers[4].output[:, -1] = 0  # the user's intervention
...         logits = traced.lm_head.output.save()
>>> float(recorder.maps[2][0, :, 0, torch.from_numpy(groups.image)].sum())  # blocked: no mass
0.0
>>> logits.shape[-1] == loaded.model.config.text_config.vocab_size
True
"""

from __future__ import annotations

from nnsight import NNsight

from probes import attention
from probes.models.loading import LoadedModel


def traceable(loaded: LoadedModel) -> NNsight:
    """``loaded.model`` wrapped for nnsight, its language model's attention routed through
    fusionlens (a pure passthrough until a plan is attached)."""
    attention.enable(loaded.model)
    return NNsight(loaded.model)
