"""Every analysis CLI, and ``evaluate``, runs on every tiny model family (tests/helpers.py
``TINY_FAMILIES``): a family is supported only when a researcher can point each command at it.

Each run is in-process on two easy-VQA samples; the assertions are on what the run recorded (the
family its adapter identified, the samples it finished, nothing failed) and on a value each
analysis exists to produce, so a family whose geometry or engine path breaks an analysis fails
here rather than on a user's GPU.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
from helpers import TINY_FAMILIES

from probes.cli import run_cli
from probes.models.loading import load_model

# analysis -> extra options (kept small: two samples, few steps)
ANALYSES = {
    "layer_masking": ["--all-samples"],  # random weights answer nothing correctly
    "token_importance": [],
    "attention_evolution": [],
    "contrastive_attention": [],
    "attenuation": [],
    "evaluate": [],
    "logit_lens": [],
    "train_vif": ["--steps", "2"],
}


def _headline(analysis: str, summary: dict, layers: int) -> None:
    """The value each analysis exists to produce is there and sized by the family's layers."""
    if analysis == "layer_masking":
        rows = summary["per_layer"]
        assert {row["layer"] for row in rows} == set(range(layers))
        assert all(math.isfinite(row["mean"]) for row in rows if row["mean"] is not None)
    elif analysis == "logit_lens":
        assert summary["num_layers"] == layers
    elif analysis == "evaluate":
        assert summary["results"], "evaluate recorded no result"
    elif analysis == "train_vif":
        assert summary["methods"], "train_vif evaluated no method"


@pytest.mark.parametrize("analysis", sorted(ANALYSES))
@pytest.mark.parametrize("model", TINY_FAMILIES)
def test_every_analysis_runs_on_every_tiny_family(model, analysis, tmp_path):
    main = importlib.import_module(f"analyses.{analysis}.__main__").main
    out = tmp_path / "run"
    argv = ["--model", model, "--device", "cpu", "--data", "easy-vqa", "--limit", "2",
            "--out", str(out), *ANALYSES[analysis]]
    assert run_cli(main, argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    loaded = load_model(model, device="cpu")
    assert summary["analysis"] == analysis
    assert summary["model"]["family"] == loaded.adapter.family
    assert summary["n_samples"] == 2
    assert not summary.get("failed"), summary.get("failed")
    _headline(analysis, summary, loaded.adapter.num_layers)
