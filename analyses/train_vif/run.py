"""A VIF run: train (or take) the module and save its weights, then evaluate it against the
clean model through the shared runner (:mod:`analyses.runner`), and summarise into a
:class:`~analyses.results.RunResult` (``methods`` rows as every method comparison).

Training is one step before the runner (it is no loop over the evaluated samples). The
evaluation, :class:`VIFEvaluation`, measures units of ``batch_size`` consecutive samples (the
batches the clean and the VIF answers are generated in) and needs the trained module in every
worker: its config records the saved ``vif.safetensors`` (absolute path and sha256: a changed
file is another run), which each worker loads once and checks, and the module's training
record (history, data), which the summary reports. So a resumed run, shards merged
(``analyses.merge``) or a Ray run give the result of one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analyses.common import data_record
from analyses.results import RunResult, provenance, skip
from analyses.runner import Analysis, LocalBackend, Pass, RunInfo, RunOptions, run
from analyses.runner.spec import Records
from analyses.stats import bootstrap_mean_ci, method_rows, wilson_interval
from analyses.train_vif.train import TrainConfig, evaluate_batch, freeze, train_vif
from probes.errors import UserError
from probes.models.loading import LoadedModel
from probes.vif import VIF, VIFConfig

ANALYSIS = "train_vif"
SAMPLES = "samples"
WEIGHTS = "vif.safetensors"
EVAL_BATCH = 64  # samples answered together (the runner's unit; float rounding may depend on it)
EXAMPLES = 8  # heatmaps kept for the figure
METHODS = ("clean", "vif")
HISTORY = ("loss", "nll", "kl", "sparsity")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_record(trained_here: bool, seconds: float, easy_train, fine_train,
                    history: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """How the module came to be, as the summary reports it: trained in this run (its
    per-step history and wall time) or given (no history), and the training data."""
    history = history or {name: np.zeros(0) for name in HISTORY}
    return {"trained_here": bool(trained_here), "seconds": float(seconds),
            "data": [data_record(easy_train), data_record(fine_train)],
            "history": {name: [float(v) for v in np.asarray(history[name])] for name in HISTORY}}


@dataclass(frozen=True)
class VIFEvaluationConfig:
    """What decides an evaluation's numbers: the module's training config (``vif``: the
    module's own config), its saved weights (path and sha256), what the summary says of the
    module and of its training, and the samples answered together."""

    train: TrainConfig = field(default_factory=TrainConfig)
    weights: str | None = None  # absolute path of the saved vif.safetensors
    weights_sha256: str | None = None
    module: dict[str, Any] | None = None  # the summary's "vif": layers, parameters, alpha, rows
    training: dict[str, Any] | None = None  # training_record
    batch_size: int = EVAL_BATCH

    def recorded(self) -> dict[str, Any]:
        """The training config's keys (what ``summary.json`` shows as ``config``) and the
        evaluation's own."""
        return {**asdict(self.train), "eval_batch_size": self.batch_size,
                "weights": self.weights, "weights_sha256": self.weights_sha256,
                "module": self.module, "training": self.training}

    @classmethod
    def from_recorded(cls, recorded: Mapping[str, Any]) -> VIFEvaluationConfig:
        """From :meth:`recorded` (or from a summary's ``config``: the training config alone,
        which is enough for the table but not to measure)."""
        values = dict(recorded)
        own = {"batch_size": values.pop("eval_batch_size", EVAL_BATCH),
               **{name: values.pop(name, None) for name in ("weights", "weights_sha256",
                                                             "module", "training")}}
        vif = values.pop("vif", None)
        vif = VIFConfig() if vif is None else VIFConfig.from_json(json.dumps(vif))
        return cls(train=TrainConfig(**values, vif=vif), **own)


def module_description(module: VIF) -> dict[str, Any]:
    return {"learn_layers": list(module.learn_layers), "apply_layers": list(module.apply_layers),
            "parameters": int(sum(p.numel() for p in module.parameters())),
            "alpha": module.config.alpha, "rows": module.config.rows}


def load_module(path: str | Path, sha256: str | None, loaded: LoadedModel | None) -> VIF:
    """The saved module at ``path``, refused when its file is not the one recorded."""
    module = VIF.load(path, loaded)  # a missing file or another model shape: its own error
    if sha256 is not None and file_sha256(path) != sha256:
        raise UserError(f"{path} changed since this run recorded it (another sha256); evaluate "
                        "the new file as a new run (another --out, or --overwrite).")
    return module


class VIFEvaluation(Analysis):
    """Clean vs VIF answers and the heatmaps' localisation, a batch of samples at a time."""

    name = ANALYSIS

    def __init__(self, config: VIFEvaluationConfig = VIFEvaluationConfig()) -> None:
        self.config = config
        self.passes = (Pass(SAMPLES, batch=config.batch_size, description="answering with VIF"),)
        self._module: VIF | None = None  # loaded once per worker, never pickled

    @classmethod
    def for_weights(cls, path: str | Path, config: TrainConfig, training: dict[str, Any],
                    loaded: LoadedModel | None = None,
                    batch_size: int = EVAL_BATCH) -> VIFEvaluation:
        """The evaluation of the module saved at ``path`` (trained with ``config``; its
        ``training_record``)."""
        path = Path(path).resolve()
        module = VIF.load(path, loaded)
        return cls(VIFEvaluationConfig(train=replace(config, vif=module.config),
                                       weights=str(path), weights_sha256=file_sha256(path),
                                       module=module_description(module), training=training,
                                       batch_size=batch_size))

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> VIFEvaluation:
        return cls(VIFEvaluationConfig.from_recorded(recorded))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_module": None}

    def recorded(self) -> dict[str, Any]:
        return self.config.recorded()

    def validate(self, num_layers: int) -> None:
        self.config.train.validate(num_layers)
        if self.config.batch_size < 1:
            raise UserError(f"the evaluation's batch size must be at least 1, not "
                            f"{self.config.batch_size}.")

    def module(self, loaded: LoadedModel) -> VIF:
        """The trained module, loaded (and checked) on first use in this process."""
        if self.config.weights is None:
            raise UserError("this VIF evaluation records no weights file; build it with "
                            "VIFEvaluation.for_weights.")
        if self._module is None:
            self._module = load_module(self.config.weights, self.config.weights_sha256, loaded)
        return self._module

    def warm_up(self, loaded, dataset) -> None:
        self.module(loaded)  # a missing or changed file stops the run here, not per sample

    def measure(self, step, loaded, samples, indices, context) -> list[dict[str, Any]]:
        return evaluate_batch(loaded, self.module(loaded), samples)

    def aggregate(self, records: Mapping[str, Records], info: RunInfo) -> RunResult:
        found = records[SAMPLES]
        rows = list(found.values())
        clean = np.array([bool(r["clean"]) for r in rows], dtype=bool)
        vif = np.array([bool(r["vif"]) for r in rows], dtype=bool)
        kind = np.array([str(r["kind"]) for r in rows])
        per_sample = {name: np.array([float(r[name]) for r in rows])
                      for name in ("target_mass", "uniform_mass", "pointing")}
        history = {name: np.array(self.config.training["history"][name], dtype=float)
                   for name in HISTORY}
        arrays = {f"history_{name}": values for name, values in history.items()}
        arrays.update({"clean_correct": clean, "vif_correct": vif, "kind": kind, **per_sample})
        arrays.update(_examples(found, info.dataset))
        train = self.config.train
        summary = provenance(ANALYSIS, info.model, info.data, len(rows), asdict(train),
                             train.seed)
        correct = np.stack([clean, vif], axis=1)
        by_kind = method_rows(correct, METHODS, kinds=kind)[:-len(METHODS)]  # less "all"
        summary.update({
            "base_model": "frozen: only the VIF module is trained",
            "vif": dict(self.config.module),
            "training": _training_summary(self.config.training, history),
            "methods": method_rows(correct, METHODS),
            "methods_by_kind": by_kind,
            "localisation": _localisation(per_sample, train.seed),
            "timing": {**info.timing,
                       "evaluation_seconds": info.seconds_per_sample * len(rows)},
        })
        if not summary["localisation"]["n"]:
            skip(summary, "localisation", "no sample has a visible target: a box or a mask")
        return RunResult(summary, arrays)

    def table(self, summary) -> str:
        from analyses.train_vif.table import format_table

        return format_table(summary)


def _examples(found: Records, dataset) -> dict[str, np.ndarray]:
    """The first ``EXAMPLES`` samples' heatmaps (padded with NaN) and what the figure shows."""
    shown = list(found)[:EXAMPLES]
    if not shown:
        return {}
    width = max(found[i]["heatmap"].size for i in shown)
    heat = np.full((len(shown), width), np.nan)
    coords = np.full((len(shown), width, 2), np.nan)
    for k, i in enumerate(shown):
        heat[k, :found[i]["heatmap"].size] = found[i]["heatmap"]
        coords[k, :len(found[i]["coords"])] = found[i]["coords"]
    samples = [dataset[i] for i in shown]
    return {"example_heatmaps": heat, "example_coords": coords,
            "example_images": np.stack([np.asarray(s.image.convert("RGB")) for s in samples]),
            "example_questions": np.array([s.question for s in samples]),
            "example_answers": np.array([s.answer for s in samples])}


def _training_summary(training: Mapping[str, Any], history: Mapping[str, np.ndarray]) -> dict:
    window = max(1, min(20, history["loss"].size))
    return {"trained_here": training["trained_here"], "steps": int(history["loss"].size),
            "seconds": training["seconds"], "data": training["data"],
            **{f"{name}_first": float(values[:window].mean()) if values.size else None
               for name, values in history.items()},
            **{f"{name}_last": float(values[-window:].mean()) if values.size else None
               for name, values in history.items()}}


def _localisation(per_sample: Mapping[str, np.ndarray], seed: int) -> dict[str, Any]:
    target = per_sample["target_mass"]
    visible = np.isfinite(target)
    mass, mass_low, mass_high = bootstrap_mean_ci(target[visible], 2000, seed)
    hits = int(np.nansum(per_sample["pointing"]))
    point_low, point_high = wilson_interval(hits, int(visible.sum()))
    return {"n": int(visible.sum()), "target_mass": float(mass), "ci_low": float(mass_low),
            "ci_high": float(mass_high),
            "uniform_mass": float(np.nanmean(per_sample["uniform_mass"])) if visible.any()
            else None,
            "pointing": hits / int(visible.sum()) if visible.any() else float("nan"),
            "pointing_ci_low": point_low,
            "pointing_ci_high": point_high}


def save_module(module: VIF, path: Path) -> Path:
    """Save ``module`` at ``path`` unless the file there already holds it: safetensors writes
    its metadata in no fixed order, so saving the same module again would change the file's
    sha256, which names the run (a resumed run, or shards, would no longer match)."""
    if path.is_file():
        try:
            saved = VIF.load(path)
        except Exception:  # not a VIF file: replaced
            saved = None
        if (saved is not None and saved.config == module.config
                and (saved.hidden_size, saved.num_layers) == (module.hidden_size,
                                                              module.num_layers)
                and saved.state_dict().keys() == module.state_dict().keys()
                and all(torch.equal(value.cpu(), saved.state_dict()[name])
                        for name, value in module.state_dict().items())):
            return path
    return module.save(path)


def train_module(loaded: LoadedModel, easy_train, fine_train, config: TrainConfig,
                 progress: bool = False) -> tuple[VIF, dict[str, Any]]:
    """A fresh module trained on the frozen model, and its :func:`training_record`."""
    config.validate(loaded.adapter.num_layers)
    torch.manual_seed(config.seed)
    freeze(loaded)
    module = VIF.for_model(loaded, config.vif, seed=config.seed)
    started = time.perf_counter()
    history = train_vif(loaded, module, easy_train, fine_train, config, progress)
    return module, training_record(True, time.perf_counter() - started, easy_train, fine_train,
                                   history)


def run_train_vif(loaded: LoadedModel, easy_train, fine_train, test, config: TrainConfig,
                  module: VIF | None = None, batch_size: int = EVAL_BATCH,
                  progress: bool = False, out: Path | None = None, resume: bool = False,
                  shard: tuple[int, int] = (0, 1), weights: Path | None = None,
                  on_sample: Callable[[int], None] | None = None) -> tuple[RunResult, VIF]:
    """Train a fresh module (or take ``module`` as given), save it (to ``weights``, else
    ``out/vif.safetensors``, else a temporary file for the run) and evaluate it on ``test``
    in this process (see :mod:`analyses.runner` for ``out``, ``resume``, ``shard`` and
    ``on_sample``). A resumed run, and shards to be merged, evaluate one module trained once:
    pass it as ``module`` (with the same ``weights`` to every shard), since training again
    records another training time. Returns the result (the caller saves it) and the module."""
    config.validate(loaded.adapter.num_layers)
    if module is None:
        module, training = train_module(loaded, easy_train, fine_train, config, progress)
    else:
        freeze(loaded)
        training = training_record(False, 0.0, easy_train, fine_train)
    with tempfile.TemporaryDirectory(prefix="fusionlens-vif-") as scratch:
        path = Path(weights or (Path(out) / WEIGHTS if out is not None else
                                Path(scratch) / WEIGHTS))
        save_module(module, path)
        analysis = VIFEvaluation.for_weights(path, config, training, loaded, batch_size)
        result = run(analysis, LocalBackend(loaded), test,
                     RunOptions(out=out, resume=resume, shard=shard, progress=progress,
                                on_sample=on_sample))
    return result, module
