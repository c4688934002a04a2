"""Attention sinks and visual sink tokens, per layer.

    python -m analyses.sinks                       # tiny model, easy-VQA test
    python -m analyses.sinks --model llava --tau 20 --limit 200

Per sample, one clean prefill: the attention of the answer position (``last``) and of the
question's rows onto the first prompt token (the classic text sink), the image tokens, the other
text before the image and the text after it; and the residual stream at every prompt token after
every layer, for massive activations: each token's max |h_d| / median |h_d|, the first token's
sink dimensions (|h_d| >= tau x RMS) and the image tokens that peak in them, the *visual sink
tokens* (Kang et al. 2025, "See What You Are Told"; Sun et al. 2024, "Massive activations")
(:mod:`analyses.sinks.measure`); means with bootstrap CIs per layer and two verdict lines
(:mod:`analyses.sinks.run`).

>>> from analyses.data import load_dataset
>>> from analyses.runner import LocalBackend, run
>>> from probes.models.loading import load_model
>>> result = run(Sinks(SinksConfig(n_bootstrap=100)), LocalBackend(load_model("tiny-llava")),
...              load_dataset("easy-vqa", limit=3))
>>> result.arrays["answer_share"].shape, result.summary["max_sum_error"] < 1e-5
((3, 6, 4), True)
"""

from analyses.sinks.measure import measure_sample
from analyses.sinks.run import Sinks, SinksConfig

__all__ = ["Sinks", "SinksConfig", "measure_sample"]
