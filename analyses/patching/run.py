"""An activation patching run over a dataset: per sample the patched runs of
:mod:`analyses.patching.measure`; per (site, layer, group) and per (layer, head) the mean
effect over the samples with a bootstrap CI; the samples skipped and why; the layers where
patching the answer position's residual stream restores the clean answer (the
cross-instrument check beside the knockout fusion layers and the logit lens).

**Runner.** Each sample's record depends only on (model, sample, its counterpart, config), so a
resumed run, shards merged or a Ray run give the files of an uninterrupted one. The
counterpart of ``pair`` and ``swap`` is another sample of the data: each worker finds it in the
dataset it is given (:meth:`Patching.warm_up`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyses.patching import corrupt as corruptions
from analyses.patching.measure import Grid, measure_sample
from analyses.results import RunResult, provenance, skip
from analyses.runner import Analysis, Pass, RunInfo
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci
from probes import engines
from probes.engine import Engine
from probes.errors import UserError
from probes.patching import SITES, Site, check_site

ANALYSIS = "patching"
SAMPLES = "samples"
DIRECTIONS = ("denoise", "noise")
PATCH_GROUPS = ("image", "question", "last", "object", "background")
RESTORED = 0.5  # a layer "restores" the answer where patching there brings back half its lead
SKIPPED = {  # why a sample is skipped, by its recorded reason
    "unchanged": "the corruption leaves the answer token as it is",
    "misaligned": "the counterpart's input has other token positions",
    "unpaired": "the data names no counterpart",
}


@dataclass(frozen=True)
class PatchingConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    corrupt: str = "noise"
    direction: str = "denoise"
    sites: tuple[str, ...] = ("residual",)  # "head": per (layer, head) at head_group
    groups: tuple[str, ...] = ("image", "question", "last")
    head_group: str = "last"
    noise_scale: float = 3.0
    batch_size: int = 16
    n_bootstrap: int = 2000
    seed: int = 0
    engine: Engine = engines.DEFAULT

    def __post_init__(self) -> None:  # an engine's name (as recorded) is that engine
        object.__setattr__(self, "engine", engines.named(self.engine))
        for name in ("sites", "groups"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def check(self) -> None:
        """Refuse, in one sentence, what no model can run (before the model loads)."""
        if self.corrupt not in corruptions.CORRUPTIONS:
            raise UserError(f"unknown corruption {self.corrupt!r}; use "
                            f"{', '.join(corruptions.CORRUPTIONS)}.")
        if self.direction not in DIRECTIONS:
            raise UserError(f"unknown direction {self.direction!r}; use denoise or noise.")
        for site in self.sites:
            if site not in SITES:
                raise UserError(f"unknown site {site!r}; use {', '.join(SITES)}.")
        for group in (*self.groups, self.head_group):
            if group not in PATCH_GROUPS:
                raise UserError(f"unknown token group {group!r} to patch; use "
                                f"{', '.join(PATCH_GROUPS)}.")
        if not self.groups:
            raise UserError("--groups names no token group; give at least one.")
        if self.n_bootstrap < 1:
            raise UserError(f"--bootstrap must be at least 1, not {self.n_bootstrap}.")

    def grid(self, loaded) -> Grid:
        """The conditions on ``loaded``, each site refused in one sentence where the family
        lacks it."""
        for kind in self.sites:
            check_site(loaded, Site(kind, 0, 0 if kind == "head" else None))
        heads = loaded.adapter.num_heads if "head" in self.sites else 0
        return Grid(tuple(s for s in self.sites if s != "head"), self.groups,
                    loaded.adapter.num_layers, heads, self.head_group)


class Patching(Analysis):
    """Per sample: a clean and a corrupt run, then every patched run of the grid."""

    name = ANALYSIS
    passes = (Pass(SAMPLES, description="activation patching"),)

    def __init__(self, config: PatchingConfig = PatchingConfig()) -> None:
        config.check()
        self.config = config
        self._dataset, self._partners = None, {}

    def __getstate__(self) -> dict[str, Any]:  # workers get the config only
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> Patching:
        return cls(PatchingConfig(**recorded))

    def recorded(self) -> dict[str, Any]:
        return engines.recorded_config(self.config)

    def warm_up(self, loaded, dataset) -> None:
        # the counterparts (pair, swap) are other samples of the data this worker is given
        self._dataset = dataset
        self._partners = corruptions.partners(dataset, self.config.corrupt)
        self.config.grid(loaded)  # a site the family lacks: refused before any sample

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        records = []
        for sample, index in zip(samples, indices):
            counterpart = corruptions.counterpart(self._dataset, self._partners,
                                                  self.config.corrupt, index, sample)
            if self.config.corrupt in ("pair", "swap") and counterpart is None:
                records.append(unpaired(sample, self.config.grid(loaded)))
                continue
            records.append(measure_sample(self.config.engine, loaded, sample, self.config,
                                          index, counterpart))
        return records

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows = records[SAMPLES]
        arrays = stack(rows)
        used = arrays["skipped"] == ""
        if not used.any() and info.shard == (0, 1):  # a shard's may all be; merge decides
            raise UserError(no_sample_sentence(self.config, arrays))
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), self.recorded(),
                             self.config.seed)
        summary.update(summarize(arrays, self.config, info.num_layers))
        if (~used).any():
            skip(summary, "samples", f"{int((~used).sum())} of {used.size} skipped: "
                 + ", ".join(f"{count} {reason}" for reason, count in
                             sorted(summary["skipped_by_reason"].items())))
        summary["timing"] = info.timing
        return RunResult(summary, arrays)

    def table(self, summary: Mapping[str, Any]) -> str:
        from analyses.patching.table import format_table

        return format_table(summary)


def unpaired(sample, grid: Grid) -> dict[str, Any]:
    """The record of a sample without a counterpart (its data names none)."""
    return {"sample_id": sample.id, "kind": sample.kind, "answer": sample.answer,
            "counterpart": "", "clean_token": -1, "corrupt_token": -1, "clean_text": "",
            "corrupt_text": "", "skipped": "unpaired",
            "ld_clean": np.nan, "ld_corrupt": np.nan, "effect": np.full(grid.shape(), np.nan),
            "head_effect": np.full((grid.num_layers, grid.heads), np.nan)}


def no_sample_sentence(config: PatchingConfig, arrays: Mapping[str, np.ndarray]) -> str:
    reasons = set(arrays["skipped"].tolist())
    if reasons == {"unchanged"}:
        hint = (" raise --noise-scale" if config.corrupt == "noise"
                else " try another --corrupt")
        return (f"--corrupt {config.corrupt} leaves the model's answer unchanged on every one "
                f"of the {arrays['skipped'].size} samples, so there is nothing to restore;"
                f"{hint}.")
    return (f"no sample could be patched with --corrupt {config.corrupt} (skipped: "
            f"{', '.join(sorted(reasons))}).")


def stack(rows: Records) -> dict[str, np.ndarray]:
    """The per-sample arrays, with each sample's index in the data (``sample_index``)."""
    order = sorted(rows)
    return {"sample_index": np.array(order, dtype=np.int64),
            **{name: np.stack([np.asarray(rows[i][name]) for i in order])
               for name in rows[order[0]]}}


def mean_ci(values: np.ndarray, config: PatchingConfig) -> tuple[float, float, float, int]:
    """(mean, CI low, CI high, n) of the finite values of one column."""
    defined = values[np.isfinite(values)]
    mean, low, high = bootstrap_mean_ci(defined, config.n_bootstrap, config.seed)
    return float(mean), float(low), float(high), int(defined.size)


def summarize(arrays: Mapping[str, np.ndarray], config: PatchingConfig, num_layers: int
              ) -> dict[str, Any]:
    used = arrays["skipped"] == ""
    effect, heads = arrays["effect"][used], arrays["head_effect"][used]
    sites = [s for s in config.sites if s != "head"]
    per_layer = []
    for s, site in enumerate(sites):
        for g, group in enumerate(config.groups):
            for layer in range(num_layers):
                mean, low, high, n = mean_ci(effect[:, s, layer, g], config)
                per_layer.append({"series": f"{site}:{group}", "site": site, "group": group,
                                  "layer": layer, "mean": mean, "ci_low": low,
                                  "ci_high": high, "n": n})
    head_rows = []
    for layer in range(heads.shape[1]):
        for head in range(heads.shape[2]):
            mean, low, high, n = mean_ci(heads[:, layer, head], config)
            head_rows.append({"layer": layer, "head": head, "mean": mean, "ci_low": low,
                              "ci_high": high, "n": n})
    reasons = arrays["skipped"][~used].tolist()
    return {
        "axes": {"effect": ["sample", "site", "layer", "group"],
                 "head_effect": ["sample", "layer", "head"]},
        "num_layers": num_layers, "sites": sites, "groups": list(config.groups),
        "n_used": int(used.sum()),
        "skipped_by_reason": {reason: reasons.count(reason) for reason in sorted(set(reasons))},
        "skipped_samples": [{"sample_id": str(i), "reason": str(r)} for i, r in
                            zip(arrays["sample_id"][~used], arrays["skipped"][~used])],
        "per_layer": per_layer, "heads": head_rows,
        "restoring_layers": restoring_layers(per_layer),
        "rules": {
            "effect": "normalised logit difference, LD = logit[clean answer] - logit[corrupt "
                      "answer]; restored = (LD_patched - LD_corrupt) / (LD_clean - "
                      "LD_corrupt); effect = restored (denoise: clean into corrupt) or 1 - "
                      "restored (noise: corrupt into clean)",
            "skipped": "; ".join(f"{reason}: {why}" for reason, why in SKIPPED.items()),
            "restoring_layers": f"per site:group, the layers whose mean effect is at least "
                                f"{RESTORED}",
        },
    }


def restoring_layers(per_layer: list[dict]) -> dict[str, list[int]]:
    """Per series, the layers whose mean effect reaches :data:`RESTORED`."""
    found: dict[str, list[int]] = {}
    for row in per_layer:
        found.setdefault(row["series"], [])
        if np.isfinite(row["mean"]) and row["mean"] >= RESTORED:
            found[row["series"]].append(row["layer"])
    return found
