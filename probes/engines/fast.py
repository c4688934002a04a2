"""The fast engine: :mod:`probes.run`'s executor (the clean pass's keys and values shared by
every condition, conditions joining at their first blocked layer) and plain forwards with
hooks, under fusionlens' registered attention function (:func:`probes.attention.enable`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probes import attention, logit_lens, patching, run
from probes.engine import Engine, Patch, Prefill
from probes.models.loading import LoadedModel


@dataclass
class FastPrefill(Prefill):
    """A prefill with the clean pass whose keys and values the conditions share."""

    clean: run.CleanPass | None = None


class FastEngine(Engine):
    name = "fast"
    summary = "the probes' executor (shared prefix, registered attention function)"

    @torch.inference_mode()
    def prefill(self, loaded, inputs, groups, record=None, reserve=0) -> FastPrefill:
        with _recording(loaded, record):
            clean = run.clean_pass(loaded, inputs, reserve=reserve)
        return FastPrefill(loaded, inputs, groups, clean.logits.float().cpu(), clean=clean)

    @torch.inference_mode()
    def record(self, loaded, inputs, recorder) -> torch.Tensor:
        with _recording(loaded, recorder):
            output = loaded.model(**inputs.batch, use_cache=False, logits_to_keep=1)
        return output.logits[:, -1].float().cpu()

    def knockouts(self, prefill: FastPrefill, knockouts, batch_size=16, record=None):
        return run.run_knockouts(prefill.loaded, prefill.inputs, knockouts, batch_size,
                                 prefill.clean, prefill.groups, record=record)

    def generate(self, prefill: FastPrefill, knockouts, max_new_tokens=8, donate=False):
        return [run.masked_generate(prefill.loaded, prefill.inputs, knockout, max_new_tokens,
                                    clean=prefill.clean, groups=prefill.groups, donate=donate)
                for knockout in knockouts]

    @torch.inference_mode()
    def residual(self, prefill, layers, positions) -> torch.Tensor:
        return logit_lens.residuals(prefill.loaded, prefill.inputs, [int(p) for p in positions],
                                    list(layers)).float().cpu()

    @torch.inference_mode()
    def lens(self, prefill: FastPrefill, layers, positions) -> torch.Tensor:
        # the clean pass kept every layer's hidden states: entry i + 1 leaves layer i, and the
        # last entry is already through the final norm
        loaded, states = prefill.loaded, prefill.clean.hidden_states
        norm = loaded.adapter.final_norm(loaded.model)
        head = loaded.adapter.lm_head(loaded.model)
        rows = [states[layer + 1][0, list(positions)] for layer in layers]
        normed = [row if layer + 1 == len(states) - 1 else norm(row)
                  for layer, row in zip(layers, rows)]
        return head(torch.stack(normed)).float().cpu()

    def patch(self, prefill, patches: Sequence[Patch]) -> torch.Tensor:
        return patching.patched_forward(prefill.loaded, prefill.inputs,
                                        [*prefill.edits, *patches])

    def patch_many(self, prefill: FastPrefill, conditions, batch_size=16,
                   source=None) -> torch.Tensor:
        # the prefill's clean pass already holds its edits: conditions patch on top of it
        shared = source.clean if isinstance(source, FastPrefill) else None
        return patching.patch_conditions(prefill.loaded, prefill.inputs, prefill.clean,
                                         conditions, batch_size, shared)

    def patched_prefill(self, loaded, inputs, groups, edits) -> FastPrefill:
        made = patching.prefill_pass(loaded, inputs, edits)
        return FastPrefill(loaded, inputs, groups, made.logits.float().cpu(),
                           tuple(edits), made)

    @torch.inference_mode()
    def read(self, prefill: FastPrefill, sites, positions) -> list[torch.Tensor]:
        # the residual stream before the last layer's output is in the clean pass's hidden
        # states (entry l + 1 leaves layer l; the last entry is after the final norm); the
        # other sites take one forward
        states, where = prefill.clean.hidden_states, list(map(int, positions))
        kept = [i for i, site in enumerate(sites) if site.kind == "residual"
                and site.layer + 1 < len(states) - 1]
        others = [i for i in range(len(sites)) if i not in kept]
        values = dict(zip(others, patching.read_sites(
            prefill.loaded, prefill.inputs, [sites[i] for i in others], where, prefill.edits)
            if others else []))
        for i in kept:
            values[i] = states[sites[i].layer + 1][0, where].float().cpu()
        return [values[i] for i in range(len(sites))]


@contextlib.contextmanager
def _recording(loaded: LoadedModel, recorder):
    """The language model's attention through fusionlens, with ``recorder`` attached."""
    attention.enable(loaded.model)
    if recorder is None:
        yield
        return
    with attention.attach(loaded.adapter.attention_modules(loaded.model), recorder):
        yield


ENGINE = FastEngine()
