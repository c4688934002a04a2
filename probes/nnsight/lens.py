"""The logit lens's residual stream read inside an nnsight trace: each asked decoder layer's
output at the asked positions, saved in one ``model.trace``; the same numbers as
:func:`probes.logit_lens.residuals` (hooks on a plain forward), which
:func:`probes.logit_lens.lens_readout` takes as ``states=`` and unembeds the same way.

>>> from PIL import Image
>>> from probes.logit_lens import lens_readout
>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> states = residuals(loaded, inputs, "last")
>>> tuple(states.shape), tuple(lens_readout(loaded, inputs, "last", states=states).top_ids.shape)
((6, 1, 128), (6, 1, 5))
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from probes.devices import module_device
from probes.logit_lens import Positions, layer_output, resolve_layers, resolve_positions
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.nnsight.engine import model_inputs, wrap


@torch.inference_mode()
def residuals(loaded: LoadedModel, inputs: VLInputs, positions: Positions = "last",
              layers: Sequence[int] | None = None, remote=None) -> torch.Tensor:
    """[layers, positions, hidden] as :func:`probes.logit_lens.residuals`, read in one nnsight
    trace (``remote=`` as nnsight takes it)."""
    if inputs.input_ids.shape[0] != 1:
        raise ValueError("the logit lens reads one input row at a time")
    chosen = resolve_layers(loaded, layers)
    where = torch.from_numpy(resolve_positions(loaded, inputs, positions))
    model = wrap(loaded)
    decoder = operator.attrgetter(loaded.adapter.layers_path)(model)
    options = {} if remote is None else {"remote": remote}
    batch = {**model_inputs(loaded, inputs), "logits_to_keep": 1, "use_cache": False}
    saved = {}
    with model.trace(batch, **options):
        for layer in sorted(set(chosen)):  # nnsight serves the layers in the forward's order
            saved[layer] = layer_output(decoder[layer].output)[0, where].save()
    device = module_device(loaded.adapter.final_norm(loaded.model))
    return torch.stack([saved[layer].to(device) for layer in chosen])
