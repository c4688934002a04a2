"""The engine interface: every operation an analysis runs on a model, whichever engine runs it.

An analysis holds an :class:`Engine` (chosen once, at the command line's edge, by
:func:`probes.engines.choose`) and calls its operations; it never asks which engine it holds.
Every operation starts from a :class:`Prefill`, one input's clean forward as the engine keeps
it for the conditions that follow:

- :meth:`Engine.prefill`: the clean forward (attention recorded on the way when asked);
- :meth:`Engine.record`: a forward that only records attention (nothing kept);
- :meth:`Engine.knockouts`: next-token logits under each of many knockouts;
- :meth:`Engine.generate`: greedy decoding under each of several knockouts;
- :meth:`Engine.residual` and :meth:`Engine.lens`: the residual stream after chosen layers at
  chosen positions, raw or read through the final norm and the unembedding (the logit lens);
- :meth:`Engine.patch` and :meth:`Engine.patch_many`: next-token logits with activations
  replaced at chosen sites (:class:`~probes.patching.Site`: the residual stream, attention or
  MLP output, one head) and positions, for one condition or many (activation patching);
  :meth:`Engine.patched_prefill` is a run with patches of its own (a corrupt run) and
  :meth:`Engine.read` reads a run's activations at sites.

The engines are the modules of :mod:`probes.engines` (``fast``: :mod:`probes.run`'s shared
prefix; ``nnsight``: full forwards in nnsight traces). Both give the same numbers to float
rounding (tests/test_engines.py); a third engine is one new module there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from probes import logit_lens
from probes.models.adapters import VLInputs
from probes.models.loading import LoadedModel
from probes.patching import Patch, Site
from probes.record import AttentionRecorder
from probes.run import Generation, KnockoutResult
from probes.tokens import TokenGroups


@dataclass
class Prefill:
    """One single-row input's clean forward, as an engine keeps it. ``logits``: [vocab] at the
    last position, float32 on the CPU. An engine may keep more (the fast engine: the shared
    prefix's keys and values); only the engine that made a prefill reads that."""

    loaded: LoadedModel
    inputs: VLInputs
    groups: TokenGroups
    logits: torch.Tensor
    edits: tuple[Patch, ...] = ()  # patches the run holds (Engine.patched_prefill)


class Engine(ABC):
    """What runs a model for the analyses (see the module docstring). Engines hold no state:
    one is a name and its operations, and pickles as such (to Ray workers)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for ``--engine``'s help

    def check(self) -> None:
        """Refuse, in one sentence (a :class:`~probes.errors.UserError`), an environment this
        engine cannot run in; return quietly otherwise (the base: it runs wherever fusionlens
        does)."""
        return None

    def recorded(self) -> dict[str, str]:
        """The engine as it goes into a result's recorded config."""
        return {"engine": self.name}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"<engine {self.name}>"

    @abstractmethod
    def prefill(self, loaded: LoadedModel, inputs: VLInputs, groups: TokenGroups,
                record: AttentionRecorder | None = None, reserve: int = 0) -> Prefill:
        """The clean forward of a one-row input; ``record`` is filled on the way. ``reserve``:
        decoding positions to keep room for (a hint an engine may ignore)."""

    @abstractmethod
    def record(self, loaded: LoadedModel, inputs: VLInputs,
               recorder: AttentionRecorder) -> torch.Tensor:
        """Fill ``recorder`` from one forward of ``inputs``, keeping nothing else; returns the
        logits at the last position [rows, vocab]."""

    @abstractmethod
    def knockouts(self, prefill: Prefill, knockouts: Sequence, batch_size: int = 16,
                  record: AttentionRecorder | None = None) -> KnockoutResult:
        """Next-token logits under each knockout (:func:`probes.run.run_knockouts`)."""

    @abstractmethod
    def generate(self, prefill: Prefill, knockouts: Sequence, max_new_tokens: int = 8,
                 donate: bool = False) -> list[Generation]:
        """Greedy decoding under each knockout (None = clean). ``donate``: the prefill serves
        this one call only (an engine may decode in its buffers)."""

    @abstractmethod
    def residual(self, prefill: Prefill, layers: Sequence[int],
                 positions: Sequence[int]) -> torch.Tensor:
        """[layers, positions, hidden] float32 on the CPU: the residual stream leaving each of
        ``layers`` (before the final norm) at ``positions``."""

    def lens(self, prefill: Prefill, layers: Sequence[int],
             positions: Sequence[int]) -> torch.Tensor:
        """[layers, positions, vocab] float32 logits on the CPU: :meth:`residual` through the
        final norm and the unembedding (the last layer's lens is the model's own output)."""
        return unembed(prefill.loaded, self.residual(prefill, layers, positions))

    @abstractmethod
    def patch(self, prefill: Prefill, patches: Sequence[Patch]) -> torch.Tensor:
        """[vocab] float32 logits at the last position on the CPU, with the prefill's own
        edits and then each patch's values put in place."""

    def patch_many(self, prefill: Prefill, conditions: Sequence[Sequence[Patch]],
                   batch_size: int = 16, source: Prefill | None = None) -> torch.Tensor:
        """[conditions, vocab]: :meth:`patch` of each condition (the base: one at a time).
        ``source``: the prefill the patches' values were read from (a hint an engine may use
        to share more of the work; the numbers do not change)."""
        if not conditions:
            return prefill.logits.new_zeros(0, prefill.logits.shape[-1])
        return torch.stack([self.patch(prefill, condition) for condition in conditions])

    @abstractmethod
    def patched_prefill(self, loaded: LoadedModel, inputs: VLInputs, groups: TokenGroups,
                        edits: Sequence[Patch]) -> Prefill:
        """The forward of a one-row input with ``edits`` in place (e.g. noise on the image
        embeddings: a corrupt run), kept as :meth:`prefill` keeps a clean one; later patches
        go on top of its edits."""

    @abstractmethod
    def read(self, prefill: Prefill, sites: Sequence[Site],
             positions: Sequence[int]) -> list[torch.Tensor]:
        """Per site, the prefill's run's values there [len(positions), width] (float32, CPU),
        its edits in place: what a patch from this run into another puts."""


@torch.inference_mode()
def unembed(loaded: LoadedModel, residual: torch.Tensor) -> torch.Tensor:
    """Residual-stream states [..., hidden] through the model's final norm and unembedding:
    float32 logits [..., vocab] on the CPU."""
    return logit_lens.unembed(loaded, residual.to(loaded.dtype)).cpu()
