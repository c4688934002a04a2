"""Training and evaluating a :class:`~probes.vif.VIF` module on a frozen model.

**Training.** Batches mix easy-VQA train and the fine-grained train split (``fine_fraction``
of each batch from the latter), drawn with a seeded generator. The loss of a batch is the
CVAE objective on the answer's first token: cross-entropy of the frozen model's next-token
logits at ``last`` with VIF on (a reparameterised posterior sample), + ``kl_weight`` x
KL(q || p) + ``sparsity_weight`` x (heatmap entropy + Gaussian volume), means over the batch.
Only the module's parameters are optimised (AdamW); the base model's are frozen
(``requires_grad`` off) and never change.

**Evaluation** on held-out data (default: the fine-grained test split): the greedy answer with
VIF off (``clean``, the path of :func:`analyses.vqa_accuracy.grade`) and with VIF on (the
prior's mean, prefill only), per sample; accuracies with Wilson CIs and an exact McNemar test
of VIF vs clean. Localisation: the heatmap's mass on the target's patches (``object`` tokens,
from its pixel mask) against that of a uniform map, and the pointing game (the heatmap's peak
is on the target), over samples whose question names something visible.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from analyses.attenuation.measure import answer_token
from analyses.layer_masking.sweep import has_region
from analyses.vqa_accuracy import grade
from probes.errors import UserError
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
    inputs = loaded.adapter.build_inputs([s.image for s in samples], [s.question for s in samples])
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


def _answer_text(loaded: LoadedModel, tokens: torch.Tensor) -> list[str]:
    tokenizer = loaded.processor.tokenizer
    stops = loaded.eos_token_ids() | {tokenizer.pad_token_id}
    texts = []
    for row in tokens.tolist():
        length = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(row[:length], skip_special_tokens=True).strip())
    return texts


@dataclass
class Evaluation:
    """Per evaluated sample, in order."""

    clean: np.ndarray  # bool: the clean greedy answer is right
    vif: np.ndarray  # bool: the VIF greedy answer is right
    kind: np.ndarray
    target_mass: np.ndarray  # heatmap mass on the target's patches (NaN: nothing visible)
    uniform_mass: np.ndarray  # the same for a uniform map
    pointing: np.ndarray  # 1.0 if the heatmap's peak is on the target (NaN: nothing visible)
    heatmaps: list[np.ndarray]  # [patches] per sample, in the order of the image patches
    coords: list[np.ndarray]  # [patches, 2] centres in 0..1
    seconds: float = 0.0


def evaluate(loaded: LoadedModel, module: VIF, dataset, batch_size: int = 64,
             alpha: float | None = None, progress: bool = False) -> Evaluation:
    """Clean vs VIF answers, and the heatmaps' localisation (see the module docstring)."""
    module.eval()
    started = time.perf_counter()
    samples = [dataset[i] for i in range(len(dataset))]
    clean = np.array(grade(loaded, samples, batch_size, progress=progress), dtype=bool)
    right, mass, uniform, pointing, heatmaps, coords = [], [], [], [], [], []
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress,
                      desc="answering with VIF", unit="batch"):
        chunk = samples[start:start + batch_size]
        inputs = loaded.adapter.build_inputs([s.image for s in chunk], [s.question for s in chunk])
        inputs = inputs.to(loaded.device, loaded.dtype)
        with torch.inference_mode(), VIFSession(loaded, module, inputs, alpha=alpha) as session:
            output = loaded.model.generate(**inputs.batch, max_new_tokens=4, do_sample=False,
                                           pad_token_id=loaded.processor.tokenizer.pad_token_id)
        texts = _answer_text(loaded, output[:, inputs.input_ids.shape[1]:])
        right += [t.lower() == s.answer.strip().lower() for t, s in zip(texts, chunk)]
        lay = session.layout
        for row, sample in enumerate(chunk):
            real = lay.image_mask[row]
            heat = session.heatmap[row][real].float().cpu().numpy()
            positions = lay.image[row][real].numpy()
            heatmaps.append(heat)
            coords.append(lay.coords[row][real].numpy())
            if not has_region(sample):
                mass.append(np.nan), uniform.append(np.nan), pointing.append(np.nan)
                continue
            groups = token_groups(loaded.adapter, inputs, row).with_region(
                mask=np.asarray(sample.mask) if sample.mask is not None else None,
                box=None if sample.mask is not None else sample.target_boxes[0])
            on_target = np.isin(positions, groups.object)
            mass.append(float(heat[on_target].sum()))
            uniform.append(float(on_target.mean()))
            pointing.append(float(on_target[int(np.argmax(heat))]))
    return Evaluation(clean, np.array(right, dtype=bool), np.array([s.kind for s in samples]),
                      np.array(mass), np.array(uniform), np.array(pointing), heatmaps, coords,
                      time.perf_counter() - started)


def recorded_config(config: TrainConfig) -> dict:
    return asdict(config)
