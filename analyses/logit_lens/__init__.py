"""The logit lens: when the answer appears in the residual stream, and which image tokens
name it.

    python -m analyses.logit_lens                                  # tiny model, easy-VQA test
    python -m analyses.logit_lens --layer-masking runs/layer_masking  # fusion layers beside it

Each sample's residual stream after every layer is read at ``last`` and at every image token
through the model's own final norm and unembedding (:mod:`probes.logit_lens`): the answer's
probability and rank per layer, the layer where it becomes the top token, and the share of
image tokens inside vs outside the question's region whose top token is the answer
(:mod:`analyses.logit_lens.measure`); means with bootstrap CIs per layer
(:mod:`analyses.logit_lens.run`).

>>> from analyses.data import load_dataset
>>> from analyses.runner import LocalBackend, run
>>> from probes.models.loading import load_model
>>> result = run(LogitLens(LensConfig(n_bootstrap=100)), LocalBackend(load_model("tiny-llava")),
...              load_dataset("easy-vqa", limit=3))
>>> result.arrays["answer_prob"].shape, result.summary["n_with_region"]
((3, 6), 3)
"""

from analyses.logit_lens.measure import measure_sample
from analyses.logit_lens.run import LensConfig, LogitLens, read_layer_masking

__all__ = ["LensConfig", "LogitLens", "measure_sample", "read_layer_masking"]
