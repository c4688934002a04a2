"""Every analysis the runner knows, by the name it writes into ``summary.json``: how
``analyses.merge`` and remote workers rebuild an analysis from its recorded config."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from analyses.runner.spec import Analysis
from probes.errors import UserError

ANALYSES = {
    "layer_masking": "analyses.layer_masking.run:LayerMasking",
    "token_importance": "analyses.token_importance.run:TokenImportance",
    "attention_evolution": "analyses.attention_evolution.run:AttentionEvolution",
    "contrastive_attention": "analyses.contrastive_attention.run:ContrastiveAttention",
    "attenuation": "analyses.attenuation.run:Attenuation",
    "train_vif": "analyses.train_vif.run:VIFEvaluation",
    "evaluate": "analyses.evaluate.run:Evaluate",
    "logit_lens": "analyses.logit_lens.run:LogitLens",
}


def analysis_class(name: str) -> type[Analysis]:
    if name not in ANALYSES:
        raise UserError(f"unknown analysis {name!r}; known: {', '.join(sorted(ANALYSES))}.")
    module, _, attribute = ANALYSES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def rebuild(name: str, recorded: Mapping[str, Any]) -> Analysis:
    """The analysis ``name`` with the config it recorded (``Analysis.from_recorded``)."""
    return analysis_class(name).from_recorded(dict(recorded))
