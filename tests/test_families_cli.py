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
    "sinks": [],
    "train_vif": ["--steps", "2"],
    "heads": ["--all-samples"],
    # noise far above the image embeddings' scale changes random weights' answers, on some
    # fine-grained questions of every family (tiny Qwen2-VL: 2 of 8; on easy-VQA, none of 16,
    # whatever the corruption: its top token's margin exceeds the image's whole effect)
    "patching": ["--data", "fine-grained", "--limit", "8", "--corrupt", "noise",
                 "--noise-scale", "100", "--sites", "residual,attn,mlp,head"],
}


def _headline(analysis: str, summary: dict, layers: int, heads: int) -> None:
    """The value each analysis exists to produce is there and sized by the family's layers
    (and heads)."""
    every_head = {(layer, head) for layer in range(layers) for head in range(heads)}
    if analysis == "layer_masking":
        rows = summary["per_layer"]
        assert {row["layer"] for row in rows} == set(range(layers))
        assert all(math.isfinite(row["mean"]) for row in rows if row["mean"] is not None)
    elif analysis == "logit_lens":
        assert summary["num_layers"] == layers
    elif analysis == "sinks":
        rows = [row for row in summary["per_layer"] if row["series"] == "answer_first"]
        assert [row["layer"] for row in rows] == list(range(layers))
        assert all(0 <= row["mean"] <= 1 for row in rows)
        assert summary["max_sum_error"] < 1e-4  # each row's groups sum to 1
    elif analysis == "evaluate":
        assert summary["results"], "evaluate recorded no result"
    elif analysis == "train_vif":
        assert summary["methods"], "train_vif evaluated no method"
    elif analysis == "heads":
        rows = summary["heads"]
        assert len(rows) == layers * heads
        assert {(row["layer"], row["head"]) for row in rows} == every_head
        assert all(math.isfinite(row["drop"]) and math.isfinite(row["dla"]) for row in rows)
        assert summary["dla_check"]["max_abs_error"] < 1e-3  # the parts sum to the logits
    elif analysis == "patching":
        assert summary["n_used"] >= 1, "the corruption changed no answer"
        rows = summary["per_layer"]
        series = {(row["site"], row["group"]) for row in rows}
        assert series == {(site, group) for site in ("residual", "attn", "mlp")
                          for group in ("image", "question", "last")}
        assert len(rows) == len(series) * layers
        for site, group in series:
            mine = [row for row in rows if (row["site"], row["group"]) == (site, group)]
            assert [row["layer"] for row in mine] == list(range(layers))
            assert all(math.isfinite(row["mean"]) for row in mine)
        assert {(row["layer"], row["head"]) for row in summary["heads"]} == every_head


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
    limits = [argv[i + 1] for i, option in enumerate(argv) if option == "--limit"]
    assert summary["n_samples"] == int(limits[-1])  # the last --limit given wins
    assert not summary.get("failed"), summary.get("failed")
    _headline(analysis, summary, loaded.adapter.num_layers, loaded.adapter.num_heads)
