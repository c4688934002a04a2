"""Head attribution: which attention heads carry the image to the answer.

    python -m analyses.heads                                  # tiny model, easy-VQA test
    python -m analyses.heads --flow 'image->question,last' --heads 3.1,4.0

Per sample and per (layer, head): the drop of the answer's probability when only that head's
edges of ``--flow`` are knocked out (:class:`~probes.masking.HeadKnockout`), against a
random-head control; each head's direct logit attribution at ``last``; each head's attention
share on the image (:mod:`analyses.heads.measure`); the key heads by a stated rule and the top
heads (:mod:`analyses.heads.run`).

>>> from analyses.data import load_dataset
>>> from analyses.runner import LocalBackend, run
>>> from probes.models.loading import load_model
>>> result = run(Heads(HeadsConfig(n_bootstrap=100)), LocalBackend(load_model("tiny-llava")),
...              load_dataset("easy-vqa", limit=2))
>>> result.arrays["prob_change_pct"].shape, result.summary["num_heads"]
((2, 6, 4), 4)
"""

from analyses.heads.measure import measure_sample
from analyses.heads.run import Heads, HeadsConfig

__all__ = ["Heads", "HeadsConfig", "measure_sample"]
