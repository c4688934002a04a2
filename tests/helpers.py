"""Test helpers shared by the adapter tests (painting boxes and finding them in pixel values,
the tiny Qwen checkpoint in the hub's layout) and the analyses' resume tests (interrupting a run, comparing two runs' results)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from analyses.results import to_json

RED = (255, 0, 0)

# Every tiny random model family the engine-consistency, recording, overlay, lens and device
# tests run on: adding a family's tiny model here puts it through all of them.
TINY_FAMILIES = ("tiny-random-llava", "tiny-random-llava-next", "tiny-random-qwen2.5-vl",
                 "tiny-random-internvl", "tiny-random-smolvlm", "tiny-random-idefics3",
                 "tiny-random-gemma3", "tiny-random-qwen3-vl", "tiny-random-qwen2-vl",
                 "tiny-random-llava-onevision", "tiny-random-mistral3")


def image_with_box(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A white image of ``size`` with a pure red rectangle covering ``box`` (end-exclusive)."""
    image = Image.new("RGB", size, (255, 255, 255))
    x0, y0, x1, y1 = box
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), fill=RED)
    return image


def unnormalise(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """[3, H, W] normalised pixel values -> [H, W, 3] in 0..255."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return ((pixel_values.float() * std + mean) * 255).permute(1, 2, 0).numpy()


def red_cells(rgb: np.ndarray, cell: int) -> set[tuple[int, int]]:
    """Cells (row, col) of ``cell``-pixel squares holding at least one clearly red pixel."""
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    rows, cols = np.nonzero(red)
    return {(int(r) // cell, int(c) // cell) for r, c in zip(rows, cols)}


def shrink(box, by: float):
    x0, y0, x1, y1 = box
    return (x0 + by, y0 + by, x1 - by, y1 - by)


def interrupt_at(done: int):
    """An ``on_sample`` callback that interrupts a run once ``done`` samples are finished."""

    def on_sample(finished: int) -> None:
        if finished == done:
            raise KeyboardInterrupt

    return on_sample


def _without_timings(value):
    """``value`` without its wall times (keys ``timing``, ``versions`` and ``*seconds``, at any
    depth): what two runs of the same numbers may differ in."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("timing", "versions") and not k.endswith("seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def assert_same_run(a, b) -> None:
    """Two RunResults are the same run: equal summaries but for wall times and versions (as
    JSON text, so NaN equals NaN) and exactly equal arrays, dtypes included."""
    summaries = [json.dumps(_without_timings(json.loads(to_json(r.summary))), sort_keys=True)
                 for r in (a, b)]
    assert summaries[0] == summaries[1]
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert a.arrays[name].dtype == b.arrays[name].dtype, name
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)


def qwen_hub_layout(tmp_path: Path) -> Path:
    """The tiny Qwen checkpoint laid out as Qwen/Qwen2.5-VL-7B-Instruct is on the hub: a
    preprocessor_config.json naming the stock Qwen2_5_VLProcessor."""
    from probes.models.zoo import BUILTIN_MODELS

    checkpoint = tmp_path / "qwen-hub-layout"
    shutil.copytree(BUILTIN_MODELS["tiny-random-qwen2.5-vl"].directory(), checkpoint)
    saved = json.loads((checkpoint / "processor_config.json").read_text())
    (checkpoint / "processor_config.json").unlink()
    hub_style = {**saved["image_processor"], "processor_class": "Qwen2_5_VLProcessor"}
    hub_style["min_pixels"] = hub_style["size"]["shortest_edge"]
    hub_style["max_pixels"] = hub_style["size"]["longest_edge"]
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(hub_style))
    return checkpoint


def consistency_inputs(loaded):
    """The engine consistency tests' input: a red image and a colour question, on which greedy
    continuations of the tiny random models never emit the image placeholder token (the
    no-cache reference loop feeds generated ids back as input_ids, where a placeholder would be
    taken for an image token)."""
    return loaded.adapter.build_inputs([Image.new("RGB", (90, 60), (200, 30, 30))],
                                       ["what color is the shape ?"])


def check_tiny_family(loaded, adapter_class, processor_class, image_processor_class) -> None:
    """A tiny random family built like the others, loaded through the registry: its adapter and
    processor classes, 4 decoder layers of 4 heads sharing 2 KV heads, and words for answers."""
    from probes.models.answer import answer_questions

    adapter = loaded.adapter
    assert isinstance(adapter, adapter_class) and loaded.source.kind == "builtin"
    assert type(loaded.processor) is processor_class
    assert type(loaded.processor.image_processor) is image_processor_class
    assert len(adapter.decoder_layers(loaded.model)) == adapter.num_layers == 4
    assert (adapter.num_heads, adapter.num_kv_heads) == (4, 2)
    answers = answer_questions(loaded, [Image.new("RGB", (50, 30)), Image.new("RGB", (200, 90))],
                               ["what shape is in the image?", "what colour?"], max_new_tokens=3)
    for answer in answers:
        assert 0 < len(answer.token_ids) == len(answer.token_probabilities) <= 3
        assert 0.0 <= answer.probability <= 1.0
