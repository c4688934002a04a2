"""How the text's attention on the image evolves across layers.

    python -m analyses.attention_evolution                       # tiny model, easy-VQA test
    python -m analyses.attention_evolution --data fine-grained --limit 300

Per layer, the attention of the question tokens and of ``last`` on the image's patches is
recorded exactly during the clean forward (:mod:`analyses.attention_evolution.maps`) and
scored against the region the question is about: the share of attention on image tokens, the
share of the map on the relevant region, AUROC and pointing, entropy
(:mod:`analyses.attention_evolution.scores`). Patches that stay high at most layers whatever the
question are *sinks* (persistent noise); their share of the map is tracked per layer.

>>> from analyses.data import load_dataset
>>> from probes.models.loading import load_model
>>> result = run_attention_evolution(load_model("tiny-llava"), load_dataset("easy-vqa", limit=3),
...                                  EvolutionConfig(n_bootstrap=100))
>>> result.arrays["maps"].shape, result.summary["n_patches"]
((3, 2, 6, 64), 64)
"""

from analyses.attention_evolution.maps import SERIES, SampleMaps, record_sample, relevant_patches
from analyses.attention_evolution.run import (
    METRICS,
    AttentionEvolution,
    EvolutionConfig,
    run_attention_evolution,
)
from analyses.attention_evolution.scores import (
    SCORES,
    auroc,
    map_scores,
    normalised_entropy,
    pointing,
    region_share,
    sink_patches,
    sink_scores,
)

__all__ = [
    "METRICS",
    "SCORES",
    "SERIES",
    "AttentionEvolution",
    "EvolutionConfig",
    "SampleMaps",
    "auroc",
    "map_scores",
    "normalised_entropy",
    "pointing",
    "record_sample",
    "region_share",
    "relevant_patches",
    "run_attention_evolution",
    "sink_patches",
    "sink_scores",
]
