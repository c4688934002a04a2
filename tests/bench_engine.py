"""Benchmarks of the probes engine against the naive way, measured side by side in one run.

    make bench        (or: python tests/bench_engine.py)

Prints a table and writes bench-results.json: rows {name, baseline, ours, unit, ratio, shape},
ratio = baseline / ours (> 1 is better). Timings are never assertions. Models have real depth
and token counts but small width, random weights, float32, one thread.

Every ``tests/bench_*.py`` shares :func:`report` (the table and bench-results.json) and the
smoke mode: with ``FUSIONLENS_BENCH_SMOKE=1`` each runs its whole code at tiny sizes
(:func:`sized`; the variable reaches child processes and Ray workers), which
``tests/test_bench_smoke.py`` does in `make test` so that no benchmark rots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from probes import attention
from probes.masking import Knockout, parse_flows
from probes.models.loading import load_model
from probes.models.zoo import tiny_qwen2_5_vl
from probes.models.zoo.checkpoint import greedy_generation_config, save
from probes.models.zoo.tiny_llava import BASIC_WORDS, build_processor
from probes.record import AttentionRecorder
from probes.run import clean_pass, masked_generate, run_knockouts, run_knockouts_naively
from probes.tokens import token_groups

SMOKE = "FUSIONLENS_BENCH_SMOKE"


def sized(full, smoke):
    """``full``, or ``smoke`` in smoke mode (``FUSIONLENS_BENCH_SMOKE=1``)."""
    return smoke if os.environ.get(SMOKE) == "1" else full


def report(rows: list[dict], path: Path = Path("bench-results.json"), fresh: bool = False) -> None:
    """Print ``rows`` as a table and merge them into ``path`` by name (``fresh``: replace the
    file): ``{name, baseline, ours, unit, ratio, shape}``, ratio = baseline / ours."""
    for row in rows:
        sys.stdout.write(f"{row['name']}: baseline {row['baseline']:.3g} {row['unit']}, ours "
                         f"{row['ours']:.3g} {row['unit']}, {row['ratio']:.2f}x "
                         f"({row['shape']})\n")
    existing = [] if fresh or not path.is_file() else json.loads(path.read_text())
    names = {row["name"] for row in rows}
    path.write_text(json.dumps([r for r in existing if r["name"] not in names] + rows, indent=1)
                    + "\n")


QWEN_IMAGE = sized(1764, 56)  # 63 x 63 = 3,969 image tokens: with the prompt, about 4,000

QUESTION = ("is there a red circle or a blue triangle in the image and what shape is the object "
            "of this image does the image contain a yellow rectangle or not what color is it")


def llava_15_shape(directory: Path, width: int = 128) -> None:
    """LLaVA-1.5 token shape: 336 px, 14 px patches (576 image tokens), 32 decoder layers;
    the language model ``width`` wide (LLaVA-1.5-7B: 4,096) with 128-wide heads from 1,024 on.
    Smoke mode: 56 px (16 image tokens), 2 layers."""
    processor = build_processor(BASIC_WORDS, image_size=sized(336, 56), patch_size=14)
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=sized(336, 56),
                                       patch_size=14),
        text_config=LlamaConfig(hidden_size=width, intermediate_size=width * 2 if width < 1024
                                else width * 11008 // 4096, num_hidden_layers=sized(32, 2),
                                num_attention_heads=max(4, width // 128),
                                num_key_value_heads=max(4, width // 128),
                                vocab_size=len(tokenizer), max_position_embeddings=4096,
                                bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = greedy_generation_config(config.text_config)
    save(model, processor, directory)


def qwen_25_vl_shape(directory: Path) -> None:
    """Qwen2.5-VL depth (28 decoder layers) at about 4,000 tokens, small width (smoke mode:
    2 layers, 4 image tokens)."""
    processor = tiny_qwen2_5_vl.build_processor(BASIC_WORDS, max_pixels=QWEN_IMAGE * QWEN_IMAGE)
    config = tiny_qwen2_5_vl.build_config(processor, vision_width=32, vision_layers=1,
                                          text_width=128, text_layers=sized(28, 2), heads=4,
                                          kv_heads=2)
    config.text_config.max_position_embeddings = 8192
    save(tiny_qwen2_5_vl.build_model(config, 0), processor, directory)


def timed(function, repeats: int = 1):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def side_by_side(*functions, repeats: int, cpu: bool = False):
    """Best time of each function, taking turns, so background load hits every side alike.
    ``cpu=True`` returns (best wall times, best CPU times of this process): with one thread
    the CPU time is the work itself, which a competing load hardly changes."""
    best = [float("inf")] * len(functions)
    best_cpu = [float("inf")] * len(functions)
    for _ in range(repeats):
        for i, function in enumerate(functions):
            start = time.process_time()
            best[i] = min(best[i], timed(function)[0])
            best_cpu[i] = min(best_cpu[i], time.process_time() - start)
    return (best, best_cpu) if cpu else best


def bench_sweep(directory: Path) -> dict:
    loaded = load_model(str(directory))
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (336, 336), (200, 30, 30))], [QUESTION])
    n = loaded.adapter.num_layers
    sweep = [Knockout.window("image->question,last", layer, 1, n) for layer in range(n)]
    name = f"sweep image->question,last, {n} layers, window 1"
    naive_s, naive = timed(lambda: run_knockouts_naively(loaded, inputs, sweep))
    ours_s, ours = timed(lambda: run_knockouts(loaded, inputs, sweep, batch_size=8), repeats=2)
    difference = float((ours.logits - naive).abs().max())
    if difference > 1e-4:
        raise AssertionError(f"sweep results differ from the naive way by {difference}")
    return {"name": name, "baseline": naive_s,
            "ours": ours_s, "unit": "s", "ratio": naive_s / ours_s,
            "shape": f"{n} layers, {inputs.input_ids.shape[1]} tokens "
                     f"({len(inputs.images[0].positions)} image), max |diff| {difference:.1e}"}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child_recording(directory: str, how: str) -> None:
    """In a fresh process: peak memory above the loaded model, and time, of recording the
    question->image attention of every layer and head (ours) or of output_attentions (eager)."""
    torch.set_num_threads(1)
    loaded = load_model(directory, attn_implementation="eager" if how == "eager" else "sdpa")
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (QWEN_IMAGE, QWEN_IMAGE))], [QUESTION])
    groups = token_groups(loaded.adapter, inputs)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark after loading
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        if how == "eager":
            maps = loaded.model(**inputs.batch, output_attentions=True).attentions
            maps = [m[:, :, groups.question][..., groups.image] for m in maps]
        else:
            recorder = AttentionRecorder(queries=groups.question, keys=groups.image)
            attention.enable(loaded.model)
            with attention.attach(loaded.adapter.attention_modules(loaded.model), recorder):
                loaded.model(**inputs.batch)
            maps = [recorder.maps[i] for i in sorted(recorder.maps)]
    seconds = time.perf_counter() - start
    sys.stdout.write(json.dumps({"seconds": seconds, "peak_mb": (_rss_kb("VmHWM") - base) / 1024,
                                 "tokens": inputs.input_ids.shape[1], "layers": len(maps),
                                 "checksum": float(sum(m.double().sum() for m in maps))}) + "\n")


def bench_recording(directory: Path) -> dict:
    results = {}
    for how in ("eager", "ours"):
        done = subprocess.run([sys.executable, __file__, "--child-recording", str(directory), how],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the {how} recording child failed:\n{done.stderr[-3000:]}")
        out = done.stdout
        results[how] = json.loads(out.strip().splitlines()[-1])
    eager, ours = results["eager"], results["ours"]
    if abs(eager["checksum"] - ours["checksum"]) > 1e-3 * abs(eager["checksum"]):
        raise AssertionError(f"recorded maps differ: {eager['checksum']} vs {ours['checksum']}")
    shape = (f"{ours['layers']} layers, {ours['tokens']} tokens, question rows x image keys, "
             "all heads")
    return [
        {"name": "record question->image, peak memory", "baseline": eager["peak_mb"],
         "ours": ours["peak_mb"], "unit": "MB", "ratio": eager["peak_mb"] / ours["peak_mb"],
         "shape": shape},
        {"name": "record question->image, time", "baseline": eager["seconds"],
         "ours": ours["seconds"], "unit": "s", "ratio": eager["seconds"] / ours["seconds"],
         "shape": shape + " (eager output_attentions vs sdpa + recorder)"},
    ]


def bench_generate(directory: Path) -> list[dict]:
    loaded = load_model(str(directory))
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (336, 336), (200, 30, 30))], [QUESTION])
    n, steps = loaded.adapter.num_layers, 8
    loaded.model.generation_config.eos_token_id = -1  # always decode `steps` tokens
    knockout = Knockout(parse_flows("image->question,last,generated"), tuple(range(n)))
    first_pass = clean_pass(loaded, inputs)

    def plain():
        with torch.inference_mode():
            return loaded.model.generate(**inputs.batch, max_new_tokens=steps, do_sample=False,
                                         min_new_tokens=steps)

    def ours():  # everything from scratch: the clean pass, the masked suffix, the decoding
        # (the clean pass is its own, so the decode continues in its buffers)
        return masked_generate(loaded, inputs, knockout, max_new_tokens=steps)

    def second_pass():  # AIF's second pass: the clean pass is the first pass's, already paid
        return masked_generate(loaded, inputs, knockout, max_new_tokens=steps, clean=first_pass)

    plain_s, ours_s, second_s = side_by_side(plain, ours, second_pass, repeats=sized(5, 1))
    reference = plain()[0, inputs.input_ids.shape[1]:].tolist()
    if masked_generate(loaded, inputs, None, max_new_tokens=steps).tokens != reference:
        raise AssertionError("an unmasked masked_generate does not decode what generate does")
    shape = f"{n} layers, {inputs.input_ids.shape[1]} prompt tokens, {steps} new tokens"
    return [
        {"name": "masked generate (clean pass + masked decode) vs plain generate",
         "baseline": plain_s, "ours": ours_s, "unit": "s", "ratio": plain_s / ours_s, "shape": shape},
        {"name": "the same, given the first pass's clean pass (second pass only)",
         "baseline": plain_s, "ours": second_s, "unit": "s", "ratio": plain_s / second_s,
         "shape": shape},
    ]


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-recording":
        child_recording(sys.argv[2], sys.argv[3])
        return 0
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        llava = Path(tmp) / "llava-1.5-shape"
        llava_15_shape(llava)
        rows.append(bench_sweep(llava))
        rows.extend(bench_generate(llava))
        qwen = Path(tmp) / "qwen2.5-vl-shape"
        qwen_25_vl_shape(qwen)
        rows.extend(bench_recording(qwen))
    report(rows, fresh=True)  # the first of `make bench`: a fresh bench-results.json
    return 0


if __name__ == "__main__":
    sys.exit(main())
