"""Activation patching per sample: our sweep (the residual stream at every layer x token group
image / question / last, clean into the noised run, conditions batched on the shared prefix,
each joining at its layer) against the naive way (a plain PyTorch forward hook, one full
forward per condition, batch 1), side by side, with the same numbers checked.

    make bench        (or: python tests/bench_patching.py)

Prints a table and merges its rows into bench-results.json ({name, baseline, ours, unit,
ratio, shape}, ratio = baseline / ours). One thread, float32. `make test` runs it only in smoke
mode (``FUSIONLENS_BENCH_SMOKE=1``: a 2-layer LLaVA-1.5-shape model).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import QUESTION, llava_15_shape, report  # noqa: E402

from analyses.data import Sample  # noqa: E402
from analyses.patching import PatchingConfig, measure_sample  # noqa: E402
from analyses.patching.corrupt import noised, sample_seed  # noqa: E402
from probes.engines import named  # noqa: E402
from probes.models.loading import load_model  # noqa: E402
from probes.tokens import token_groups  # noqa: E402

CONFIG = PatchingConfig(corrupt="noise", sites=("residual",), batch_size=8)


@torch.inference_mode()
def naive_sweep(loaded, sample, index: int) -> np.ndarray:
    """The same effects the slow way: the clean run's hidden states, the noised run, then one
    full forward with a hook per (layer, group). [layers, groups]."""
    inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
    groups = token_groups(loaded.adapter, inputs)
    layers = loaded.adapter.decoder_layers(loaded.model)
    clean = loaded.model(**inputs.batch, output_hidden_states=True)
    states = clean.hidden_states
    embeddings = states[0][0, groups.image]
    noise = noised(embeddings, CONFIG.noise_scale, sample_seed(CONFIG.seed, index))

    def run(hooks) -> torch.Tensor:
        handles = [module.register_forward_pre_hook(hook) if pre else
                   module.register_forward_hook(hook) for module, pre, hook in hooks]
        try:
            return loaded.model(**inputs.batch, use_cache=False).logits[0, -1].double()
        finally:
            for handle in handles:
                handle.remove()

    def put(positions, values):
        def hook(module, args, output=None):
            if output is None:  # the embeddings, entering layer 0
                tensor = args[0].clone()
                tensor[0, positions] = values
                return (tensor, *args[1:])
            (output[0] if isinstance(output, tuple) else output)[0, positions] = values
            return None
        return hook

    corrupt_hook = (layers[0], True, put(groups.image, noise))
    corrupt = run([corrupt_hook])
    c, x = int(clean.logits[0, -1].argmax()), int(corrupt.argmax())
    if c == x:
        return np.full((len(layers), 3), np.nan)
    ld_clean = float(clean.logits[0, -1, c] - clean.logits[0, -1, x])
    ld_corrupt = float(corrupt[c] - corrupt[x])
    effect = np.zeros((len(layers), 3))
    for layer in range(len(layers)):
        for g, name in enumerate(CONFIG.groups):
            where = groups.get(name)
            patched = run([corrupt_hook, (layers[layer], False,
                                          put(where, states[layer + 1][0, where]))])
            effect[layer, g] = (float(patched[c] - patched[x]) - ld_corrupt) / (ld_clean - ld_corrupt)
    return effect


def bench(loaded, samples, label: str) -> list[dict]:
    ours_s = naive_s = 0.0
    worst = 0.0
    for index, sample in enumerate(samples):
        start = time.perf_counter()
        record = measure_sample(named("fast"), loaded, sample, CONFIG, index)
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        naive = naive_sweep(loaded, sample, index)
        naive_s += time.perf_counter() - start
        ours = record["effect"][0]
        if np.isfinite(naive).any() or np.isfinite(ours).any():
            worst = max(worst, float(np.nanmax(np.abs(ours - naive))))
    if not worst <= 1e-3:
        raise AssertionError(f"the patching sweep differs from the naive way by {worst}")
    n = len(samples)
    conditions = loaded.adapter.num_layers * len(CONFIG.groups)
    shape = (f"{loaded.adapter.num_layers} layers x {len(CONFIG.groups)} groups = {conditions} "
             f"conditions, {n} sample(s), max |effect diff| {worst:.1e}")
    return [{"name": f"activation patching, one sample: residual at every layer x group "
                     f"({label})", "baseline": naive_s / n, "ours": ours_s / n,
             "unit": "s/sample", "ratio": naive_s / ours_s, "shape": shape}]


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        llava_15_shape(Path(directory))
        loaded = load_model(directory)
        samples = [Sample(id=f"bench/{k}", image=Image.new("RGB", (336, 336), colour),
                          question=QUESTION, answer="", kind="bench", boxes=(), target=(),
                          mask=None, dataset="bench")
                   for k, colour in enumerate([(200, 30, 30), (30, 30, 200)])]
        rows = bench(loaded, samples, "LLaVA-1.5 shape")
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
