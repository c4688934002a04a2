"""Layer-wise masking sweeps: at which layers does the image reach the answer?

    python -m analyses.layer_masking                      # tiny model, easy-VQA test
    python -m analyses.layer_masking --model llava --window 9 --limit 500

For every layer (or window of layers centred on it) and every flow (default
``image->question,last``: text tokens may not read image tokens) the flow is blocked and the
answer's next-token distribution compared with the clean run, per sample; a control that
blocks as many edges carrying no image into text, in the latest rows, shows what blocking
that many edges does without the image. Fusion layers and the late "review" follow from
stated rules (:mod:`analyses.layer_masking.findings`).

>>> from analyses.data import load_dataset
>>> from probes.models.loading import load_model
>>> result = run_layer_masking(load_model("tiny-llava"), load_dataset("easy-vqa", limit=4))
>>> result.summary["n_samples"], result.arrays["prob_change_pct"].shape  # answered right: 2 of 4
(2, (2, 2, 6))
"""

from analyses.layer_masking.findings import findings, review, series_names
from analyses.layer_masking.run import (
    DEFAULT_FLOWS,
    LayerMaskingConfig,
    run_layer_masking,
)
from analyses.layer_masking.sweep import METRICS, SampleSweep, sweep_sample

__all__ = [
    "DEFAULT_FLOWS",
    "METRICS",
    "LayerMaskingConfig",
    "SampleSweep",
    "findings",
    "review",
    "run_layer_masking",
    "series_names",
    "sweep_sample",
]
