"""Training-free refinement: suppress chosen image tokens for the text at chosen layers and
decode again, reusing the clean pass's prefix cache.

Two ways to suppress the image tokens ``suppressed`` for the text queries (question, ``last``
and every generated token) at ``layers``:

- ``hard``: the edges are cut, ``SetKnockout(text, suppressed, layers, generated=True)``
  (exact -inf before the softmax, the rows renormalise);
- ``soft``: ``bias`` (negative) is added to those attention logits, a :class:`Steering`.

Both decode on the default engine (:data:`probes.engines.DEFAULT`, :func:`probes.run.masked_generate`: mixing attention is its own), which recomputes only the positions from
the first text query on and takes everything before it from the clean pass. The soft bias is
a steering plan attached around that call; the knockout handed to it then cuts nothing (no
keys) and only says, with its queries, where the recomputed suffix starts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from probes import attention
from probes.engine import Prefill
from probes.engines import DEFAULT
from probes.masking import SetKnockout
from probes.models.loading import LoadedModel
from probes.run import Generation
from probes.steer import Steering, SteeringPlan
from probes.tokens import TokenGroups

MODES = ("soft", "hard")


@dataclass(frozen=True)
class Suppression:
    """Which image tokens (sequence positions) to suppress for the text, where and how."""

    keys: np.ndarray
    layers: tuple[int, ...]
    mode: str = "soft"
    bias: float = -2.0  # soft mode: added to the suppressed logits

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"suppression mode must be one of {MODES}, not {self.mode!r}")

    @property
    def empty(self) -> bool:
        return self.keys.size == 0 or not self.layers or (self.mode == "soft" and self.bias == 0)

    def knockout(self, groups: TokenGroups) -> SetKnockout:
        """The hard cut (soft mode: the same queries and layers with no keys)."""
        keys = self.keys if self.mode == "hard" else np.zeros(0, dtype=np.int64)
        return SetKnockout(groups.get("question,last"), keys, self.layers, generated=True)

    def steering(self, groups: TokenGroups) -> SteeringPlan | None:
        """The soft bias as a steering plan of one batch row (None in hard mode)."""
        if self.mode != "soft":
            return None
        values = np.full(self.keys.size, self.bias, dtype=np.float32)
        return SteeringPlan([[Steering(frozenset(self.layers), groups.get("question,last"),
                                       np.asarray(self.keys, dtype=np.int64), values, "bias",
                                       queries_from=groups.length)]])


def refined_generate(loaded: LoadedModel, inputs, suppression: Suppression | None,
                     clean: Prefill, groups: TokenGroups, max_new_tokens: int = 4) -> Generation:
    """Greedy decoding under ``suppression`` with the clean prefix (a prefill of the default
    engine) reused; an empty suppression (no keys, no layers, a zero bias) or None is the
    clean decode itself."""
    if suppression is None or suppression.empty:
        return DEFAULT.generate(clean, [None], max_new_tokens)[0]
    plan = suppression.steering(groups)
    modules = loaded.adapter.attention_modules(loaded.model)
    attention.enable(loaded.model)
    with attention.attach(modules, plan) if plan is not None else contextlib.nullcontext():
        return DEFAULT.generate(clean, [suppression.knockout(groups)], max_new_tokens)[0]

