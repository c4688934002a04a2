"""One sample's logit lens (:mod:`probes.logit_lens`): one clean forward read at ``last`` and at
every image token, after every layer, through the model's final norm and unembedding.

- the **answer token** is the first token of the model's own reply (its top token at ``last``
  after the last layer); whether the reply is right is graded by :mod:`analyses.grading`;
- ``answer_prob``, ``answer_rank`` [layer]: its probability and rank (0 = top) at ``last``;
- ``first_top1``: the first layer where it is the top token; ``settled``: the first layer from
  which it stays the top token to the last layer (the last layer at the latest: there it is the
  model's own top token by definition);
- ``image_top1`` [layer, image token]: each image token's top token id per layer;
  ``image_cells`` [image token, 3]: each one's (grid, row, col) (-1s: LLaVA-NeXT's row
  newlines), so the image tokens naming the answer can be drawn over the image;
- ``names_answer`` [3, layer]: the share of image tokens whose top token is the answer token,
  over all image patches, over the patches inside the sample's region (``object``), and over
  those outside it (``background``, the control); NaN without a region (or an empty side).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analyses.grading import grade
from analyses.layer_masking.sweep import has_region, sample_groups
from probes import engines
from probes.engine import Engine
from probes.inputs import token_boxes
from probes.logit_lens import lens_readout, unembed
from probes.models.loading import LoadedModel
from probes.tokens import token_groups

IMAGE_SERIES = ("image", "in_box", "out_box")  # the rows of names_answer


def first_layer(top: np.ndarray) -> int:
    """The first layer where ``top`` [layer] (is the answer the top token) holds; -1 if none."""
    hits = np.flatnonzero(top)
    return int(hits[0]) if hits.size else -1


def settled_layer(top: np.ndarray) -> int:
    """The first layer from which ``top`` holds at every later layer; -1 if not at the last."""
    if not top[-1]:
        return -1
    misses = np.flatnonzero(~top)
    return int(misses[-1] + 1) if misses.size else 0


def share(names: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """[layer]: the share of the ``chosen`` columns of ``names`` [layer, token] that hold; NaN
    when none is chosen."""
    if not chosen.any():
        return np.full(names.shape[0], np.nan)
    return names[:, chosen].mean(1)


def measure_sample(loaded: LoadedModel, sample, engine: Engine | str = engines.DEFAULT
                   ) -> dict[str, Any]:
    """The record of one sample (see the module docstring), plus what the figures need: each
    image token's pixel box, and the text of every token id the record holds."""
    adapter = loaded.adapter
    inputs = adapter.build_inputs([sample.image], [sample.ask]).to(loaded.device, loaded.dtype)
    region = has_region(sample)
    groups = sample_groups(loaded, inputs, sample) if region else token_groups(adapter, inputs)
    image = groups.image
    positions = np.concatenate([image, groups.last])
    engine = engines.named(engine)  # an engine, or its name
    prefill = engine.prefill(loaded, inputs, groups)
    layers = range(adapter.num_layers)
    states = engine.residual(prefill, layers, positions).to(loaded.dtype)  # [layer, pos, hidden]
    answer = int(unembed(loaded, states[-1, -1]).argmax())
    readout = lens_readout(loaded, inputs, positions, tokens=[answer], top_k=1, states=states)
    rank = readout.token_ranks[:, -1, 0].numpy()
    top1 = readout.top_ids[:, :-1, 0].numpy()  # [layer, image token]
    names = top1 == answer
    patches = np.isin(image, groups.image_patches)
    in_box = np.isin(image, groups.object)
    out_box = np.isin(image, groups.background)
    names_answer = np.stack([share(names, patches), share(names, in_box),
                             share(names, out_box)])
    tokens = groups.image_tokens
    where = {int(p): k for k, p in enumerate(tokens.positions)}
    cells = tokens.layout.token_cells[[where[int(p)] for p in image]]
    ids = np.unique(np.append(top1, answer))
    decode = loaded.processor.tokenizer.decode
    return {
        "sample_id": sample.id, "kind": sample.kind, "answer": sample.answer,
        "correct": grade(loaded, [sample], batch_size=1)[0],
        "answer_token": answer,
        "answer_prob": np.exp(readout.token_log_probs[:, -1, 0].double().numpy()),
        "answer_rank": rank.astype(np.int64),
        "first_top1": first_layer(rank == 0), "settled": settled_layer(rank == 0),
        "image_top1": top1.astype(np.int32), "image_cells": cells.astype(np.int16),
        "in_box": in_box, "has_region": region,
        "names_answer": names_answer,
        "boxes": token_boxes(inputs).astype(np.float32),
        "vocab_ids": ids.astype(np.int64),
        "vocab_text": np.array([decode([int(i)]) for i in ids]),
    }
