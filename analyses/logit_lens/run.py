"""A logit lens run over a dataset: the per-sample lens (:mod:`analyses.logit_lens.measure`),
per-layer means with bootstrap CIs for all samples, the correctly answered ones and each
question kind, the emergence layers, the image tokens' region shares, optionally the fusion
layers of a layer masking run of the same model and data beside them, and the result
(``summary.json`` + ``arrays.npz``).

**Runner.** Each sample's record depends only on (model, sample), so a resumed run, shards
merged or a Ray run give the files of an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from analyses.logit_lens.measure import IMAGE_SERIES, measure_sample
from analyses.results import SUMMARY, RunResult, provenance, skip
from analyses.runner import Analysis, Pass, RunInfo
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci
from probes import engines
from probes.engine import Engine
from probes.errors import UserError
from probes.masking import check_layers

ANALYSIS = "logit_lens"
SAMPLES = "samples"
EXAMPLE_PIXELS = 256  # the example image is stored with its longer side at most this
SERIES = ("answer_prob", "answer_rank", "answer_top1",
          *(f"{name}_names_answer" for name in IMAGE_SERIES))
EMERGENCE = ("first_top1", "settled")


@dataclass(frozen=True)
class LensConfig:
    """What decides the numbers (all of it goes into ``summary.json``). ``layer_masking``:
    what :func:`read_layer_masking` read of a layer masking run, shown beside the lens."""

    figure_layers: tuple[int, ...] | None = None  # None: up to 4 evenly spaced layers
    n_bootstrap: int = 2000
    seed: int = 0
    engine: Engine = engines.DEFAULT  # any of probes.engines: the same numbers
    layer_masking: dict | None = None

    def __post_init__(self) -> None:  # an engine's name (as recorded) is that engine
        object.__setattr__(self, "engine", engines.named(self.engine))

    def validate(self, num_layers: int) -> None:
        if self.n_bootstrap < 1:
            raise UserError(f"--bootstrap must be at least 1, not {self.n_bootstrap}.")
        if self.figure_layers is not None:
            check_layers(self.figure_layers, num_layers)
        if self.layer_masking is not None and self.layer_masking["num_layers"] != num_layers:
            raise UserError(f"the layer masking run {self.layer_masking['run']} is of a model "
                            f"with {self.layer_masking['num_layers']} layers, this one has "
                            f"{num_layers}; give a run of the same model.")

    def layers_to_show(self, num_layers: int) -> list[int]:
        if self.figure_layers is not None:
            return sorted(set(self.figure_layers))
        return sorted({int(round(v)) for v in np.linspace(0, num_layers - 1, min(4, num_layers))})


def read_layer_masking(run: str | Path, model_id: str, data: Mapping[str, Any]) -> dict:
    """The fusion layers (overall and by kind) of the layer masking run in ``run``, refused in
    one sentence when it is no finished layer masking run, or one of another model or of other
    data than ``model_id`` and ``data`` (a :func:`~analyses.common.data_record`: name, split)."""
    path = Path(run) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"--layer-masking {run}: no readable {SUMMARY} there; give the --out "
                        "directory of a finished `python -m analyses.layer_masking` run.") from None
    if not isinstance(summary, dict) or summary.get("analysis") != "layer_masking":
        found = summary.get("analysis") if isinstance(summary, dict) else None
        raise UserError(f"--layer-masking {run} is {'a ' + str(found) if found else 'no'} "
                        "run, not a layer masking run.")
    if summary.get("shard"):
        raise UserError(f"--layer-masking {run} is one shard ({summary['shard']}); merge the "
                        "shards with `python -m analyses.merge` and give the merged run.")
    theirs = summary["model"]["id"]
    if theirs != model_id:
        raise UserError(f"--layer-masking {run} is a run of the model {theirs}, not {model_id}; "
                        "give a run of the same model.")
    where = (summary["data"]["name"], summary["data"]["split"])
    if where != (data["name"], data["split"]):
        raise UserError(f"--layer-masking {run} is a run on {where[0]}/{where[1]}, not on "
                        f"{data['name']}/{data['split']}; give a run on the same data.")
    return {"run": str(run), "fusion_layers": [int(v) for v in summary["fusion_layers"]],
            "flow": summary["flows"][0], "n": int(summary["n_samples"]),
            "num_layers": int(summary["num_layers"]),
            "fingerprint": summary["data"]["fingerprint"],
            "fusion_layers_by_kind": {kind: row["fusion_layers"] for kind, row in
                                      summary.get("fusion_layers_by_kind", {}).items()}}


class LogitLens(Analysis):
    """One clean forward per sample read through the lens, plus its grading."""

    name = ANALYSIS
    passes = (Pass(SAMPLES, description="logit lens"),)

    def __init__(self, config: LensConfig = LensConfig()) -> None:
        self.config = config

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> LogitLens:
        layers = recorded.get("figure_layers")
        return cls(LensConfig(**{**recorded, "figure_layers": None if layers is None
                                 else tuple(layers)}))

    def recorded(self) -> dict[str, Any]:
        return engines.recorded_config(self.config)

    def validate(self, num_layers: int) -> None:
        self.config.validate(num_layers)

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        return [measure_sample(loaded, sample, self.config.engine) for sample in samples]

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        rows = records[SAMPLES]
        arrays = stack_records(rows)
        arrays.update(example_arrays(rows, info.dataset))
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), self.recorded(),
                             self.config.seed)
        summary.update(summarize(arrays, self.config, info.num_layers, info.data))
        for part, reason in skipped_parts(arrays):
            skip(summary, part, reason)
        summary["timing"] = info.timing
        return RunResult(summary, arrays)

    def table(self, summary) -> str:
        from analyses.logit_lens.table import format_table

        return format_table(summary)


def stack_records(rows: Records) -> dict[str, np.ndarray]:
    """The per-sample arrays; the image tokens' top ids (samples may have different numbers of
    image tokens) concatenated, sample s's at ``image_offsets[s]:image_offsets[s + 1]``; every
    token id the arrays hold with its text (``token_ids``, ``token_text``)."""
    values = list(rows.values())
    counts = [row["image_top1"].shape[1] for row in values]
    vocab: dict[int, str] = {}
    for row in values:
        vocab.update(zip(row["vocab_ids"].tolist(), row["vocab_text"].tolist()))
    ids = sorted(vocab)
    return {
        "sample_index": np.array(list(rows), dtype=np.int64),
        "sample_id": np.array([str(row["sample_id"]) for row in values]),
        "kind": np.array([str(row["kind"]) for row in values]),
        "correct": np.array([bool(row["correct"]) for row in values]),
        "has_region": np.array([bool(row["has_region"]) for row in values]),
        "answer_token": np.array([int(row["answer_token"]) for row in values], dtype=np.int64),
        **{name: np.stack([row[name] for row in values]) for name in
           ("answer_prob", "answer_rank", "names_answer")},
        **{name: np.array([int(row[name]) for row in values], dtype=np.int64)
           for name in EMERGENCE},
        "image_top1": np.concatenate([row["image_top1"].T for row in values]).astype(np.int32),
        "image_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "image_cells": np.concatenate([row["image_cells"] for row in values]).astype(np.int16),
        "in_box": np.concatenate([row["in_box"] for row in values]).astype(bool),
        "token_ids": np.array(ids, dtype=np.int64),
        "token_text": np.array([vocab[i] for i in ids]),
    }


def example_arrays(rows: Records, dataset) -> dict[str, np.ndarray]:
    """The sample the image-token figure shows: the first (by index) answered correctly with a
    region, else the first with a region, else the first; its image (longer side at most
    :data:`EXAMPLE_PIXELS`) and its image tokens' boxes in that image's pixels."""
    order = sorted(rows)
    chosen = next((i for i in order if rows[i]["correct"] and rows[i]["has_region"]),
                  next((i for i in order if rows[i]["has_region"]), order[0]))
    image = dataset[chosen].image.convert("RGB")
    scale = min(1.0, EXAMPLE_PIXELS / max(image.size))
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BILINEAR)
    return {"example_index": np.array(chosen, dtype=np.int64),
            "example_image": np.asarray(image, dtype=np.uint8),
            "example_boxes": rows[chosen]["boxes"].astype(np.float64) * scale}


def subsets(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sample masks: ``all``, ``correct`` and, when there are several kinds, ``kind:K``."""
    masks = {"all": np.ones(arrays["correct"].size, dtype=bool), "correct": arrays["correct"]}
    kinds = sorted(set(arrays["kind"].tolist()))
    if len(kinds) > 1:
        masks.update({f"kind:{kind}": arrays["kind"] == kind for kind in kinds})
    return masks


def series_values(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[samples, layers] per series of :data:`SERIES` (NaN where a sample has no value)."""
    values = {"answer_prob": arrays["answer_prob"],
              "answer_rank": arrays["answer_rank"].astype(np.float64),
              "answer_top1": (arrays["answer_rank"] == 0).astype(np.float64)}
    for k, name in enumerate(IMAGE_SERIES):
        values[f"{name}_names_answer"] = arrays["names_answer"][:, k]
    return values


def mean_rows(values: np.ndarray, n_bootstrap: int, seed: int) -> list[tuple]:
    """Per layer of ``values`` [samples, layers]: (mean, CI low, CI high, n) over the samples
    with a value at every layer."""
    defined = values[np.isfinite(values).all(1)]
    mean, low, high = bootstrap_mean_ci(defined, n_bootstrap, seed)
    return [(float(m), float(lo), float(hi), int(defined.shape[0]))
            for m, lo, hi in zip(np.atleast_1d(mean), np.atleast_1d(low), np.atleast_1d(high))]


def per_layer_rows(arrays, masks, num_layers: int, n_bootstrap: int, seed: int) -> list[dict]:
    """``{series, subset, layer, mean, ci_low, ci_high, n}``; a subset or series without a
    sample gives NaN rows with n = 0."""
    rows = []
    for series, values in series_values(arrays).items():
        for subset, mask in masks.items():
            chosen = values[mask] if mask.any() else np.zeros((0, num_layers))
            for layer, (mean, low, high, n) in enumerate(
                    mean_rows(chosen, n_bootstrap, seed) if chosen.size
                    else [(np.nan, np.nan, np.nan, 0)] * num_layers):
                rows.append({"series": series, "subset": subset, "layer": layer, "mean": mean,
                             "ci_low": low, "ci_high": high, "n": n})
    return rows


def box_difference(arrays, masks, n_bootstrap: int, seed: int) -> list[dict]:
    """Per subset and layer: in-box share - out-of-box share, paired per sample, with its CI."""
    names = arrays["names_answer"]
    difference = names[:, 1] - names[:, 2]
    rows = []
    for subset in ("all", "correct"):
        chosen = difference[masks[subset]]
        for layer, (mean, low, high, n) in enumerate(mean_rows(chosen, n_bootstrap, seed)):
            rows.append({"subset": subset, "layer": layer, "difference": mean, "ci_low": low,
                         "ci_high": high, "n": n})
    return rows


def emergence_rows(arrays, masks, num_layers: int, n_bootstrap: int, seed: int) -> list[dict]:
    """Per measure (``first_top1``, ``settled``) and subset: the count of samples per layer,
    the mean layer with its CI and the median (samples where it never happens counted apart)."""
    rows = []
    for measure in EMERGENCE:
        for subset, mask in masks.items():
            layers = arrays[measure][mask]
            found = layers[layers >= 0]
            mean, low, high = bootstrap_mean_ci(found.astype(np.float64), n_bootstrap, seed)
            rows.append({"measure": measure, "subset": subset,
                         "counts": np.bincount(found, minlength=num_layers).tolist(),
                         "never": int((layers < 0).sum()), "mean": float(mean),
                         "ci_low": float(low), "ci_high": float(high),
                         "median": float(np.median(found)) if found.size else float("nan"),
                         "n": int(layers.size)})
    return rows


def beside_fusion(arrays, config: LensConfig, data: Mapping[str, Any]) -> dict | None:
    """The lens beside the layer masking run's fusion layers: how many correctly answered
    samples have the answer on top (first, settled) before, within or after the fusion band
    (first .. last fusion layer)."""
    masking = config.layer_masking
    if masking is None:
        return None
    fusion = masking["fusion_layers"]
    compared = {**masking, "same_samples": masking["fingerprint"] == data["fingerprint"]}
    if not fusion:
        return {**compared, "relation": "the layer masking run found no fusion layer"}
    for measure in EMERGENCE:
        layers = arrays[measure][arrays["correct"]]
        layers = layers[layers >= 0]
        compared[measure] = {
            "n": int(layers.size),
            "before_fusion": int((layers < min(fusion)).sum()),
            "within_fusion": int(((layers >= min(fusion)) & (layers <= max(fusion))).sum()),
            "after_fusion": int((layers > max(fusion)).sum()),
        }
    return compared


def skipped_parts(arrays: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    parts = []
    if not arrays["has_region"].any():
        parts.append(("in_box and out_box shares", "no sample has a visible region (a box or "
                      "a mask); their rows are NaN with n = 0"))
    if not arrays["correct"].any():
        parts.append(("correct subset", "the model answers no sample correctly; its rows are "
                      "NaN with n = 0"))
    return parts


def summarize(arrays: dict[str, np.ndarray], config: LensConfig, num_layers: int,
              data: Mapping[str, Any]) -> dict[str, Any]:
    masks = subsets(arrays)
    return {
        "axes": {"answer_prob": ["sample", "layer"], "answer_rank": ["sample", "layer"],
                 "names_answer": ["sample", "image,in_box,out_box", "layer"],
                 "image_top1": ["image token (all samples)", "layer"],
                 "image_cells": ["image token (all samples)", "grid,row,col"],
                 "example_boxes": ["image token", "x0,y0,x1,y1"]},
        "series": list(SERIES),
        "num_layers": num_layers,
        "subsets": {name: int(mask.sum()) for name, mask in masks.items()},
        "n_correct": int(arrays["correct"].sum()),
        "n_with_region": int(arrays["has_region"].sum()),
        "figure_layers": config.layers_to_show(num_layers),
        "per_layer": per_layer_rows(arrays, masks, num_layers, config.n_bootstrap, config.seed),
        "in_minus_out": box_difference(arrays, masks, config.n_bootstrap, config.seed),
        "emergence": emergence_rows(arrays, masks, num_layers, config.n_bootstrap, config.seed),
        "layer_masking": beside_fusion(arrays, config, data),
        "rules": {
            "lens": "the residual stream after layer l at a position, through the model's "
                    "final norm and unembedding; at the last layer the model's own output",
            "answer": "the first token of the model's reply (its top token at last); correct: "
                      "the reply graded by the sample's scoring rule",
            "rank": "tokens with a strictly higher logit (0 = top)",
            "first_top1": "the first layer where the answer is the top token at last",
            "settled": "the first layer from which the answer stays the top token",
            "names_answer": "share of image tokens whose top token is the answer token: all "
                            "image patches, those inside the region (object), those outside "
                            "(background: the control)",
            "fusion": "beside a layer masking run: emergence before, within or after the band "
                      "of its fusion layers (first..last), over the correctly answered samples",
        },
    }
