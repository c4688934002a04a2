"""Visual attenuation: per layer, how much the text reads the image and the region the
question is about, how much of the attention output the image's values make up, and when the
answer becomes likely (logit lens); for all samples and for small vs large targets.

    python -m analyses.attenuation                            # tiny model, easy-VQA test
    python -m analyses.attenuation --data fine-grained --limit 300

>>> from analyses.data import load_dataset
>>> from probes.models.loading import load_model
>>> result = run_attenuation(load_model("tiny-llava"), load_dataset("fine-grained", limit=4),
...                          AttenuationConfig(n_bootstrap=100))
>>> result.summary["n_samples"], result.arrays["curves"].shape
(4, (4, 8, 6))
"""

from analyses.attenuation.measure import METRICS, SampleCurves, answer_lens, measure_sample
from analyses.attenuation.run import AttenuationConfig, run_attenuation

__all__ = [
    "METRICS",
    "AttenuationConfig",
    "SampleCurves",
    "answer_lens",
    "measure_sample",
    "run_attenuation",
]
