"""The nnsight engine: fusionlens' edge knockouts, attention recording and steering as edits
inside an nnsight trace, with no registered attention function.

:func:`wrap` makes ``loaded.model`` nnsight's vision-language model; :func:`edits` turns
knockouts, a recorder or a steering plan into tensors (before the trace); :func:`apply`,
called inside ``with model.trace(...)``, applies them to each decoder layer's attention call
and returns the recorded probabilities; :func:`block` is :func:`apply` for knockouts alone.
They compose with your own interventions in the same trace (nnsight serves a trace's values in
the order the forward makes them: call :func:`apply` before reading or editing any layer after
the first one it edits). The analyses use the
engine through :mod:`probes.engines.nnsight` (``--engine nnsight``), the
:class:`~probes.engine.Engine` over :func:`run_knockouts`, :func:`record` and
:func:`masked_generate`.

>>> import torch
>>> from PIL import Image
>>> from probes import nnsight as engine
>>> from probes.masking import Knockout
>>> from probes.models.loading import load_model
>>> from probes.record import AttentionRecorder
>>> from probes.tokens import token_groups
>>> loaded = load_model("tiny-random-llava")
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> groups = token_groups(loaded.adapter, inputs)
>>> n = loaded.adapter.num_layers
>>> knockout = Knockout.window("image->question,last", 2, 1, n)  # image->text cut at layer 2
>>> planned = engine.edits(loaded, inputs, knockout,
...                        record=AttentionRecorder(queries=groups.last, layers=[2]))
>>> model = engine.wrap(loaded)
>>> with model.trace(engine.model_inputs(loaded, inputs)):
...     recorded = engine.apply(model, planned)
...     model.model.language_model.layers[4].output[:, -1] = 0  # your own intervention
...     logits = model.lm_head.output.save()
>>> image = torch.from_numpy(groups.image)
>>> float(recorded[2][0, :, 0, image].sum())  # the last token reads no image token at layer 2
0.0
>>> logits.shape[-1] == loaded.model.config.text_config.vocab_size
True
"""

from probes.nnsight.edits import Edits, additive_mask, apply, attention_call
from probes.nnsight.engine import (
    edits,
    masked_generate,
    model_inputs,
    record,
    repeat_rows,
    run_examples,
    run_knockouts,
    trace,
    wrap,
)
from probes.nnsight.version import SUPPORTED, check_version


def block(model, planned: Edits) -> None:
    """Inside ``with model.trace(...)``: block the edges of ``planned`` (made by
    :func:`edits` from knockouts) at their layers; the same as :func:`apply`, results unused."""
    apply(model, planned)


__all__ = ["SUPPORTED", "Edits", "additive_mask", "apply", "attention_call", "block",
           "check_version", "edits", "masked_generate", "model_inputs", "record", "repeat_rows",
           "run_examples", "run_knockouts", "trace", "wrap"]
