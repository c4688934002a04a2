"""Training and evaluating a :class:`~probes.vif.VIF` module on a frozen model.

**Training.** Batches mix easy-VQA train and the fine-grained train split (``fine_fraction``
of each batch from the latter), drawn with a seeded generator. The loss of a batch is the
CVAE objective on the answer's first token: cross-entropy of the frozen model's next-token
logits at ``last`` with VIF on (a reparameterised posterior sample), + ``kl_weight`` x
KL(q || p) + ``sparsity_weight`` x (heatmap entropy + Gaussian volume), means over the batch.
Only the module's parameters are optimised (AdamW); the base model's are frozen
(``requires_grad`` off) and never change.

**Evaluation** on held-out data (default: the fine-grained test split): the greedy answer with
VIF off (``clean``, :func:`analyses.grading.grade`) and with VIF on (the prior's mean,
prefill only), per sample, a batch at a time (:func:`evaluate_batch`: the runner's units);
accuracies with Wilson CIs and an exact McNemar test of VIF vs clean
(:func:`analyses.stats.method_rows`). Localisation: the heatmap's mass on the target's
patches (``object`` tokens, from its pixel mask) against that of a uniform map, and the
pointing game (the heatmap's peak is on the target), over samples whose question names
something visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analyses.attenuation.measure import answer_token
from analyses.grading import grade, is_correct
from analyses.scoring import reply_tokens
from probes.errors import UserError
from probes.models.answer import answer_text
from probes.models.loading import LoadedModel
from probes.tokens import token_groups
from probes.vif import VIF, VIFConfig, VIFSession


@dataclass(frozen=True)
class TrainConfig:
    """What decides the trained module (all of it goes into ``summary.json``)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    kl_weight: float = 0.1
    sparsity_weight: float = 0.01
    fine_fraction: float = 0.5
    seed: int = 0
    vif: VIFConfig = field(default_factory=VIFConfig)

    def validate(self, num_layers: int) -> None:
        if self.steps < 0:
            raise UserError(f"--steps must be at least 0, not {self.steps}.")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}.")
        if not 0 <= self.fine_fraction <= 1:
            raise UserError(f"--fine-fraction must lie in 0..1, not {self.fine_fraction}.")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, not {self.lr}.")
        self.vif.layers(num_layers)


def freeze(loaded: LoadedModel) -> None:
    """The base model stays as it is: no parameter of it is trained."""
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)
    loaded.model.eval()


def batch_inputs(loaded: LoadedModel, samples: Sequence):
    inputs = loaded.adapter.build_inputs([s.image for s in samples], [s.ask for s in samples])
    answers = torch.tensor([answer_token(loaded, s.answer) for s in samples])
    return inputs.to(loaded.device, loaded.dtype), answers.to(loaded.device)


def loss_terms(loaded: LoadedModel, module: VIF, samples: Sequence, config: TrainConfig,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The batch's loss and its parts (see the module docstring)."""
    inputs, answers = batch_inputs(loaded, samples)
    with torch.enable_grad(), VIFSession(loaded, module, inputs, mode="posterior",
                                         answers=answers, generator=generator) as session:
        logits = loaded.model(**inputs.batch).logits[:, -1].float()
    nll = torch.nn.functional.cross_entropy(logits, answers)
    kl, sparse = session.kl.mean(), session.sparsity.mean()
    total = nll + config.kl_weight * kl + config.sparsity_weight * sparse
    return {"loss": total, "nll": nll, "kl": kl, "sparsity": sparse}


def train_vif(loaded: LoadedModel, module: VIF, easy, fine, config: TrainConfig,
              progress: bool = False) -> dict[str, np.ndarray]:
    """Train ``module`` in place; returns the per-step history (loss, nll, kl, sparsity)."""
    freeze(loaded)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * 0.5 * (
            1 + np.cos(np.pi * step / max(1, config.steps))))
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    history = {name: [] for name in ("loss", "nll", "kl", "sparsity")}
    for _ in tqdm(range(config.steps), disable=not progress, desc="training VIF", unit="step"):
        from_fine = rng.random(config.batch_size) < config.fine_fraction
        samples = [fine[int(rng.integers(len(fine)))] if f else easy[int(rng.integers(len(easy)))]
                   for f in from_fine]
        terms = loss_terms(loaded, module, samples, config, generator)
        optimizer.zero_grad()
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        for name, value in terms.items():
            history[name].append(float(value.detach()))
    module.eval()
    return {name: np.array(values) for name, values in history.items()}


def evaluate_batch(loaded: LoadedModel, module: VIF, samples: Sequence,
                   alpha: float | None = None) -> list[dict[str, Any]]:
    """One batch of the evaluation (see the module docstring): per sample, whether the clean
    and the VIF greedy answers are right, its kind, the heatmap's localisation (NaN where the
    question names nothing visible), and the heatmap over the image patches (in their order)
    with the patches' centres in 0..1. The batch is answered together, as one unit."""
    module.eval()
    # one budget for the batch, its rules' largest (one rule per dataset: each sample's own)
    budget = max(reply_tokens(s) for s in samples)
    clean = grade(loaded, samples, batch_size=max(1, len(samples)), max_new_tokens=budget)
    inputs = loaded.adapter.build_inputs([s.image for s in samples], [s.ask for s in samples])
    inputs = inputs.to(loaded.device, loaded.dtype)
    with torch.inference_mode(), VIFSession(loaded, module, inputs, alpha=alpha) as session:
        output = loaded.model.generate(**inputs.batch, max_new_tokens=budget, do_sample=False,
                                       pad_token_id=loaded.processor.tokenizer.pad_token_id)
    generated = output[:, inputs.input_ids.shape[1]:]
    lay = session.layout
    records = []
    for row, sample in enumerate(samples):
        real = lay.image_mask[row]
        heat = session.heatmap[row][real].float().cpu().numpy()
        positions = lay.image[row][real].numpy()
        record = {"clean": bool(clean[row]),
                  "vif": is_correct(answer_text(loaded, generated[row]), sample),
                  "kind": sample.kind, "target_mass": np.nan, "uniform_mass": np.nan,
                  "pointing": np.nan, "heatmap": heat, "coords": lay.coords[row][real].numpy()}
        if sample.has_region():
            groups = token_groups(loaded.adapter, inputs, row).with_region(mask=sample.region())
            on_target = np.isin(positions, groups.object)
            record.update(target_mass=float(heat[on_target].sum()),
                          uniform_mass=float(on_target.mean()),
                          pointing=float(on_target[int(np.argmax(heat))]))
        records.append(record)
    return records


def recorded_config(config: TrainConfig) -> dict:
    return asdict(config)
