"""Entropy-based token importance and Adaptive Information Flow decoding (AIF, arXiv
2604.15809): which image tokens does the text need, and does cutting the others off help?

    python -m analyses.token_importance                       # tiny model, easy-VQA test
    python -m analyses.token_importance --data fine-grained --limit 300

:func:`aif_generate` answers one question with AIF and returns every diagnostic (token
dynamics, entropies, mu, the S-curve and the chosen ratio, the mask);
:func:`run_token_importance` compares clean decoding, AIF and the paper's ablations on a dataset.
"""

from analyses.token_importance.aif import (
    AIFConfig,
    AIFResult,
    Prepared,
    TokenImportance,
    aif_generate,
    decode,
    knockout,
    prepare,
    profile,
)
from analyses.token_importance.dynamics import (
    DEFAULT_RATIOS,
    RatioScan,
    curve_entropy,
    distribution_entropy,
    mask_count,
    mask_order,
    mean_attention,
    object_recall,
    scan_ratios,
)

__all__ = [
    "DEFAULT_RATIOS",
    "AIFConfig",
    "AIFResult",
    "Prepared",
    "RatioScan",
    "TokenImportance",
    "aif_generate",
    "curve_entropy",
    "decode",
    "distribution_entropy",
    "knockout",
    "mask_count",
    "mask_order",
    "mean_attention",
    "object_recall",
    "prepare",
    "profile",
    "scan_ratios",
]
