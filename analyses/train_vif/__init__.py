"""Train a VIF module (:mod:`probes.vif`) on a frozen model, and evaluate it against the clean
model on held-out data through the shared runner (:class:`VIFEvaluation`): accuracy with CIs
and a paired test, and the heatmaps' localisation.

    python -m analyses.train_vif                       # tiny model, 300 steps, fine-grained test
    python -m analyses.train_vif --load runs/train_vif/vif.safetensors --limit 500

>>> from analyses.data import load_dataset
>>> from probes.models.loading import load_model
>>> result, module = run_train_vif(load_model("tiny-llava"), load_dataset("easy-vqa", "train", limit=8),
...                        load_dataset("fine-grained", "train", limit=8),
...                        load_dataset("fine-grained", "test", limit=4),
...                        TrainConfig(steps=2, batch_size=4))
>>> [row["method"] for row in result.summary["methods"]], result.arrays["history_loss"].shape
(['clean', 'vif'], (2,))
"""

from analyses.train_vif.run import VIFEvaluation, VIFEvaluationConfig, run_train_vif
from analyses.train_vif.train import TrainConfig, evaluate_batch, loss_terms, train_vif

__all__ = ["TrainConfig", "VIFEvaluation", "VIFEvaluationConfig", "evaluate_batch", "loss_terms",
           "run_train_vif", "train_vif"]
