"""The short way through the probes, for notebooks and scripts: record attention to the image,
decode a reply as text (clean or under a knockout), read logits as tokens with probabilities.

Each is a thin layer over the engine (:mod:`probes.run`, :mod:`probes.record`) on inputs from
:func:`probes.inputs.build_inputs`, whose token groups (and box) they use.

>>> from PIL import Image
>>> from probes.inputs import build_inputs
>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> inputs = build_inputs(loaded, Image.new("RGB", (64, 64)), "what shape is it?", box=(0, 0, 16, 16))
>>> recording = record_attention(loaded, inputs, queries="last", keys="image", layers=[2])
>>> recording.values(2).shape, recording.boxes.shape  # one value and one pixel box per image token
((64,), (64, 4))
>>> reply = decode(loaded, inputs, "object->question,last", max_new_tokens=3)
>>> isinstance(reply.text, str), reply.logits.shape[0] == len(reply.tokens) <= 3
(True, True)
>>> [text for text, _ in top_tokens(loaded, reply.logits[0], k=2)] == [
...     loaded.processor.tokenizer.decode([t]) for t in reply.logits[0].topk(2).indices]
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probes import engines
from probes.inputs import token_boxes
from probes.masking import Knockout, parse_flows
from probes.models.adapters import VLInputs
from probes.models.answer import answer_text
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.run import masked_generate, run_knockouts
from probes.tokens import token_groups


def as_knockout(loaded: LoadedModel, knockout):
    """``None``, a knockout object (:class:`~probes.masking.Knockout` and kin), or flows as text
    (``"object->question,last"``), which are then blocked at every layer."""
    if isinstance(knockout, str):
        return Knockout(parse_flows(knockout), tuple(range(loaded.adapter.num_layers)))
    return knockout


def _positions(loaded: LoadedModel, inputs: VLInputs, chosen: str | Sequence[int] | None):
    """A group name (or union, ``"question,last"``) as positions; positions pass through."""
    if chosen is None or not isinstance(chosen, str):
        return chosen
    return token_groups(loaded.adapter, inputs).get(chosen)


@dataclass
class Recording:
    """Attention probabilities of query rows ``queries`` to keys ``keys`` (sequence positions).

    ``maps[layer]`` is float32 [heads (1 if reduced), queries, keys] on the CPU; ``boxes``
    [keys, 4] the pixel box in the original image each key sees (NaN for keys that are no image
    patch), ready for :func:`figures.overlay`."""

    maps: dict[int, torch.Tensor]
    queries: np.ndarray
    keys: np.ndarray
    boxes: np.ndarray

    def values(self, layer: int, head: int | None = None) -> np.ndarray:
        """One value per key at ``layer``: the mean over query rows of head ``head``, or of the
        mean over heads when ``head`` is None."""
        maps = self.maps[layer]
        maps = maps.mean(0) if head is None else maps[head]
        return maps.mean(0).numpy()


@torch.inference_mode()
def record_attention(loaded: LoadedModel, inputs: VLInputs, queries: str | Sequence[int] = "last",
           keys: str | Sequence[int] | None = "image", layers: Sequence[int] | None = None,
           reduce: str = "none", knockout=None) -> Recording:
    """Record the attention of ``queries`` to ``keys`` (group names such as ``"last"``,
    ``"question"``, ``"image"``, ``"object"``, or positions; ``keys=None`` is every key) at
    ``layers`` (default all), per head or reduced (``reduce="mean_heads"``/``"max_heads"``),
    in one clean forward, or under ``knockout`` (see :func:`as_knockout`)."""
    recorder = AttentionRecorder(_positions(loaded, inputs, queries),
                                 _positions(loaded, inputs, keys), layers, reduce)
    knockout = as_knockout(loaded, knockout)
    if knockout is None:  # the fast engine's recording forward
        engines.DEFAULT.record(loaded, inputs, recorder)
        maps = {layer: values[0] for layer, values in sorted(recorder.maps.items())}
    else:
        result = run_knockouts(loaded, inputs, [knockout], record=recorder)
        maps = {layer: values[0] for layer, values in result.attentions.items()}
    key_positions = (np.arange(inputs.input_ids.shape[1]) if recorder.keys is None
                     else recorder.keys)
    return Recording(maps, recorder.queries, key_positions, token_boxes(inputs, key_positions))


@dataclass
class Reply:
    """A greedy reply: its ``text`` (up to the first stop token, as every analysis reads it),
    every generated token id, and the logits that chose each ([steps, vocab], float32, CPU)."""

    text: str
    tokens: list[int]
    logits: torch.Tensor


def decode(loaded: LoadedModel, inputs: VLInputs, knockout=None, max_new_tokens: int = 16) -> Reply:
    """Greedy decoding of ``inputs``, clean (``knockout=None``) or under a knockout (see
    :func:`as_knockout`; generated tokens are queries too where a flow names ``generated`` or
    ``text``), with the reply as text (:func:`probes.run.masked_generate` underneath)."""
    generation = masked_generate(loaded, inputs, as_knockout(loaded, knockout), max_new_tokens)
    return Reply(answer_text(loaded, generation.tokens), generation.tokens, generation.logits)


def top_tokens(loaded: LoadedModel, logits: torch.Tensor, k: int = 5):
    """The ``k`` most probable next tokens as (text, probability), highest first: a list for
    logits [vocab], a list of lists for [rows, vocab] (a knockout result's ``logits``, one row
    per condition)."""
    if logits.dim() == 2:
        return [top_tokens(loaded, row, k) for row in logits]
    probabilities = logits.float().softmax(-1)
    top = probabilities.topk(min(k, probabilities.numel()))
    decode_one = loaded.processor.tokenizer.decode
    return [(decode_one([int(t)]), float(p)) for p, t in zip(top.values, top.indices)]
