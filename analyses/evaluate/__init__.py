"""Every benchmark under every method: the paper table.

    python -m analyses.evaluate --model qwen2.5-vl --data vstar,mmstar,textvqa \\
        --methods clean,aif,contrastive,oracle --max-pixels 1605632 --out runs/table

Each benchmark of ``--data`` is prompted for the model's family, every method replies to the
same samples (:mod:`analyses.evaluate.methods`), each reply is graded by
:func:`analyses.scoring.judge`, and the summary (:mod:`analyses.evaluate.summary`) gives per
benchmark each method's headline score with a 95% CI and its paired change from clean; the CLI
writes ``summary.json``, ``arrays.npz``, ``table.md``, ``table.tex`` and the figure
``evaluate_scores`` (PNG + PDF).
"""

from analyses.data.suite import Suite, benchmark_of, concatenate
from analyses.evaluate.config import EvaluateConfig, max_new_tokens
from analyses.evaluate.methods import METHODS, parse_methods
from analyses.evaluate.run import Evaluate

__all__ = ["METHODS", "Evaluate", "EvaluateConfig", "Suite", "benchmark_of", "concatenate",
           "max_new_tokens", "parse_methods"]
