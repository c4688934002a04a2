"""Variational information flow (VIF): a small trained module that predicts, from a frozen
model's own hidden states, where on the image the question's answer is, and mixes that saliency
into the attention of late layers.

After the public implementation (ictnlp/VIF), with the differences written down:

- **Encoders.** A prior network p(z | image, question) and a posterior q(z | image, question,
  answer): cross-modal encoders over the hidden states of the "learning" layers (mean of their
  outputs, projected), in which ``slots`` learned latent queries, conditioned on the pooled
  question, read the image tokens (with Fourier features of each token's position on the image);
  each slot gives a diagonal Gaussian. The posterior also sees the answer's first token's input
  embedding. ``kl`` = KL(q || p), in closed form.
- **Renderer.** Each slot's latent becomes a Gaussian (centre, width) with a mixture weight; the
  mixture, evaluated at the centre of every image patch token (in image coordinates 0..1, so any
  adapter's grid works: LLaVA's 24x24, Qwen's dynamic grid, LLaVA-NeXT's base grid and tiles)
  and normalised over the patches by a softmax of its log, is the heatmap (sums to 1).
- **Sparsity** = entropy of the heatmap + Gaussian volume (sum of weight x width^2).
- **Application.** At the "apply" layers, prefill only, the attention probabilities P of the
  rows ``question,last`` become ``(1 - alpha) P + alpha H`` with H the heatmap on the image
  columns (the causal mask re-applied and rows renormalised by :mod:`probes.attention`; all
  heads alike, i.e. a ``[batch, 1, queries, keys]`` map). The public code biases only the
  question rows of a fully fine-tuned model; here the base model stays **frozen**, and on a
  frozen model a change of the question rows at the last layer cannot reach the answer at all,
  so ``last`` (the row that predicts the answer) is steered too. ``rows`` can be set.
- **Layers** are fractions of depth by default: learning layers ``round(0.34 L) ..
  round(0.55 L)`` with stride 2 (11, 13, 15, 17 of 32, as there), apply layers ``round(0.78 L) ..
  L - 1`` (25..31 of 32). At inference the prior's mean is used.

The module reads the hidden states with forward hooks and computes the heatmap inside the same
forward, when the first apply layer is reached: one pass, in ``forward`` and in ``generate``.
On a model spread over several devices the captured hidden states move to the VIF module's
device as they are made, and each apply layer gets the mixing map on its own device.

>>> from PIL import Image
>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> vif = VIF.for_model(loaded, VIFConfig(), seed=0)
>>> vif.learn_layers, vif.apply_layers
((2,), (5,))
>>> inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
>>> with torch.no_grad(), VIFSession(loaded, vif, inputs) as session:
...     logits = loaded.model(**inputs.batch).logits
>>> session.heatmap.shape, round(float(session.heatmap.sum()), 4)
(torch.Size([1, 64]), 1.0)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from probes import attention
from probes.attention import LayerEdit
from probes.devices import OnDevices, module_device
from probes.errors import UserError
from probes.models.adapters import VLInputs
from probes.models.adapters.grids import SEPARATOR
from probes.models.loading import LoadedModel
from probes.tokens import token_groups

MODES = ("prior", "posterior", "prior_sample")
FOURIER_BANDS = 4


@dataclass(frozen=True)
class VIFConfig:
    """Everything that shapes the module (saved with its weights)."""

    slots: int = 16
    latent_dim: int = 16
    width: int = 64
    heads: int = 4
    alpha: float = 0.5
    rows: str = "question,last"
    learn_fractions: tuple[float, float] = (0.34, 0.55)
    learn_stride: int = 2
    apply_fractions: tuple[float, float] = (0.78, 1.0)
    learn_layers: tuple[int, ...] | None = None  # explicit layers override the fractions
    apply_layers: tuple[int, ...] | None = None

    def layers(self, num_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(learning layers, apply layers) for a model of ``num_layers`` layers."""
        learn = self.learn_layers
        if learn is None:
            start, stop = (round(f * num_layers) for f in self.learn_fractions)
            learn = tuple(range(start, min(stop, num_layers - 1) + 1, self.learn_stride))
        apply = self.apply_layers
        if apply is None:
            apply = tuple(range(round(self.apply_fractions[0] * num_layers),
                                min(round(self.apply_fractions[1] * num_layers), num_layers)))
        learn, apply = tuple(sorted(set(learn))), tuple(sorted(set(apply)))
        if not learn or not apply:
            raise UserError("VIF needs at least one learning layer and one apply layer.")
        for layer in (*learn, *apply):
            if not 0 <= layer < num_layers:
                raise UserError(f"layer {layer} is out of range for a model with {num_layers} "
                                "layers.")
        if max(learn) >= min(apply):
            raise UserError(f"the learning layers {list(learn)} must all come before the first "
                            f"apply layer {min(apply)}.")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"alpha must lie in 0..1, not {self.alpha}.")
        return learn, apply

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VIFConfig:
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"the VIF file has config fields this version does not know: "
                            f"{sorted(unknown)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def kl_divergence(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last axis."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp()
                  - 1).sum(-1)


def fourier_features(coords: torch.Tensor) -> torch.Tensor:
    """[..., 2] coordinates in 0..1 -> [..., 4 * FOURIER_BANDS] sines and cosines."""
    scaled = coords[..., None] * (math.pi * 2.0 ** torch.arange(FOURIER_BANDS))  # [..., 2, F]
    return torch.cat([scaled.sin(), scaled.cos()], -1).flatten(-2)


class _Encoder(nn.Module):
    """Slots read the image tokens, conditioned on the question (and the answer)."""

    def __init__(self, config: VIFConfig, hidden: int, with_answer: bool) -> None:
        super().__init__()
        width = config.width
        self.image = nn.Linear(hidden + 4 * FOURIER_BANDS, width)
        self.question = nn.Linear(hidden, width)
        self.answer = nn.Linear(hidden, width) if with_answer else None
        self.condition = nn.Linear(width, width)
        self.slots = nn.Parameter(torch.randn(config.slots, width) * 0.5)
        self.read = nn.MultiheadAttention(width, config.heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, 2 * config.latent_dim))

    def forward(self, image, image_mask, coords, question, question_mask, answer=None):
        weights = question_mask.float()[..., None]
        pooled = (self.question(question) * weights).sum(1) / weights.sum(1).clamp_min(1)
        if self.answer is not None:
            pooled = pooled + self.answer(answer)
        condition = self.condition(torch.nn.functional.gelu(pooled))[:, None]  # [B, 1, W]
        keys = self.image(torch.cat([image, fourier_features(coords)], -1)) + condition
        queries = self.slots[None] + condition
        read, _ = self.read(queries, keys, keys, key_padding_mask=~image_mask, need_weights=False)
        mu, logvar = self.out(self.norm(read + queries)).chunk(2, -1)
        return mu, logvar.clamp(-8, 8)


class VIF(nn.Module):
    """The VIF module (see the module docstring). Build it for a model with :meth:`for_model`."""

    def __init__(self, config: VIFConfig, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.config, self.hidden_size, self.num_layers = config, hidden_size, num_layers
        self.learn_layers, self.apply_layers = config.layers(num_layers)
        self.prior = _Encoder(config, hidden_size, with_answer=False)
        self.posterior = _Encoder(config, hidden_size, with_answer=True)
        self.render_head = nn.Sequential(nn.Linear(config.latent_dim, config.width), nn.GELU(),
                                         nn.Linear(config.width, 4))

    @classmethod
    def for_model(cls, loaded: LoadedModel, config: VIFConfig = VIFConfig(),
                  seed: int = 0) -> VIF:
        """A freshly initialised module for ``loaded`` (initialisation seeded by ``seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config, loaded.adapter.hidden_size, loaded.adapter.num_layers)

    def render(self, z: torch.Tensor, coords: torch.Tensor, image_mask: torch.Tensor):
        """Latents [B, S, D] -> (heatmap [B, N] summing to 1 over the real patches, centres
        [B, S, 2], widths [B, S], weights [B, S])."""
        raw = self.render_head(z)
        centres = torch.sigmoid(raw[..., :2])
        widths = torch.nn.functional.softplus(raw[..., 2]) * 0.25 + 0.02
        log_weights = raw[..., 3].log_softmax(-1)
        distance = ((coords[:, None] - centres[:, :, None]) ** 2).sum(-1)  # [B, S, N]
        log_mixture = (log_weights[..., None] - distance / (2 * widths[..., None] ** 2)
                       - 2 * widths[..., None].log()).logsumexp(1)
        log_mixture = log_mixture.masked_fill(~image_mask, float("-inf"))
        return log_mixture.softmax(-1), centres, widths, log_weights.exp()

    def save(self, path: str | Path) -> Path:
        """Weights as safetensors, the config and the model shape in its metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(path), metadata={"config": self.config.to_json(),
                                              "hidden_size": str(self.hidden_size),
                                              "num_layers": str(self.num_layers)})
        return path

    @classmethod
    def load(cls, path: str | Path, loaded: LoadedModel | None = None) -> VIF:
        """A saved module; with ``loaded``, refuse one trained for another model shape."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise UserError(f"no VIF module at {path}; train one with python -m analyses.train_vif.")
        try:  # any other format (a .pt, a zip, text, a cut file) is refused in one sentence
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            hidden, layers = int(metadata["hidden_size"]), int(metadata["num_layers"])
            config = VIFConfig.from_json(metadata["config"])
            state = load_file(str(path))
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise UserError(f"{path} is no VIF module: it is not a safetensors file that "
                            "python -m analyses.train_vif wrote "
                            f"({type(err).__name__}).") from err
        if loaded is not None and (hidden, layers) != (loaded.adapter.hidden_size,
                                                       loaded.adapter.num_layers):
            raise UserError(f"{path} was trained for a model with {layers} layers of width "
                            f"{hidden}, not {loaded.adapter.num_layers} x "
                            f"{loaded.adapter.hidden_size}.")
        module = cls(config, hidden, layers)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:  # tensors missing or of another shape
            raise UserError(f"{path} is no VIF module of this version: its tensors do not "
                            "match.") from err
        return module.eval()


@dataclass
class _RowLayout:
    """Per batch row, padded to the longest: image patch positions and their centres, and
    the positions of the question and of the steered rows."""

    image: torch.Tensor  # [B, N] positions (0 where padded)
    image_mask: torch.Tensor  # [B, N]
    coords: torch.Tensor  # [B, N, 2]
    question: torch.Tensor  # [B, Q]
    question_mask: torch.Tensor
    rows: list[np.ndarray]
    length: int


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(a.size for a in arrays)
    out = np.zeros((len(arrays), width), dtype=np.int64)
    mask = np.zeros((len(arrays), width), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, :a.size], mask[i, :a.size] = a, True
    return torch.from_numpy(out), torch.from_numpy(mask)


def row_layout(loaded: LoadedModel, inputs: VLInputs, rows: str) -> _RowLayout:
    groups = [token_groups(loaded.adapter, inputs, row) for row in range(len(inputs.prompts))]
    coords = []
    for g in groups:
        layout, positions = g.image_tokens.layout, g.image_tokens.positions
        width, height = layout.image_size
        centres = {}
        for k, (grid, r, c) in enumerate(layout.token_cells.tolist()):
            if grid != SEPARATOR:
                x0, y0, x1, y1 = layout.grids[grid].cell_box(r, c)
                centres[int(positions[k])] = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height)
        coords.append(np.array([centres[int(p)] for p in g.image_patches], dtype=np.float32))
    image, image_mask = _pad([g.image_patches for g in groups])
    padded = np.zeros((*image.shape, 2), dtype=np.float32)
    for i, c in enumerate(coords):
        padded[i, :len(c)] = c
    question, question_mask = _pad([g.question for g in groups])
    return _RowLayout(image, image_mask, torch.from_numpy(padded), question, question_mask,
                      [g.get(rows) for g in groups], int(inputs.input_ids.shape[1]))


class VIFSession:
    """Switch VIF on for the forwards (or a ``generate``) of ``inputs`` inside the block.

    ``mode``: ``prior`` (the prior's mean; inference), ``posterior`` (a reparameterised sample
    of the posterior given ``answers``, the first answer token per row; training) or
    ``prior_sample``. ``alpha`` overrides the config's. After the prefill, ``heatmap`` [B, N]
    (over the rows' image patches, in order), ``kl`` [B] (posterior mode), ``sparsity`` [B] and
    the renderer's parameters are set.
    """

    def __init__(self, loaded: LoadedModel, module: VIF, inputs: VLInputs, mode: str = "prior",
                 answers: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 alpha: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "posterior" and answers is None:
            raise ValueError("the posterior needs the answers")
        self.loaded, self.module, self.mode = loaded, module, mode
        self.answers, self.generator = answers, generator
        self.alpha = module.config.alpha if alpha is None else alpha
        self.layout = row_layout(loaded, inputs, module.config.rows)
        self.captured: dict[int, torch.Tensor] = {}
        self.heatmap = self.kl = self.sparsity = None
        self._mix: OnDevices | None = None  # the mixing map, once per apply layers' device
        self._stack = None

    # -------------------------------------------------------------- hooks and the plan
    def _capture(self, layer: int):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] == self.layout.length:  # the prefill (decoding steps are 1 long)
                self.captured[layer] = hidden.detach().to(module_device(self.module))
        return hook

    def __enter__(self) -> VIFSession:
        import contextlib

        model, adapter = self.loaded.model, self.loaded.adapter
        attention.enable(model)
        layers = adapter.decoder_layers(model)
        self._stack = contextlib.ExitStack()
        for layer in self.module.learn_layers:
            handle = layers[layer].register_forward_hook(self._capture(layer))
            self._stack.callback(handle.remove)
        self._stack.enter_context(attention.attach(adapter.attention_modules(model), self))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def for_layer(self, layer: int, query_positions: torch.Tensor, kv_length: int) -> LayerEdit | None:
        if layer not in self.module.apply_layers or query_positions.numel() != self.layout.length:
            return None  # prefill only
        if self._mix is None:
            self._mix = OnDevices(self._build_mix(kv_length))
        return LayerEdit(mix=self._mix.on(query_positions.device), mix_alpha=self.alpha)

    # -------------------------------------------------------------- the module's work
    def _gather(self, positions: torch.Tensor) -> torch.Tensor:
        states = torch.stack([self.captured[layer] for layer in self.module.learn_layers]).mean(0)
        index = positions.to(states.device)[..., None].expand(-1, -1, states.shape[-1])
        return states.gather(1, index).float()

    def _build_mix(self, kv_length: int) -> torch.Tensor:
        """The mixing map [batch, queries, keys], on the VIF module's device."""
        lay, module = self.layout, self.module
        missing = [layer for layer in module.learn_layers if layer not in self.captured]
        if missing:
            raise RuntimeError(f"VIF saw no prefill output of layers {missing}")
        image, question = self._gather(lay.image), self._gather(lay.question)
        where = module_device(module)
        coords, image_mask = lay.coords.to(where), lay.image_mask.to(where)
        args = (image, image_mask, coords, question, lay.question_mask.to(where))
        mu_p, logvar_p = module.prior(*args)
        if self.mode == "posterior":
            embedding = self.loaded.model.get_input_embeddings()
            answers = self.answers.to(module_device(embedding))
            embedded = embedding(answers).detach().float().to(where)
            mu_q, logvar_q = module.posterior(*args, answer=embedded)
            noise = torch.randn(mu_q.shape, generator=self.generator).to(where)
            z = mu_q + (0.5 * logvar_q).exp() * noise
            self.kl = kl_divergence(mu_q, logvar_q, mu_p, logvar_p).sum(-1)
        elif self.mode == "prior_sample":
            noise = torch.randn(mu_p.shape, generator=self.generator).to(where)
            z = mu_p + (0.5 * logvar_p).exp() * noise
        else:
            z = mu_p
        heatmap, centres, widths, weights = module.render(z, coords, image_mask)
        self.heatmap, self.centres, self.widths, self.weights = heatmap, centres, widths, weights
        self.sparsity = sparsity(heatmap, widths, weights)
        batch = heatmap.shape[0]
        b, r, c, v = [], [], [], []
        for row in range(batch):
            cols = lay.image[row][lay.image_mask[row]]
            steered = torch.from_numpy(lay.rows[row])
            b.append(torch.full((steered.numel() * cols.numel(),), row))
            r.append(steered.repeat_interleave(cols.numel()))
            c.append(cols.repeat(steered.numel()))
            v.append(heatmap[row][image_mask[row]].repeat(steered.numel()))
        mix = torch.zeros(batch, lay.length, kv_length, device=where)
        index = tuple(torch.cat(part).to(where) for part in (b, r, c))
        return mix.index_put(index, torch.cat(v))


def sparsity(heatmap: torch.Tensor, widths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B]: the heatmap's entropy (nats) + the Gaussian volume sum_k weight_k width_k^2."""
    entropy = -(heatmap * heatmap.clamp_min(1e-30).log()).sum(-1)
    return entropy + (weights * widths ** 2).sum(-1)


def vif_generate(loaded: LoadedModel, module: VIF, inputs: VLInputs, max_new_tokens: int = 4,
                 alpha: float | None = None) -> torch.Tensor:
    """Greedy ``generate`` with VIF on (prior mean, prefill only); returns the new tokens."""
    tokenizer = loaded.processor.tokenizer
    with torch.inference_mode(), VIFSession(loaded, module, inputs, alpha=alpha):
        output = loaded.model.generate(**inputs.batch, max_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return output[:, inputs.input_ids.shape[1]:]
