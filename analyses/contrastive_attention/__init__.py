"""Contrastive attention: what changes between an early fusion layer's map and a late layer's,
and the training-free refinement that suppresses the image regions with little shift.

    python -m analyses.contrastive_attention --data fine-grained --limit 300
    python -m analyses.contrastive_attention --layer-masking runs/layer_masking --mode hard

The rules (early layer, refinement layers, suppressed patches) are in
:mod:`analyses.contrastive_attention.contrast`; decoding again with the clean prefix reused in
:mod:`analyses.contrastive_attention.refine`.

>>> from analyses.data import load_dataset
>>> from probes.models.loading import load_model
>>> result = run_contrastive_attention(load_model("tiny-llava"),
...                                    load_dataset("fine-grained", limit=3),
...                                    ContrastiveConfig(n_bootstrap=100))
>>> [row["method"] for row in result.summary["methods"]], result.summary["layers"]["late"]
(['clean', 'refined', 'random_control'], 5)
"""

from analyses.contrastive_attention.contrast import (
    choose_early_layer,
    contrastive_map,
    early_candidates,
    last_quarter,
    least_shift,
)
from analyses.contrastive_attention.refine import (
    Suppression,
    refined_generate,
)
from analyses.contrastive_attention.run import (
    ContrastiveAttention,
    ContrastiveConfig,
    read_layer_masking,
    resolve_layers,
    run_contrastive_attention,
)

__all__ = [
    "ContrastiveAttention",
    "ContrastiveConfig",
    "Suppression",
    "choose_early_layer",
    "contrastive_map",
    "early_candidates",
    "last_quarter",
    "least_shift",
    "read_layer_masking",
    "refined_generate",
    "resolve_layers",
    "run_contrastive_attention",
]
