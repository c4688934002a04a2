"""Memory of attention evolution over all layers on a Qwen2.5-VL-shaped input of about 4,000
tokens (28 layers), against the recorder's own figure (tests/bench_engine.py's recording
benchmark: question rows x image keys, every head) and eager ``output_attentions``.

    python tests/bench_attention_evolution.py

Each measurement runs in a fresh process; peak RSS above the loaded model. Prints a table and
merges its rows into bench-results.json. `make test` runs it only in smoke mode
(``FUSIONLENS_BENCH_SMOKE=1``: 2 layers, a few tokens).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import QUESTION, QWEN_IMAGE, _rss_kb, qwen_25_vl_shape, report  # noqa: E402

from analyses.attention_evolution import record_sample  # noqa: E402
from analyses.data import Box, Sample  # noqa: E402
from probes import attention  # noqa: E402
from probes.models.loading import load_model  # noqa: E402
from probes.record import AttentionRecorder  # noqa: E402
from probes.tokens import token_groups  # noqa: E402


def child(directory: str, how: str) -> None:
    torch.set_num_threads(1)
    loaded = load_model(directory, attn_implementation="eager" if how == "eager" else "sdpa")
    image = Image.new("RGB", (QWEN_IMAGE, QWEN_IMAGE), (200, 30, 30))
    sample = Sample(id="bench", image=image, question=QUESTION, answer="red", kind="color",
                    boxes=(Box(0, 0, 400, 400),), target=(0,), mask=None, dataset="bench")
    inputs = loaded.adapter.build_inputs([image], [QUESTION])
    groups = token_groups(loaded.adapter, inputs)
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        if how == "evolution":
            maps = record_sample(loaded, sample, keep_clean=False)[0]
            layers = maps.maps.shape[1]
        elif how == "recorder":
            recorder = AttentionRecorder(queries=groups.question, keys=groups.image)
            attention.enable(loaded.model)
            with attention.attach(loaded.adapter.attention_modules(loaded.model), recorder):
                loaded.model(**inputs.batch)
            layers = len(recorder.maps)
        else:
            output = loaded.model(**inputs.batch, output_attentions=True)
            layers = len(output.attentions)
    sys.stdout.write(json.dumps({"how": how, "seconds": time.perf_counter() - start,
                                 "peak_mb": (_rss_kb("VmHWM") - base) / 1024, "layers": layers,
                                 "tokens": int(inputs.input_ids.shape[1])}) + "\n")


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "qwen"
        qwen_25_vl_shape(directory)
        runs = {}
        for how in ("recorder", "evolution", "eager"):
            done = subprocess.run([sys.executable, __file__, "--child", str(directory), how],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            runs[how] = json.loads(done.stdout.strip().splitlines()[-1])
    evolution = runs["evolution"]
    shape = f"{evolution['layers']} layers, {evolution['tokens']} tokens, every head"
    rows = []
    for how, what in (("eager", "eager output_attentions"),
                      ("recorder", "the recorder's question rows x image keys")):
        other = runs[how]
        rows += [{"name": f"attention evolution, all layers: peak memory vs {what}",
                  "baseline": other["peak_mb"], "ours": evolution["peak_mb"], "unit": "MB",
                  "ratio": other["peak_mb"] / evolution["peak_mb"],
                  "shape": shape + " (peak RSS above the loaded model)"},
                 {"name": f"attention evolution, all layers: time vs {what}",
                  "baseline": other["seconds"], "ours": evolution["seconds"], "unit": "s",
                  "ratio": other["seconds"] / evolution["seconds"], "shape": shape}]
    report(rows)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
