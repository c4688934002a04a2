"""The nnsight engine: every operation one ``model.trace`` (or ``model.generate``) of nnsight's
vision-language model (:mod:`probes.nnsight`), every condition a full forward. nnsight itself
is imported on first use, after :meth:`NNsightEngine.check` has judged its version."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from probes import patching
from probes.engine import Engine, Patch, Prefill, Site
from probes.nnsight.version import SUPPORTED, check_version


class NNsightEngine(Engine):
    name = "nnsight"
    summary = (f"every condition a full forward inside an nnsight trace (probes.nnsight; needs "
               f"nnsight{SUPPORTED})")

    def check(self) -> None:
        check_version()

    def prefill(self, loaded, inputs, groups, record=None, reserve=0) -> Prefill:
        from probes import nnsight

        if record is None:
            logits, _ = nnsight.trace(loaded, inputs, nnsight.edits(loaded, inputs))
        else:
            logits = nnsight.record(loaded, inputs, record)
        return Prefill(loaded, inputs, groups, logits[0])

    def record(self, loaded, inputs, recorder) -> torch.Tensor:
        from probes import nnsight

        return nnsight.record(loaded, inputs, recorder)

    def knockouts(self, prefill, knockouts, batch_size=16, record=None):
        from probes import nnsight

        return nnsight.run_knockouts(prefill.loaded, prefill.inputs, knockouts, batch_size,
                                     prefill.groups, record)

    def generate(self, prefill, knockouts, max_new_tokens=8, donate=False):
        from probes import nnsight

        return nnsight.masked_generate(prefill.loaded, prefill.inputs, list(knockouts),
                                       max_new_tokens, prefill.groups)

    @torch.inference_mode()
    def residual(self, prefill, layers, positions) -> torch.Tensor:
        from probes.nnsight import lens

        return lens.residuals(prefill.loaded, prefill.inputs, [int(p) for p in positions],
                              list(layers)).float().cpu()

    @torch.inference_mode()
    def patch(self, prefill, patches: Sequence[Patch]) -> torch.Tensor:
        return _trace(prefill, [*prefill.edits, *patches])[0]

    def patched_prefill(self, loaded, inputs, groups, edits) -> Prefill:
        prefill = Prefill(loaded, inputs, groups, torch.empty(0), tuple(edits))
        prefill.logits = self.patch(prefill, [])
        return prefill

    @torch.inference_mode()
    def read(self, prefill, sites, positions) -> list[torch.Tensor]:
        return _trace(prefill, list(prefill.edits), sites, positions)[1]


def _trace(prefill: Prefill, patches: Sequence[Patch], sites: Sequence[Site] = (),
           positions: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One trace of the prefill's input: (the last position's logits with ``patches`` in
    place, each of ``sites``' values at ``positions``), every module asked in the forward's
    order, each write before the read of the same site."""
    loaded = prefill.loaded
    model, batch = _traceable(prefill)
    layers = _layers(loaded, model)
    where = list(map(int, positions))
    steps = sorted([(patch.site.order(), 0, patch) for patch in patches]
                   + [(site.order(), 1, index) for index, site in enumerate(sites)],
                   key=lambda step: (step[0], step[1]))
    saved = {}
    with model.trace(batch):
        for _, is_read, item in steps:
            site = sites[item] if is_read else item.site
            module, is_input = patching.site_module(loaded, layers, site)
            tensor = patching.tensor_of(module.input if is_input else module.output)
            cols = patching.columns(loaded, site)
            if is_read:
                saved[item] = tensor[0, where, cols].save()
            else:
                tensor[:, list(item.positions), cols] = item.values.to(tensor.device,
                                                                       tensor.dtype)
        logits = model.lm_head.output[0, -1].save()
    return logits.float().cpu(), [saved[index].float().cpu() for index in range(len(sites))]


def _layers(loaded, model):
    return operator.attrgetter(loaded.adapter.layers_path)(model)


def _traceable(prefill: Prefill):
    """(the wrapped model, what its trace of the prefill's input is given: the last position's
    logits, no KV cache)."""
    from probes import nnsight

    model = nnsight.wrap(prefill.loaded)
    return model, {**nnsight.model_inputs(prefill.loaded, prefill.inputs), "logits_to_keep": 1,
                   "use_cache": False}


ENGINE = NNsightEngine()
