"""Adaptive Information Flow (AIF, arXiv 2604.15809) on one (image, question): the profiling
pass, token importance, the mask, and the second decoding pass.

1. **Profile.** The clean prefill (up to the first answer token) runs once with an
   :class:`~probes.record.AttentionRecorder` attached: for every layer, the attention of the
   chosen text rows to the image patches, reduced over heads (``heads``) and then maxed over
   the rows: the token dynamics ``d[i, l]``. Recording only reads queries and keys, so this
   prefill *is* the clean pass whose keys and values the second pass reuses. The same pass
   records the **prompt token importance**: the answer position's (``last``) attention to each
   text token of the prompt (system, question, template, last; heads reduced as for the
   dynamics), averaged over layers: which words the answer reads
   (:class:`ProfileRecorder`).
2. **Importance** (:mod:`analyses.token_importance.dynamics`): entropy of each curve, mu, the
   ratio scan, the chosen ratio (or a fixed one).
3. **Mask and decode.** :class:`~probes.masking.SetKnockout`: the text after the image (and,
   with ``mask_generated``, every generated token) may not read the masked image tokens, at
   every layer; image->image edges stay. :func:`probes.run.masked_generate` decodes greedily,
   sharing the clean pass's keys and values up to the first masked query.

Choices the paper leaves open, with their defaults (recorded in every result):

- ``heads="mean"``: a^l_{j,i} is the head-mean attention. The max over heads is dominated by
  single heads that park on a few tokens whatever the question (sinks), which would make every
  curve peak there; the mean is also what most attention analyses of LLaVA plot.
- ``text_rows="question,last"``: the question's tokens and the position that predicts the
  answer. The system prompt precedes the image in every supported family (it cannot attend to
  it), and the template's fixed tokens ("ASSISTANT") read the image the same way for every
  question, so they would add question-independent maxima.
- ``mask_generated=True``: the published mask cuts image->text for all text, and the answer's
  own tokens are text.
- ``scan="published"``: S exactly as published. On the tiny model it always picks the largest
  ratio (see :func:`~analyses.token_importance.dynamics.scan_ratios`); ``"normalized"`` is the
  variant that does not reward a smaller support.

>>> from analyses.data import load_dataset
>>> from probes.models.loading import load_model
>>> sample = load_dataset("easy-vqa", limit=1)[0]
>>> result = aif_generate(load_model("tiny-llava"), sample.image, sample.question)
>>> result.answer, result.importance.dynamics.shape, 0.1 <= result.ratio <= 0.9
('triangle', (64, 6), True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from analyses.token_importance.dynamics import (
    DEFAULT_RATIOS,
    RatioScan,
    curve_entropy,
    mask_count,
    mask_order,
    mean_attention,
    scan_ratios,
)
from probes.engine import Engine, Prefill
from probes.engines import DEFAULT
from probes.errors import UserError
from probes.masking import SetKnockout
from probes.models.adapters import VLInputs
from probes.models.answer import answer_text
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.run import Generation
from probes.tokens import TokenGroups, token_groups

HEADS = {"mean": "mean_heads", "max": "max_heads"}
PROFILE_GROUPS = ("system", "question", "template", "last")
PROMPT_GROUPS = PROFILE_GROUPS  # prompt_groups codes: the index of the token's group here
SCANS = ("published", "normalized")


@dataclass(frozen=True)
class AIFConfig:
    """The method's settings (see the module docstring for the defaults' reasons)."""

    heads: str = "mean"  # how a layer's heads become one attention: "mean" or "max"
    text_rows: str = "question,last"  # token groups whose rows are the text tokens j
    mask_generated: bool = True  # generated tokens may not read masked image tokens either
    ratios: tuple[float, ...] = DEFAULT_RATIOS  # candidate mask ratios of the scan
    ratio: float | None = None  # a fixed mask ratio instead of the adaptive choice
    scan: str = "published"  # S as published, or "normalized" (S / log of the kept count)
    max_new_tokens: int = 4

    def validate(self) -> None:
        if self.heads not in HEADS:
            raise UserError(f"--heads must be one of {', '.join(HEADS)}, not {self.heads!r}.")
        parts = [part.strip() for part in self.text_rows.split(",") if part.strip()]
        wrong = [part for part in parts if part not in PROFILE_GROUPS]
        if not parts or wrong:
            raise UserError(f"--text-rows takes prompt text groups among "
                            f"{', '.join(PROFILE_GROUPS)}, not {self.text_rows!r}.")
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise UserError("candidate mask ratios must lie strictly between 0 and 1.")
        if self.ratio is not None and not 0.0 <= self.ratio <= 1.0:
            raise UserError(f"--ratio must lie in [0, 1], not {self.ratio}.")
        if self.scan not in SCANS:
            raise UserError(f"--scan must be one of {', '.join(SCANS)}, not {self.scan!r}.")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, not {self.max_new_tokens}.")

    def recorded(self) -> dict:
        return {**asdict(self), "profile": "prefill up to the first answer token",
                "mask_queries": "text after the image (question, template, last)"
                                + (" and generated tokens" if self.mask_generated else ""),
                "mask_layers": "all", "order": "decreasing curve entropy (background first)",
                "ties": "first ratio maximising |S - S0|; equal entropies by token order",
                "count": "nearest integer to ratio x image tokens"}


@dataclass(frozen=True)
class TokenImportance:
    """One input's token importance. Token axis = the image patches in sequence order."""

    positions: np.ndarray  # [tokens] absolute positions of the image patches
    cells: np.ndarray  # [tokens, 3] (grid, row, col) of each patch
    dynamics: np.ndarray  # [tokens, layers] d^l_i
    entropy: np.ndarray  # [tokens] Ent_i
    mu: np.ndarray  # [tokens] mu_i
    scan: RatioScan  # the S-curve and the adaptive ratio
    prompt: np.ndarray  # [prompt tokens] positions of the prompt's text tokens
    prompt_groups: np.ndarray  # [prompt tokens] int8: the index in PROMPT_GROUPS
    prompt_importance: np.ndarray  # [prompt tokens] mean over layers of last's attention

    def order(self, by: str = "entropy") -> np.ndarray:
        """Token indices in the order they are masked: ``entropy`` (highest first, AIF),
        ``low_entropy`` (lowest first), ``low_mu`` (least attended first), ``high_mu``."""
        orders = {"entropy": (self.entropy, True), "low_entropy": (self.entropy, False),
                  "low_mu": (self.mu, False), "high_mu": (self.mu, True)}
        if by not in orders:
            raise ValueError(f"unknown order {by!r}; known: {', '.join(orders)}")
        return mask_order(*orders[by])

    def masked(self, ratio: float, by: str = "entropy") -> np.ndarray:
        """Sorted positions of the tokens masked at ``ratio`` in the order ``by``."""
        count = mask_count(ratio, self.positions.size)
        return np.sort(self.positions[self.order(by)[:count]])


@dataclass(frozen=True)
class Prepared:
    """What one input's clean profiling pass leaves for any number of masked decodes on its
    engine (for one only when ``one_shot``: that decode may continue in the clean pass's
    buffers and spend it)."""

    prefill: Prefill
    importance: TokenImportance
    config: AIFConfig
    one_shot: bool = False
    engine: Engine = DEFAULT

    @property
    def inputs(self) -> VLInputs:
        return self.prefill.inputs

    @property
    def groups(self) -> TokenGroups:
        return self.prefill.groups


@dataclass(frozen=True)
class AIFResult:
    """The AIF answer and everything that led to it."""

    answer: str
    generation: Generation  # tokens and the logits that chose them
    ratio: float  # the mask ratio used (adaptive, or the fixed one)
    masked: np.ndarray  # sorted absolute positions of the masked image tokens
    importance: TokenImportance
    config: AIFConfig = field(repr=False)


def image_patches(groups: TokenGroups) -> tuple[np.ndarray, np.ndarray]:
    """Positions and (grid, row, col) cells of the image's patch tokens (no row newlines)."""
    tokens = groups.image_tokens
    is_patch = np.isin(tokens.positions, groups.image_patches)
    return tokens.positions[is_patch], tokens.layout.token_cells[is_patch]


def prompt_text(groups: TokenGroups) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the prompt's text tokens in order and the index of each one's group in
    :data:`PROMPT_GROUPS` (int8)."""
    parts = [getattr(groups, name) for name in PROMPT_GROUPS]
    codes = np.concatenate([np.full(len(p), k, np.int8) for k, p in enumerate(parts)])
    positions = np.concatenate(parts).astype(np.int64)
    order = np.argsort(positions, kind="stable")
    return positions[order], codes[order]


@dataclass
class ProfileRecorder(AttentionRecorder):
    """The profiling pass's recorder. Its queries are the ``rows`` and the ``answer``
    position. Per layer it keeps one map: those queries' probabilities over every key, heads
    reduced ([queries, keys], float32, on the CPU). :meth:`readouts` then takes, for every
    layer at once, what AIF reads: the dynamics (the ``rows``' attention to the image patches
    ``keys``, max over the rows; the answer row counts only when it is one of ``rows``) and
    the ``answer`` position's attention to each of ``prompt``. Reducing the heads before
    choosing rows and keys gives the same numbers (the reduction is per element), with one
    small operation per layer where slicing first took two gathers, two reductions and two
    copies."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    answer: int = -1
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def _store(self, layer: int, probabilities: torch.Tensor) -> None:
        if probabilities.shape[2] != self.queries.size:
            raise ValueError("the profiling pass records its every query row in one call")
        heads = probabilities.mean(1) if self.reduce == "mean_heads" else probabilities.amax(1)
        self.maps[layer] = heads[0].to("cpu", torch.float32)  # [queries, keys]

    def readouts(self) -> tuple[np.ndarray, np.ndarray]:
        """(dynamics [image patches, layers], the answer position's attention to the prompt
        [layers, prompt tokens]), float64, from every layer's map."""
        if not self.maps:
            raise ValueError("the profiling pass recorded nothing")
        stacked = torch.stack([self.maps[layer] for layer in sorted(self.maps)])  # [L, Q, K]
        chosen = torch.from_numpy(np.flatnonzero(np.isin(self.queries, self.rows)))
        span = self._key_span()
        keys = slice(*span) if span is not None else torch.from_numpy(self.keys)
        dynamics = stacked[:, chosen][:, :, keys].amax(1).double().numpy().T
        at = int(np.searchsorted(self.queries, self.answer))
        return dynamics, stacked[:, at][:, torch.from_numpy(self.prompt)].double().numpy()


def text_queries(groups: TokenGroups) -> np.ndarray:
    """The prompt's text after the image: the queries the mask forbids to read masked tokens."""
    prompt = np.concatenate([groups.system, groups.question, groups.template, groups.last])
    return np.sort(prompt[prompt > groups.image.max()])


def build(loaded: LoadedModel, image: Image.Image, question: str) -> tuple[VLInputs, TokenGroups]:
    inputs = loaded.adapter.build_inputs([image], [question]).to(loaded.device, loaded.dtype)
    return inputs, token_groups(loaded.adapter, inputs)


@torch.inference_mode()
def profile(loaded: LoadedModel, inputs: VLInputs, groups: TokenGroups,
            config: AIFConfig = AIFConfig(), reserve: int = 0, engine: Engine = DEFAULT,
            ) -> tuple[TokenImportance, Prefill]:
    """The clean pass of one input on ``engine`` with the token dynamics recorded on the way
    (``reserve``: see :func:`probes.run.clean_pass`)."""
    config.validate()
    positions, cells = image_patches(groups)
    rows = groups.get(config.text_rows)
    layers = loaded.adapter.num_layers
    prompt, prompt_groups = prompt_text(groups)
    answer = int(groups.last[-1])
    recorder = ProfileRecorder(queries=np.union1d(rows, [answer]), keys=positions,
                               reduce=HEADS[config.heads], rows=rows,
                               answer=answer, prompt=prompt)
    clean = engine.prefill(loaded, inputs, groups, record=recorder, reserve=reserve)
    if sorted(recorder.maps) != list(range(layers)):
        raise ValueError("the profiling pass did not record every layer")
    dynamics, reads = recorder.readouts()  # [tokens, layers], [layers, prompt tokens]
    entropy, mu = curve_entropy(dynamics), mean_attention(dynamics)
    scan = scan_ratios(mu, mask_order(entropy), config.ratios, config.scan == "normalized")
    return TokenImportance(positions, cells, dynamics, entropy, mu, scan, prompt,
                           prompt_groups, reads.mean(0)), clean


def prepare(loaded: LoadedModel, image: Image.Image, question: str,
            config: AIFConfig = AIFConfig(), one_shot: bool = False,
            engine: Engine = DEFAULT) -> Prepared:
    """Inputs, token groups, the clean pass and the token importance of one question.
    ``one_shot``: the clean pass keeps room for the one decode that follows to continue in
    its buffers, which that decode then spends. ``engine``: see :func:`profile`."""
    inputs, groups = build(loaded, image, question)
    reserve = config.max_new_tokens if one_shot else 0
    importance, prefill = profile(loaded, inputs, groups, config, reserve, engine)
    return Prepared(prefill, importance, config, one_shot, engine)


def knockout(loaded: LoadedModel, groups: TokenGroups, masked: np.ndarray,
             mask_generated: bool = True) -> SetKnockout | None:
    """The asymmetric AIF mask of ``masked`` image positions (None when nothing is masked)."""
    if np.asarray(masked).size == 0:
        return None
    return SetKnockout(text_queries(groups), np.asarray(masked, dtype=np.int64),
                       tuple(range(loaded.adapter.num_layers)), generated=mask_generated)


def decode(loaded: LoadedModel, prepared: Prepared, masked: np.ndarray) -> Generation:
    """Greedy answer of a prepared input with ``masked`` image positions cut off from text."""
    return decode_all(loaded, prepared, [masked])[0]


def decode_all(loaded: LoadedModel, prepared: Prepared, masks: list[np.ndarray]
               ) -> list[Generation]:
    """:func:`decode` of each of ``masks``, on the prepared input's engine."""
    config = prepared.config
    knockouts = [knockout(loaded, prepared.groups, m, config.mask_generated) for m in masks]
    return prepared.engine.generate(prepared.prefill, knockouts, config.max_new_tokens,
                                    donate=prepared.one_shot)


def aif_generate(loaded: LoadedModel, image: Image.Image, question: str,
                 config: AIFConfig = AIFConfig(), engine: Engine = DEFAULT) -> AIFResult:
    """Answer ``question`` about ``image`` with AIF on ``engine``: profile, choose the ratio,
    mask, decode."""
    # one decode follows the profile: it continues in the clean pass's buffers (no copy)
    prepared = prepare(loaded, image, question, config, one_shot=True, engine=engine)
    ratio = prepared.importance.scan.ratio if config.ratio is None else config.ratio
    masked = prepared.importance.masked(ratio)
    generation = decode(loaded, prepared, masked)
    return AIFResult(answer_text(loaded, generation.tokens), generation, ratio, masked,
                     prepared.importance, config)
