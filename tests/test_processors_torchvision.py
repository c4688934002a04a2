"""The users' image path: with torchvision installed, transformers resolves the torchvision-backed
image processors and Qwen's stock processor builds. There the project's torchvision-free
processors (the PIL backends, ``QwenImageOnlyProcessor``) must give the same model inputs as the
stock ones, and ``load_model`` must use the stock ones.

Without torchvision these tests skip; ``make test-compat`` runs them in ``.venv-torchvision``
with ``FUSIONLENS_REQUIRE_TORCHVISION=1``, which turns that skip into a failure.

Tolerance: token ids, ``image_sizes`` and ``image_grid_thw`` are identical; pixel values (in the
normalised units the model sees, about -1.8..2.2) differ only by the resampling arithmetic of
PIL (uint8 after resize) and torchvision (float): one uint8 level is 0.015 there; on uniform
noise images (the worst case for resampling) a single value differs by at most ``MAX_PIXEL_DIFF``
and the mean by at most ``MEAN_PIXEL_DIFF``; the tiny models' logits agree within 0.05.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import qwen_hub_layout
from PIL import Image
from transformers import AutoProcessor
from transformers.utils import is_torchvision_available

from probes.models.adapters import adapter_for
from probes.models.adapters.qwen2_5_vl import QwenImageOnlyProcessor
from probes.models.loading import load_model

MAX_PIXEL_DIFF = 0.4  # measured: at most 0.35 (uniform noise images, 1024x768)
MEAN_PIXEL_DIFF = 0.01  # measured: at most 0.0057
SIZES = [(64, 64), (90, 60), (60, 150), (644, 476)]
QUESTIONS = ["what shape is it ?"] * len(SIZES)


@pytest.fixture(autouse=True)
def _torchvision():
    if is_torchvision_available():
        return
    if os.environ.get("FUSIONLENS_REQUIRE_TORCHVISION") == "1":
        pytest.fail("FUSIONLENS_REQUIRE_TORCHVISION=1 but torchvision does not import here.")
    pytest.skip("torchvision is not installed; `make test-compat` runs these in .venv-torchvision")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _assert_same_inputs(stock, free) -> None:
    assert stock.keys() == free.keys()
    for key in stock:
        a, b = stock[key], free[key]
        if key == "pixel_values":
            assert a.shape == b.shape and a.dtype == b.dtype
            diff = (a - b).abs()
            assert float(diff.max()) <= MAX_PIXEL_DIFF, key
            assert float(diff.mean()) <= MEAN_PIXEL_DIFF, key
        else:  # input_ids, attention_mask, image_sizes, image_grid_thw, mm_token_type_ids
            assert torch.equal(a, b), key


@pytest.mark.parametrize("name", ["tiny-random-llava", "tiny-random-llava-next"])
def test_llava_stock_and_pil_processors_give_the_same_inputs(name):
    loaded = load_model(name)
    stock = loaded.processor
    assert "Pil" not in type(stock.image_processor).__name__  # load_model took the torchvision one
    free = AutoProcessor.from_pretrained(loaded.source.location, backend="pil")
    assert type(free.image_processor).__name__ == type(stock.image_processor).__name__ + "Pil"
    stock_inputs = loaded.adapter.build_inputs(_images(), QUESTIONS)
    free_inputs = adapter_for(loaded.model.config, free).build_inputs(_images(), QUESTIONS)
    _assert_same_inputs(stock_inputs.batch, free_inputs.batch)
    for a, b in zip(stock_inputs.images, free_inputs.images):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.layout.token_cells, b.layout.token_cells)


def test_qwen_stock_processor_is_used_and_matches_the_image_only_one(tmp_path):
    checkpoint = qwen_hub_layout(tmp_path)
    loaded = load_model(str(checkpoint))
    stock = loaded.processor
    assert type(stock).__name__ == "Qwen2_5_VLProcessor"
    assert type(stock.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert stock.video_processor is not None
    free = QwenImageOnlyProcessor.from_pretrained(str(checkpoint), backend="pil")
    assert type(free.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    stock_inputs = loaded.adapter.build_inputs(_images(), QUESTIONS)
    free_inputs = adapter_for(loaded.model.config, free).build_inputs(_images(), QUESTIONS)
    _assert_same_inputs(stock_inputs.batch, free_inputs.batch)
    # the engine's positions follow: the multimodal rotary ids are the same
    positions = loaded.adapter.position_ids(loaded.model, stock_inputs.batch)
    assert torch.equal(positions, loaded.adapter.position_ids(loaded.model, free_inputs.batch))


@pytest.mark.parametrize("name", ["tiny-random-llava", "tiny-random-llava-next",
                                  "tiny-random-qwen2.5-vl"])
def test_model_outputs_agree_across_the_two_processors(name):
    loaded = load_model(name)
    free_processor = (QwenImageOnlyProcessor if "qwen" in name else AutoProcessor).from_pretrained(
        loaded.source.location, backend="pil")
    free_adapter = adapter_for(loaded.model.config, free_processor)
    stock = loaded.adapter.build_inputs(_images()[:2], QUESTIONS[:2])
    free = free_adapter.build_inputs(_images()[:2], QUESTIONS[:2])
    with torch.no_grad():
        a = loaded.model(**stock.batch).logits
        b = loaded.model(**free.batch).logits
    torch.testing.assert_close(a, b, atol=0.05, rtol=0)


# ------------------------------------------------------------- the real checkpoints' settings
CLIP = dict(image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711], resample=3)
REAL = {  # the image processor settings of the llava-hf and Qwen 7B checkpoints
    "clip": dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, **CLIP),
    "llava_next": dict(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        **CLIP),
    "qwen2_vl": dict(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                     temporal_patch_size=2),
}
REAL_SIZES = [(336, 336), (644, 476), (500, 375), (375, 500), (1024, 768)]


@pytest.mark.parametrize("module,cls", [("clip", "CLIPImageProcessor"),
                                        ("llava_next", "LlavaNextImageProcessor"),
                                        ("qwen2_vl", "Qwen2VLImageProcessor")])
@pytest.mark.parametrize("size", REAL_SIZES)
def test_real_image_processors_match_at_real_image_sizes(module, cls, size):
    import transformers

    stock = getattr(transformers, cls)(**REAL[module])
    free = getattr(transformers, cls + "Pil")(**REAL[module])
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3),
                                                                 dtype=np.uint8))
    a, b = stock(images=[image], return_tensors="pt"), free(images=[image], return_tensors="pt")
    _assert_same_inputs(a, b)
