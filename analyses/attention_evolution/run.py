"""Attention evolution as an analysis of the shared runner (:mod:`analyses.runner`): every
sample's maps at every layer, the scores per layer with bootstrap CIs, the sink patches, and
the result (``summary.json`` + ``arrays.npz``). Each sample's record depends only on (model,
sample), so a resumed run, shards merged, or a Ray run give the files of one uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from analyses.attention_evolution.maps import SERIES, record_sample
from analyses.attention_evolution.scores import (
    SCORES,
    SINK_THRESHOLD,
    TOP_SHARE,
    sink_patches,
    sink_scores,
)
from analyses.results import RunResult, provenance
from analyses.runner import Analysis, LocalBackend, Pass, RunInfo, RunOptions, run
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci
from probes import engines
from probes.engine import Engine
from probes.errors import UserError
from probes.masking import check_layers
from probes.models.loading import LoadedModel

ANALYSIS = "attention_evolution"
SAMPLES = "samples"
EXAMPLE_PIXELS = 128  # example images are stored at this size for the map figures
METRICS = (*SCORES, "sink_share")


@dataclass(frozen=True)
class EvolutionConfig:
    """What decides the numbers (all of it goes into ``summary.json``)."""

    heads: bool = False  # also keep every head's map (arrays["head_maps"])
    top_share: float = TOP_SHARE
    sink_threshold: float = SINK_THRESHOLD
    examples: int = 4  # samples whose images and maps the figures show
    figure_layers: tuple[int, ...] | None = None  # None: up to 6 evenly spaced layers
    n_bootstrap: int = 2000
    seed: int = 0
    engine: Engine = engines.DEFAULT  # any of probes.engines: the same maps

    def __post_init__(self) -> None:  # an engine's name (as recorded) is that engine
        object.__setattr__(self, "engine", engines.named(self.engine))

    def validate(self, num_layers: int) -> None:
        if not 0 < self.top_share < 1:
            raise UserError(f"--top-share must lie strictly between 0 and 1, not {self.top_share}.")
        if not 0 < self.sink_threshold <= 1:
            raise UserError(f"--sink-threshold must lie in (0, 1], not {self.sink_threshold}.")
        if self.examples < 0:
            raise UserError(f"--examples must be at least 0, not {self.examples}.")
        if self.figure_layers is not None:
            check_layers(self.figure_layers, num_layers)

    def layers_to_show(self, num_layers: int) -> list[int]:
        if self.figure_layers is not None:
            return sorted(set(self.figure_layers))
        return sorted({int(round(v)) for v in np.linspace(0, num_layers - 1, min(6, num_layers))})


def example_geometry(groups) -> np.ndarray:
    """[rows, cols, x0, y0, cell width, cell height] of the image's first patch grid, in
    fractions of the image's width and height (so it fits the image at any size)."""
    grid = groups.image_tokens.layout.grids[0]
    width, height = grid.image_size
    return np.array([grid.rows, grid.cols, grid.origin_x / width, grid.origin_y / height,
                     grid.cell_width / width, grid.cell_height / height], dtype=np.float64)


def thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((EXAMPLE_PIXELS, EXAMPLE_PIXELS),
                                                  Image.BILINEAR), dtype=np.uint8)


@dataclass(frozen=True)
class ExampleSamples:
    """The samples the figures show: the first ``count`` samples (by index) with a relevant
    region. Chosen when the run is aggregated, from records that carry ``relevant`` and
    ``example_grid`` (:func:`example_geometry`), with the images read from the dataset, so
    the choice does not depend on the order samples were measured in."""

    index: tuple[int, ...] = ()
    images: tuple[np.ndarray, ...] = ()
    grids: tuple[np.ndarray, ...] = ()

    @classmethod
    def choose(cls, records: Records, dataset, count: int) -> ExampleSamples:
        chosen = [index for index in sorted(records) if records[index]["relevant"].any()][:count]
        return cls(tuple(chosen), tuple(thumbnail(dataset[index].image) for index in chosen),
                   tuple(np.asarray(records[index]["example_grid"]) for index in chosen))

    def __len__(self) -> int:
        return len(self.index)

    def arrays(self) -> dict[str, np.ndarray]:
        if not self.index:
            return {"example_index": np.zeros(0, np.int64),
                    "example_images": np.zeros((0, EXAMPLE_PIXELS, EXAMPLE_PIXELS, 3), np.uint8),
                    "example_grid": np.zeros((0, 6))}
        return {"example_index": np.array(self.index, dtype=np.int64),
                "example_images": np.stack(self.images), "example_grid": np.stack(self.grids)}


class AttentionEvolution(Analysis):
    """Record every sample's maps (one pass), then score them and find the sinks."""

    name = ANALYSIS
    passes = (Pass(SAMPLES, description="attention evolution"),)

    def __init__(self, config: EvolutionConfig = EvolutionConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> AttentionEvolution:
        layers = recorded.get("figure_layers")
        return cls(EvolutionConfig(**{**recorded, "figure_layers": None if layers is None
                                      else tuple(layers)}))

    def recorded(self) -> dict[str, Any]:
        return engines.recorded_config(self.config)

    def validate(self, num_layers: int) -> None:
        self.config.validate(num_layers)

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        return [self._sample_values(loaded, sample) for sample in samples]

    def _sample_values(self, loaded, sample) -> dict[str, Any]:
        maps, _, groups, _ = record_sample(loaded, sample, self.config.heads, keep_clean=False,
                                           engine=self.config.engine)
        values = {"sample_id": sample.id, "kind": sample.kind, "maps": maps.maps,
                  "image_share": maps.image_share, "relevant": maps.relevant,
                  "scores": maps.scores(), "cells": maps.cells,
                  "example_grid": example_geometry(groups)}
        if self.config.heads:
            values["head_maps"] = maps.head_maps
        return values

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows = records[SAMPLES]
        config = self.config
        cells = _one_grid(rows, info.data["name"])
        maps = np.stack([row["maps"] for row in rows.values()])
        arrays = {
            "sample_index": np.array(list(rows), dtype=np.int64),
            "sample_id": np.array([str(row["sample_id"]) for row in rows.values()]),
            "kind": np.array([str(row["kind"]) for row in rows.values()]),
            "maps": maps.astype(np.float32),
            "relevant": np.stack([row["relevant"] for row in rows.values()]),
            "cells": cells,
        }
        scores = np.stack([row["scores"] for row in rows.values()])  # [samples, series, layers, SCORES]
        for i, name in enumerate(SCORES):
            arrays[name] = scores[..., i]
        if config.heads:
            arrays["head_maps"] = np.stack([row["head_maps"] for row in rows.values()]
                                           ).astype(np.float32)
        arrays.update(ExampleSamples.choose(rows, info.dataset, config.examples).arrays())
        sink = sink_scores(maps, arrays["relevant"], config.top_share)
        sinks = sink_patches(sink, config.sink_threshold)
        arrays["sink_score"] = sink
        arrays["sink_patches"] = sinks.astype(np.int64)
        arrays["sink_share"] = maps[..., sinks].sum(-1) if sinks.size else \
            np.full(arrays["image_share"].shape, np.nan)
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), self.recorded(),
                             config.seed)
        summary.update(summarize(arrays, config, info.num_layers))
        summary["timing"] = info.timing
        return RunResult(summary, arrays)

    def table(self, summary) -> str:
        from analyses.attention_evolution.table import format_table

        return format_table(summary)


def _one_grid(rows: Records, data_name: str) -> np.ndarray:
    """The patch cells every sample shares (attention evolution compares patches across
    samples)."""
    first, cells = next(iter(rows.items()))[0], next(iter(rows.values()))["cells"]
    for index, row in rows.items():
        if row["cells"].shape != cells.shape or not np.array_equal(row["cells"], cells):
            raise UserError(f"sample {index} of {data_name} has another patch grid than sample "
                            f"{first}; attention evolution compares patches across samples, so "
                            "its images must all give the same grid (resize them to one size).")
    return cells


def run_attention_evolution(loaded: LoadedModel, dataset,
                            config: EvolutionConfig = EvolutionConfig(),
                            progress: bool = False, out: Path | None = None,
                            resume: bool = False, shard: tuple[int, int] = (0, 1),
                            on_sample: Callable[[int], None] | None = None) -> RunResult:
    """Record and score every sample of ``dataset`` (see the package docstring), in this
    process (see :mod:`analyses.runner` for what ``out``, ``resume``, ``shard`` and
    ``on_sample`` do; the caller saves the result)."""
    return run(AttentionEvolution(config), LocalBackend(loaded), dataset,
               RunOptions(out=out, resume=resume, shard=shard, progress=progress,
                          on_sample=on_sample))


def per_layer_rows(arrays: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> list[dict]:
    """``{series, metric, layer, mean, ci_low, ci_high, n}``: per query series and metric, the
    mean over the samples where the metric is defined (a region to score against) with its 95%
    percentile-bootstrap CI."""
    rows = []
    for metric in METRICS:
        values = arrays[metric]  # [samples, series, layers]
        for s, series in enumerate(SERIES):
            defined = np.isfinite(values[:, s]).all(1)
            if not defined.any():
                continue
            mean, low, high = bootstrap_mean_ci(values[defined, s], n_bootstrap, seed)
            for layer in range(values.shape[2]):
                rows.append({"series": series, "metric": metric, "layer": layer,
                             "mean": float(mean[layer]), "ci_low": float(low[layer]),
                             "ci_high": float(high[layer]), "n": int(defined.sum())})
    return rows


def trends(arrays: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> list[dict]:
    """Per series and region metric: last layer minus first layer, paired per sample, with its
    bootstrap CI (the "attention moves onto the relevant region with depth" claim, tested)."""
    rows = []
    for metric in ("relevant_share", "auroc", "pointing", "entropy", "image_share"):
        for s, series in enumerate(SERIES):
            values = arrays[metric][:, s]
            defined = np.isfinite(values).all(1)
            if not defined.any():
                continue
            change = values[defined, -1] - values[defined, 0]
            mean, low, high = bootstrap_mean_ci(change, n_bootstrap, seed)
            peak = int(np.argmax(values[defined].mean(0)))
            rows.append({"series": series, "metric": metric, "first": float(values[defined, 0].mean()),
                         "last": float(values[defined, -1].mean()), "change": float(mean),
                         "ci_low": float(low), "ci_high": float(high), "n": int(defined.sum()),
                         "peak_layer": peak})
    return rows


def summarize(arrays: dict[str, np.ndarray], config: EvolutionConfig, num_layers: int) -> dict[str, Any]:
    sinks = arrays["sink_patches"].tolist()
    score = arrays["sink_score"]
    order = np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")[:8]
    patches = arrays["maps"].shape[-1]
    return {
        "axes": {**{m: ["sample", "series", "layer"] for m in METRICS},
                 "maps": ["sample", "series", "layer", "patch"],
                 "head_maps": ["sample", "series", "layer", "head", "patch"],
                 "relevant": ["sample", "patch"], "sink_score": ["patch"],
                 "cells": ["patch", "grid,row,col"]},
        "series": list(SERIES),
        "metrics": list(METRICS),
        "num_layers": num_layers,
        "n_patches": int(patches),
        "n_with_region": int(arrays["relevant"].any(1).sum()),
        "figure_layers": config.layers_to_show(num_layers),
        "per_layer": per_layer_rows(arrays, config.n_bootstrap, config.seed),
        "trends": trends(arrays, config.n_bootstrap, config.seed),
        "sinks": {
            "patches": sinks,
            "cells": arrays["cells"][sinks].tolist() if sinks else [],
            "scores": [float(score[p]) for p in sinks],
            "top": [{"patch": int(p), "cell": arrays["cells"][p].tolist(),
                     "score": float(score[p])} for p in order],
            "chance": float(max(1, math.ceil(config.top_share * patches)) / patches),
        },
        "rules": {
            "map": "attention of a query row on the image's patch tokens, renormalised to sum 1; "
                   "question = mean of the question tokens' rows, last = the answer position's "
                   "row; heads averaged",
            "image_share": "attention of the row on all image tokens (of its total of 1)",
            "relevant": "patches overlapping the sample's mask (easy-VQA: the shape's pixels), "
                        "else its target boxes; samples without one are left out of region scores",
            "auroc": "P(a relevant patch outranks an irrelevant one), ties 1/2",
            "pointing": "1 when the map's maximum lies in the relevant region",
            "entropy": "entropy of the map / log(patches): 1 = uniform",
            "sink": f"a patch is high in a map when among its top {config.top_share:.0%} "
                    "patches; its sink score is the share of maps (every layer, both series) in "
                    "which it is high, over samples where it is not relevant; sinks have a score "
                    f">= {config.sink_threshold}",
            "sink_share": "share of the map on the sink patches",
            "trend": "last layer minus first layer, paired per sample, 95% bootstrap CI",
        },
    }
