"""Our attention and knockouts against TransformerLens, on one (image, question).

At every decoder layer: the largest difference between the attention fusionlens records (every
key and head of every query row; on an input too long to hold every row's maps, of the rows
that are no image tokens) and TL's ``hook_pattern``; and between the effect on the
next-token logits of blocking ``flows`` at that layer, computed by the fast executor
(:func:`probes.run.run_knockouts`), and TL's ``run_with_hooks`` with the same edges set to -inf
on ``hook_attn_scores``. TL runs on a deep copy of the model (:mod:`probes.lens.bridge`); the
user's model is left with the attention implementation it had.

Where TL keeps an architecture's attention native (Qwen2.5-VL, for its mRoPE), an edit of
``hook_attn_scores`` never reaches the output; a probe edit finds that out and the check then
compares patterns only, and says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from PIL import Image

from probes import attention
from probes.errors import UserError
from probes.images import to_rgb
from probes.lens.bridge import boot_bridge
from probes.lens.export import pattern_hook, scores_hook
from probes.lens.extra import require_transformer_lens
from probes.masking import EdgeMaskPlan, Knockout, parse_flows
from probes.models.adapters.base import check_question
from probes.models.loading import LoadedModel
from probes.record import AttentionRecorder
from probes.run import run_knockouts
from probes.tokens import token_groups

DEFAULT_FLOWS = "image->question,last"
# our maps of every layer, float32 on the CPU (TL's are compared and dropped layer by layer)
MAX_RECORDED_BYTES = 2**31


@dataclass(frozen=True)
class Crosscheck:
    """Largest absolute differences, ours minus TransformerLens's.

    ``patterns[l]``: attention probabilities at layer l; ``knockouts[l]``: the effect on the
    last position's logits (knocked-out minus clean) of blocking ``flows`` at layer l, empty
    when TL discards score edits for this architecture (``note`` says why); ``logits``: the
    clean logits at the last position.
    """

    model: str
    architecture: str
    flows: str
    transformer_lens: str  # its version
    rows: str  # which query rows the patterns were compared on
    logits: float
    patterns: dict[int, float]
    knockouts: dict[int, float]
    note: str = ""

    @property
    def largest(self) -> float:
        """The largest difference of all."""
        return max([self.logits, *self.patterns.values(), *self.knockouts.values()])

    def __str__(self) -> str:
        lines = [
            f"TransformerLens {self.transformer_lens} cross-check of {self.model} "
            f"({self.architecture}): largest |ours - TL|",
            f"  clean logits, last position: {self.logits:.2e}; patterns on {self.rows}",
            (f"  {'layer':>5}  {'hook_pattern':>12}  "
             + (f"knockout {self.flows} (logit effect)" if self.knockouts else "")).rstrip(),
        ]
        for layer, difference in self.patterns.items():
            knockout = f"{self.knockouts[layer]:.2e}" if layer in self.knockouts else ""
            lines.append(f"  {layer:>5}  {difference:>12.2e}  {knockout}".rstrip())
        if self.note:
            lines.append(f"  note: {self.note}")
        lines.append(f"largest difference: {self.largest:.2e}")
        return "\n".join(lines)


def _largest(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.float().cpu() - theirs.float().cpu()).abs().max())


def _blocking(blocked: torch.Tensor):
    """A hook that sets the ``blocked`` [batch, query, key] scores to -inf."""

    def hook(scores: torch.Tensor, hook) -> torch.Tensor:
        return scores.masked_fill(blocked[:, None].to(scores.device), float("-inf"))

    return hook


def compared_rows(groups, heads: int, layers: int) -> tuple[np.ndarray, str]:
    """The query rows whose attention is compared: every row when all layers' maps fit in
    :data:`MAX_RECORDED_BYTES` (float32), else the rows that are no image tokens (the text's
    rows, which the knockouts and analyses are about); and a phrase saying which."""
    rows = np.arange(groups.length)
    size = heads * layers * groups.length * groups.length * 4
    if size <= MAX_RECORDED_BYTES:
        return rows, "every query row"
    return (np.setdiff1d(rows, groups.image),
            f"query rows that are no image tokens (all rows would take {size / 2**30:.0f} GiB)")


def _keep_pattern(layer: int, rows: torch.Tensor, into: dict[int, torch.Tensor]):
    """A ``hook_pattern`` hook keeping ``rows`` of ``layer``'s pattern, float32 on the CPU, as
    it is made (nothing piles up on the device)."""

    def hook(pattern: torch.Tensor, hook) -> None:
        into[layer] = pattern[:, :, rows.to(pattern.device)].float().cpu()

    return hook


def crosscheck(loaded: LoadedModel, image: Image.Image, question: str, *,
               flows: str = DEFAULT_FLOWS) -> Crosscheck:
    """Compare fusionlens with TransformerLens on ``(image, question)``; see the module
    docstring. Needs the ``lens`` extra; holds a second copy of the model while it runs."""
    require_transformer_lens()
    parse_flows(flows)  # a malformed flow fails before anything runs
    inputs = loaded.adapter.build_inputs([to_rgb(image)], [check_question(question)])
    inputs = inputs.to(loaded.device)
    groups = token_groups(loaded.adapter, inputs)
    layers = range(loaded.adapter.num_layers)
    knockouts = [Knockout.window(flows, layer, 1, len(layers)) for layer in layers]
    heads = loaded.model.config.get_text_config().num_attention_heads
    rows, compared = compared_rows(groups, heads, len(layers))
    recorder = AttentionRecorder(queries=rows)
    with attention.kept(loaded.model), torch.no_grad():
        attention.enable(loaded.model)
        with attention.attach(loaded.adapter.attention_modules(loaded.model), recorder):
            our_logits = loaded.model(**inputs.batch).logits[0, -1]

    bridge = boot_bridge(loaded)
    batch = dict(inputs.batch)
    input_ids = batch.pop("input_ids")
    missing = [name for name in (pattern_hook(0), scores_hook(0)) if name not in bridge.hook_dict]
    if pattern_hook(0) in missing:
        raise UserError(f"TransformerLens's bridge of {type(loaded.model).__name__} has no "
                        f"{pattern_hook(0)} hook to compare with.")
    theirs: dict[int, torch.Tensor] = {}
    kept = [(pattern_hook(layer), _keep_pattern(layer, torch.from_numpy(rows), theirs))
            for layer in layers]
    with torch.no_grad():
        tl_clean = bridge.run_with_hooks(input_ids, fwd_hooks=kept, **batch)[0, -1]
        silent = [layer for layer in layers if layer not in theirs]
        if silent:
            raise UserError(f"TransformerLens's {pattern_hook(silent[0])} did not fire for "
                            f"{type(loaded.model).__name__}, so there is no pattern to compare.")
        patterns = {layer: _largest(recorder.maps[layer], theirs.pop(layer)) for layer in layers}
        effects, note = {}, ""
        if missing or not _honours_score_edits(bridge, input_ids, batch, groups.length, tl_clean):
            note = (f"TransformerLens keeps {type(loaded.model).__name__}'s attention native, so "
                    "edits of hook_attn_scores do not reach its output: knockouts are not "
                    "compared, patterns only.")
        else:
            with attention.kept(loaded.model):
                ours = run_knockouts(loaded, inputs, knockouts, groups=groups)
            positions = torch.arange(groups.length)
            for layer, knockout in zip(layers, knockouts):
                blocked = EdgeMaskPlan([knockout.edges(groups, len(layers))]).blocked(
                    layer, positions, groups.length)
                knocked = bridge.run_with_hooks(
                    input_ids, fwd_hooks=[(scores_hook(layer), _blocking(blocked))], **batch)[0, -1]
                effects[layer] = _largest(ours.logits[layer] - ours.clean_logits,
                                          knocked.float().cpu() - tl_clean.float().cpu())
    return Crosscheck(
        model=loaded.model_id, architecture=type(loaded.model).__name__, flows=flows,
        transformer_lens=metadata.version("transformer-lens"), rows=compared,
        logits=_largest(our_logits, tl_clean), patterns=patterns, knockouts=effects, note=note)


def _honours_score_edits(bridge, input_ids, batch, length: int, clean: torch.Tensor) -> bool:
    """Whether an edit of layer 0's ``hook_attn_scores`` reaches the output: every query made
    to read the first key only can only leave the logits bit for bit unchanged if TL discards
    it."""
    only_first = torch.ones(1, length, length, dtype=torch.bool)
    only_first[..., 0] = False
    with warnings.catch_warnings():  # TL warns that it discards the edit: the probe's answer
        warnings.filterwarnings("ignore", category=UserWarning, module="transformer_lens")
        edited = bridge.run_with_hooks(
            input_ids, fwd_hooks=[(scores_hook(0), _blocking(only_first))], **batch)[0, -1]
    return not torch.equal(edited, clean)

