"""The fixed runs whose final files were saved from the code before the shared runner
(``tests/golden/<name>/``) and must stay equal after it (``tests/test_golden.py``).

    python tests/golden/runs.py        # rewrite the saved files (only when a change is meant)
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (module, arguments); small slices so the whole set runs in well under a minute
RUNS = {
    "layer_masking": ("analyses.layer_masking", ["--limit", "24", "--bootstrap", "200"]),
    "layer_masking_fine": ("analyses.layer_masking",
                           ["--data", "fine-grained", "--limit", "16", "--bootstrap", "200",
                            "--flows", "object->last;background->last"]),
    "token_importance": ("analyses.token_importance",
                         ["--limit", "6", "--timed-samples", "0", "--bootstrap", "200"]),
    "attention_evolution": ("analyses.attention_evolution",
                            ["--limit", "10", "--bootstrap", "200"]),
    "contrastive_attention": ("analyses.contrastive_attention",
                              ["--data", "fine-grained", "--limit", "8", "--ratio", "0.5",
                               "--bootstrap", "200"]),
    "attenuation": ("analyses.attenuation",
                    ["--data", "fine-grained", "--limit", "10", "--bootstrap", "200"]),
    "train_vif": ("analyses.train_vif", ["--limit", "12", "--steps", "3", "--batch-size", "8"]),
}


def run(name: str, out: Path, overwrite: bool = False) -> int:
    """Run one of :data:`RUNS` into ``out`` in this process (as its CLI would); ``overwrite``
    replaces a finished run there."""
    import importlib

    module, arguments = RUNS[name]
    main = importlib.import_module(f"{module}.__main__").main
    from probes.cli import run_cli

    return run_cli(main, [*arguments, "--out", str(out), *(["--overwrite"] if overwrite else [])])


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    for name in sys.argv[1:] or RUNS:
        code = run(name, HERE / name, overwrite=True)
        print(name, code)
