"""``make gpu-check``: the engine against independent references on the real 7B architectures, in
bfloat16 on one CUDA GPU, under several sdpa backends, and the benchmark table at those shapes.

    make gpu-check [PY=python3]       (or: python -m tests.gpu_check [--family F] [--out DIR])
    scripts/gpu-check-all.sh          (one device call: the three families, each in its own
                                       process and time limit, rows into $OUT)

Never part of ``make test``. Without CUDA it says so in one sentence and exits 2; ``--device
cpu --tiny`` runs every path on the tiny zoo models in float32. It runs in the Python it is
started with (a CUDA torch already installed; nothing is installed) and prints the environment
first: torch, CUDA, cuDNN, transformers, the GPU, its free memory, the sdpa switches.

With a GPU it builds LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf), LLaVA-NeXT-7B
(llava-hf/llava-v1.6-mistral-7b-hf) and Qwen2.5-VL-7B-Instruct from their published configs
with random bfloat16 weights made on the GPU, one model at a time, each freed before the next:
nothing is downloaded. The processors are the tiny zoo's (a word tokenizer, the LLaVA-1.5 /
ChatML chat templates) with the real checkpoints' image settings, so image token counts are the
real ones and text token counts are close to them.

Each family's parts, in order, each guarded (an out-of-memory error or any failure is a row
saying so, and the run goes on) and each written as it finishes (``OUT/<family>.jsonl``, one
JSON row a line; printed and flushed): the build; per sdpa backend (default: PyTorch's choice,
efficient, math) the kernels its clean, masked and executor calls took and the checks of
:mod:`.checks`, each with its deviation, tolerance, margin and what a one-layer shift would
show; then the benchmarks of :mod:`.bench` (one warm-up, 5 timed runs: median and spread; peak
memory in a run of its own).

The tolerances are relative (logits per condition to the reference row's largest |logit|,
attention per row to the row's largest probability): float32 1e-5 / 1e-4, bfloat16 0.05 / 0.15.
The bfloat16 ones are set from bfloat16's rounding (2**-9 per operation) over 28-32 layers at the
real widths; the first GPU run's margins are what will tell. Every check's ability to fail (a
knockout or a map one layer off, a mask not applied) is shown in ``tests/test_gpu_check.py`` on
the tiny models at the bfloat16 tolerances.

The largest shapes: LLaVA-NeXT at 644x476 (2,340 image tokens; eager ``output_attentions`` is
32 x 32 x 2,379^2 bf16 = 11.6 GB) and Qwen2.5-VL's recording benchmark at 1764x1764 (3,969 image
tokens: 28 x 28 x 4,020^2 bf16 = 25 GB); with the 16.6 GB model, an estimated 45 GB at peak: one
80 GB GPU (a GPU under 60 GiB is refused in one sentence).
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])  # bench_engine, the adapter tests' configs
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
