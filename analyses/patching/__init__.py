"""Activation patching: which layers and token groups carry what a corruption of the input
changes, and restore the clean answer when patched back.

    python -m analyses.patching                            # tiny model, easy-VQA, image noise
    python -m analyses.patching --corrupt swap --sites residual,attn,mlp,head

Each sample is run clean and corrupted (:mod:`analyses.patching.corrupt`: a counterfactual
pair named by the data, Gaussian noise on the image embeddings, a blank image, another
sample's image); then, per (site, layer, token group) and per (layer, head), the clean
activations are put into the corrupt run (denoising; ``--direction noise``: the corrupt into
the clean) and the normalised logit difference between the two answers is measured
(:mod:`analyses.patching.measure`), averaged with bootstrap CIs (:mod:`analyses.patching.run`).

>>> from analyses.data import load_dataset
>>> from analyses.runner import LocalBackend, run
>>> from probes.models.loading import load_model
>>> result = run(Patching(PatchingConfig(n_bootstrap=100)), LocalBackend(load_model("tiny-llava")),
...              load_dataset("easy-vqa", limit=3))
>>> result.arrays["effect"].shape  # samples, sites, layers, groups
(3, 1, 6, 3)
"""

from analyses.patching.measure import measure_sample
from analyses.patching.run import Patching, PatchingConfig

__all__ = ["Patching", "PatchingConfig", "measure_sample"]
