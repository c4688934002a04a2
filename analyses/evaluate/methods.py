"""The decoding methods ``python -m analyses.evaluate`` compares, each one reply per sample.

- ``clean``: greedy decoding (:func:`analyses.grading.replies`), batched;
- ``aif``: Adaptive Information Flow (:func:`analyses.token_importance.aif.aif_generate`):
  the highest-entropy image tokens cut from the text at the adaptive ratio;
- ``contrastive``: the training-free refinement of contrastive attention
  (:mod:`analyses.contrastive_attention.refine`) with the layers that analysis chooses without
  a layer-masking run: late = the last layer, refinement = the last quarter, early = the
  automatic rule over every sample of the run (the ``early`` pass), half the patches with the
  least shift suppressed by a soft bias of -2;
- ``vif:PATH``: a trained VIF module (:func:`probes.vif.vif_generate`);
- ``oracle``: AIF's asymmetric knockout with the masked set taken from the annotation: every
  image patch outside :meth:`Sample.region` is cut from the text rows (and the generated
  tokens). A sample without a region is *excluded* for oracle, not counted.

>>> parse_methods("aif,vif:m.safetensors")
('clean', 'aif', 'vif:m.safetensors')
>>> parse_methods("clean,beam")
Traceback (most recent call last):
...
probes.errors.UserError: unknown method 'beam'; known: clean, aif, contrastive, vif:PATH, oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analyses.contrastive_attention.contrast import contrastive_map, least_shift
from analyses.contrastive_attention.refine import Suppression, refined_generate
from analyses.token_importance.aif import AIFConfig, aif_generate, knockout
from probes.errors import UserError
from probes.models.answer import answer_text
from probes.models.loading import LoadedModel
from probes.run import masked_generate
from probes.tokens import TokenGroups, token_groups

METHODS = ("clean", "aif", "contrastive", "vif:PATH", "oracle")
CONTRASTIVE = {"series": "last", "ratio": 0.5, "mode": "soft", "bias": -2.0}


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """The methods of ``--methods`` in order, ``clean`` first (added when not named): the
    reference every other method is compared with."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    for part in parts:
        name, _, path = part.partition(":")
        if name not in ("clean", "aif", "contrastive", "vif", "oracle") or (
                name != "vif" and ":" in part):
            raise UserError(f"unknown method {part!r}; known: {', '.join(METHODS)}.")
        if name == "vif" and not path:
            raise UserError("vif needs the trained module's file: vif:PATH (python -m "
                            "analyses.train_vif --out DIR trains one into DIR/vif.safetensors).")
    if len(set(parts)) != len(parts):
        raise UserError(f"--methods names a method twice: {','.join(parts)}.")
    return ("clean", *(p for p in parts if p != "clean"))


def check_vif_paths(methods: Sequence[str]) -> None:
    """Refuse a ``vif:PATH`` whose file is missing before anything loads."""
    for method in methods:
        if method.startswith("vif:") and not Path(method[4:]).is_file():
            raise UserError(f"no VIF module at {method[4:]}; python -m analyses.train_vif "
                            "--out DIR trains one into DIR/vif.safetensors.")


def aif_reply(loaded: LoadedModel, sample, max_new_tokens: int) -> str:
    return aif_generate(loaded, sample.image, sample.ask,
                        AIFConfig(max_new_tokens=max_new_tokens)).answer


def sample_inputs(loaded: LoadedModel, sample):
    """The model inputs of one sample (its image and :attr:`Sample.ask`) and their groups."""
    inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
    inputs = inputs.to(loaded.device, loaded.dtype)
    return inputs, token_groups(loaded.adapter, inputs)


def outside_region(groups: TokenGroups, sample) -> np.ndarray | None:
    """Sorted positions of the image patches outside the sample's region (what oracle masks);
    None when the sample has no region or the region covers no patch."""
    if not sample.has_region():
        return None
    try:
        inside = groups.with_region(mask=sample.region()).object
    except UserError:  # the region covers no patch (cropped away by the processor)
        return None
    if inside.size == 0:
        return None
    return np.setdiff1d(groups.image_patches, inside)


def oracle_reply(loaded: LoadedModel, sample, max_new_tokens: int) -> str | None:
    """The reply under the oracle knockout; None when the sample has no usable region."""
    inputs, groups = sample_inputs(loaded, sample)
    masked = outside_region(groups, sample)
    if masked is None:
        return None
    generation = masked_generate(loaded, inputs, knockout(loaded, groups, masked),
                                 max_new_tokens, groups=groups)
    return answer_text(loaded, generation.tokens)


@dataclass(frozen=True)
class ContrastiveLayers:
    """The layers the refinement uses (chosen once per run, see the module docstring)."""

    late: int
    early: int
    refine: tuple[int, ...]


def contrastive_reply(loaded: LoadedModel, sample, layers: ContrastiveLayers,
                      max_new_tokens: int) -> str:
    """Record the sample's maps in its clean pass, suppress the least-shifted half of the
    patches at the refinement layers, decode again on the clean prefix."""
    from analyses.attention_evolution.maps import SERIES, record_sample

    sample_maps, clean, groups, inputs = record_sample(loaded, sample)
    maps = sample_maps.maps[SERIES.index(CONTRASTIVE["series"])]  # [layers, patches]
    chosen = least_shift(contrastive_map(maps[layers.late], maps[layers.early]),
                         CONTRASTIVE["ratio"])
    suppression = Suppression(groups.image_patches[chosen], layers.refine, CONTRASTIVE["mode"],
                              CONTRASTIVE["bias"])
    generation = refined_generate(loaded, inputs, suppression, clean, groups, max_new_tokens)
    return answer_text(loaded, generation.tokens)


def early_distances(loaded: LoadedModel, sample, late: int) -> np.ndarray:
    """Per layer, the total-variation distance of the sample's map from the late layer's (the
    numbers the automatic early-layer rule averages)."""
    from analyses.attention_evolution.maps import SERIES, record_sample
    from analyses.contrastive_attention.contrast import total_variation

    maps = record_sample(loaded, sample, keep_clean=False)[0].maps[
        SERIES.index(CONTRASTIVE["series"])]
    return np.array([float(total_variation(maps[late], maps[layer]))
                     for layer in range(maps.shape[0])])


_VIF_MODULES: dict[tuple[str, int], object] = {}  # (path, id(loaded)) -> module, per worker


def vif_reply(loaded: LoadedModel, sample, path: str, max_new_tokens: int) -> str:
    from probes.vif import VIF, vif_generate

    key = (path, id(loaded))
    if key not in _VIF_MODULES:
        _VIF_MODULES[key] = VIF.load(path, loaded)
    inputs, _ = sample_inputs(loaded, sample)
    with torch.inference_mode():
        tokens = vif_generate(loaded, _VIF_MODULES[key], inputs, max_new_tokens)
    return answer_text(loaded, tokens[0].tolist())
