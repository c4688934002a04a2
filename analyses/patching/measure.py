"""One sample's activation patching: its clean run, its corrupt run
(:mod:`analyses.patching.corrupt`), and one patched run per condition: per (site, layer, token
group), the source run's activations put into the target run at that group's positions
(denoising: clean into corrupt; noising: corrupt into clean), and per (layer, head) the head's
slice of the attention output projection's input at ``head_group``.

The metric is the **normalised logit difference**: with ``c`` the clean run's answer token and
``x`` the corrupt run's, LD = logit[c] - logit[x] and

    restored = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)

``effect`` is ``restored`` for denoising (1: the patch alone brings the clean answer back) and
``1 - restored`` for noising (1: the patch alone takes it away), so in both a large effect marks
a site that carries what the corruption changed. A sample whose corruption leaves the answer
unchanged (``c == x``) has no logit difference to restore: it is recorded as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analyses.layer_masking.sweep import sample_groups
from analyses.patching import corrupt as corruptions
from probes.engine import Engine
from probes.patching import EMBEDDINGS, Patch, Site


@dataclass(frozen=True)
class Grid:
    """The conditions of a run: ``sites`` x layers x ``groups``, plus layers x heads at
    ``head_group`` when ``heads``."""

    sites: tuple[str, ...]
    groups: tuple[str, ...]
    num_layers: int
    heads: int  # 0: no head conditions
    head_group: str = "last"

    def shape(self) -> tuple[int, int, int]:
        return (len(self.sites), self.num_layers, len(self.groups))


def _inputs(loaded, image, ask: str):
    return loaded.adapter.build_inputs([image], [ask]).to(loaded.device, loaded.dtype)


def corrupt_prefill(engine: Engine, loaded, sample, clean, config, index: int, counterpart):
    """(the corrupt run's prefill, or None and why the sample is skipped)."""
    groups = clean.groups
    if config.corrupt == "noise":
        site = Site("residual", EMBEDDINGS)
        embeddings = engine.read(clean, [site], groups.image)[0]
        seed = corruptions.sample_seed(config.seed, index)
        values = corruptions.noised(embeddings, config.noise_scale, seed)
        edits = [Patch(EMBEDDINGS, groups.image, values)]
        return engine.patched_prefill(loaded, clean.inputs, groups, edits), ""
    image = corruptions.counterpart_image(sample, config.corrupt, counterpart)
    ask = counterpart.ask if config.corrupt == "pair" else sample.ask
    inputs = _inputs(loaded, image, ask)
    same = (inputs.input_ids.shape == clean.inputs.input_ids.shape and bool(
        ((inputs.input_ids == loaded.adapter.image_token_id)
         == (clean.inputs.input_ids == loaded.adapter.image_token_id)).all()))
    if not same:
        return None, "misaligned"
    return engine.prefill(loaded, inputs, groups), ""


def measure_sample(engine: Engine, loaded, sample, config, index: int, counterpart=None
                   ) -> dict[str, Any]:
    """The record of one sample (see the module docstring)."""
    grid = config.grid(loaded)
    inputs = _inputs(loaded, sample.image, sample.ask)
    groups = sample_groups(loaded, inputs, sample)
    clean = engine.prefill(loaded, inputs, groups)
    corrupt, reason = corrupt_prefill(engine, loaded, sample, clean, config, index, counterpart)
    record = {"sample_id": sample.id, "kind": sample.kind, "answer": sample.answer,
              "counterpart": "" if counterpart is None else counterpart.id,
              "clean_token": int(clean.logits.argmax()), "corrupt_token": -1,
              "clean_text": token_text(loaded, int(clean.logits.argmax())), "corrupt_text": "",
              "skipped": reason, "ld_clean": np.nan, "ld_corrupt": np.nan,
              "effect": np.full(grid.shape(), np.nan),
              "head_effect": np.full((grid.num_layers, grid.heads), np.nan)}
    if corrupt is None:
        return record
    clean_token, corrupt_token = int(clean.logits.argmax()), int(corrupt.logits.argmax())
    record.update(corrupt_token=corrupt_token, corrupt_text=token_text(loaded, corrupt_token))
    if clean_token == corrupt_token:
        record["skipped"] = "unchanged"
        return record
    source, target = (clean, corrupt) if config.direction == "denoise" else (corrupt, clean)
    conditions, cells = conditions_of(engine, grid, source, groups)
    logits = engine.patch_many(target, conditions, config.batch_size, source).double().numpy()

    def difference(values: np.ndarray) -> np.ndarray:
        return values[..., clean_token] - values[..., corrupt_token]

    ld_clean = float(difference(clean.logits.double().numpy()))
    ld_corrupt = float(difference(corrupt.logits.double().numpy()))
    restored = (difference(logits) - ld_corrupt) / (ld_clean - ld_corrupt)
    effect = restored if config.direction == "denoise" else 1.0 - restored
    for (array, where), value in zip(cells, effect):
        record[array][where] = value
    record.update(ld_clean=ld_clean, ld_corrupt=ld_corrupt)
    return record


def token_text(loaded, token: int) -> str:
    """The text of one token id (what the report shows as a run's answer)."""
    return loaded.processor.tokenizer.decode([int(token)])


def conditions_of(engine: Engine, grid: Grid, source, groups):
    """(one condition per cell of the grid whose group has positions, the cell each fills:
    (record array, index)), the values read from ``source`` in one read."""
    sites = [Site(kind, layer) for kind in grid.sites for layer in range(grid.num_layers)]
    head_sites = [Site("head", layer, head) for layer in range(grid.num_layers)
                  for head in range(grid.heads)]
    names = [*grid.groups, *([grid.head_group] if grid.heads else [])]
    where = {name: groups.get(name) for name in names}
    positions = np.unique(np.concatenate(list(where.values())))
    values = engine.read(source, sites + head_sites, positions)
    rows = {name: np.searchsorted(positions, found) for name, found in where.items()}
    conditions, cells = [], []
    for site, read in zip(sites, values):
        for g, name in enumerate(grid.groups):
            if where[name].size:
                conditions.append([Patch(site.layer, where[name], read[rows[name]], site.kind)])
                cells.append(("effect", (grid.sites.index(site.kind), site.layer, g)))
    for site, read in zip(head_sites, values[len(sites):]):
        name = grid.head_group
        if where[name].size:
            conditions.append([Patch(site.layer, where[name], read[rows[name]], "head",
                                     site.head)])
            cells.append(("head_effect", (site.layer, site.head)))
    return conditions, cells
