"""The Mistral 3 adapter: the tiny random checkpoint through the registry; the image's token run
([IMG] per token, [IMG_BREAK] after each row, [IMG_END] last) against the processor's ids and the
model's features; each token's cell against the model's own patch merger fed with patch
coordinates; boxes against the processor's pixels; the published Mistral-Small-3.1 config on the
meta device; refusals (a sliding window, mismatched processors, LLaVA + Pixtral)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import check_tiny_family, image_with_box, red_cells, unnormalise
from PIL import Image
from transformers import LlavaConfig, Mistral3Config, Mistral3ForConditionalGeneration
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.mistral3.modeling_mistral3 import Mistral3PatchMerger
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from probes.errors import UserError
from probes.models.adapters import LlavaAdapter, Mistral3Adapter, adapter_for
from probes.models.adapters.grids import SEPARATOR
from probes.models.adapters.mistral3 import PixtralImageOnlyProcessor
from probes.models.loading import load_model
from probes.models.registry import resolve
from probes.models.zoo.tiny_mistral3 import MERGE, PATCH, build_processor

CELL = PATCH * MERGE  # one token per 16x16 resized pixels
# square, wide, tall, odd (upscaled to whole cells), large (shrunk to 128 px, then rounded up)
SIZES = [(64, 64), (150, 60), (50, 130), (97, 41), (300, 260)]
QUESTIONS = ["what shape is in the image?", "what colour?"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-mistral3")


def test_loads_through_registry_and_answers(tiny):
    assert resolve("mistral3").location == "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
    check_tiny_family(tiny, Mistral3Adapter, PixtralImageOnlyProcessor, PixtralImageProcessorPil)


@pytest.mark.parametrize("size", SIZES)
def test_token_run_matches_processor_ids_and_model_features(tiny, size):
    adapter, processor = tiny.adapter, tiny.processor
    images = [Image.new("RGB", size, (90, 30, 200)), Image.new("RGB", (64, 64))]
    inputs = adapter.build_inputs(images, QUESTIONS)
    with torch.inference_mode():
        features = tiny.model.model.get_image_features(
            inputs.batch["pixel_values"], inputs.batch["image_sizes"], return_dict=True
        ).pooler_output
    for row, (image, tokens) in enumerate(zip(images, inputs.images, strict=True)):
        ids = inputs.input_ids[row].numpy()
        layout = adapter.image_layout(image.size)
        height, width = inputs.batch["image_sizes"][row].tolist()  # resized, whole cells
        rows, cols = height // CELL, width // CELL
        assert (layout.grids[0].rows, layout.grids[0].cols) == (rows, cols)
        # the run: [IMG] x cols, [IMG_BREAK], ..., the last row's break an [IMG_END]
        expected = ([processor.image_token_id] * cols + [processor.image_break_token_id]) * rows
        expected[-1] = processor.image_end_token_id
        np.testing.assert_array_equal(ids[tokens.positions], expected)
        assert tokens.positions[-1] - tokens.positions[0] + 1 == len(expected)  # contiguous
        patches = layout.token_cells[:, 0] != SEPARATOR
        np.testing.assert_array_equal(patches, ids[tokens.positions] == processor.image_token_id)
        assert features[row].shape[0] == int(patches.sum()) == rows * cols


def _merged_centres(image_size_hw: tuple[int, int]) -> np.ndarray:
    """The resized-pixel centre (x, y) each merged token reads, by Mistral 3's own patch merger
    (unfold + linear) with weights that average its patches' coordinates."""
    height, width = image_size_hw
    h, w = height // PATCH, width // PATCH
    config = SimpleNamespace(spatial_merge_size=MERGE,
                             vision_config=SimpleNamespace(hidden_size=2, patch_size=PATCH))
    merger = Mistral3PatchMerger(config)
    with torch.no_grad():  # unfold's channels are (feature, position in the 2x2 block)
        merger.merging_layer.weight.zero_()
        for feature in range(2):
            merger.merging_layer.weight[feature, feature * MERGE**2:(feature + 1) * MERGE**2] = (
                1 / MERGE**2)
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        codes = torch.stack([x, y], -1).reshape(h * w, 2).float()
        merged = merger(codes, torch.tensor([[height, width]]))
    return ((merged + 0.5) * PATCH).numpy()


@pytest.mark.parametrize("size", SIZES)
def test_every_token_cell_holds_the_patches_the_merger_reads(tiny, size):
    pixels = tiny.processor.image_processor(Image.new("RGB", size), patch_size=CELL,
                                            return_tensors="pt")
    resized_hw = tuple(pixels["image_sizes"][0].tolist())
    centres = _merged_centres(resized_hw)
    layout = tiny.adapter.image_layout(size)
    boxes = [layout.token_box(k) for k in range(layout.n_tokens)]
    boxes = [box for box in boxes if box is not None]
    assert len(boxes) == len(centres)
    scale = np.array([size[0] / resized_hw[1], size[1] / resized_hw[0]])
    for (x, y), box in zip(centres * scale, boxes, strict=True):
        assert (x, y) == pytest.approx(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))


# box edges at least 3 resized pixels from every cell edge (asserted below)
BOXES = [
    ((64, 64), (9, 20, 59, 40)),
    ((150, 60), (10, 21, 48, 51)),
    ((50, 130), (7, 7, 28, 42)),
    ((97, 41), (36, 20, 66, 33)),
    ((300, 260), (13, 98, 271, 238)),
]


@pytest.mark.parametrize(("size", "box"), BOXES)
def test_box_to_cells_matches_processor_pixels(tiny, size, box):
    image_processor = tiny.processor.image_processor
    out = image_processor(image_with_box(size, box), patch_size=CELL, return_tensors="pt")
    height, width = out["image_sizes"][0].tolist()
    pixels = out["pixel_values"][0][:, :height, :width]
    seen = red_cells(unnormalise(pixels, image_processor), cell=CELL)
    grid = tiny.adapter.image_layout(size).grids[0]
    xs = [c * grid.cell_width for c in range(grid.cols + 1)]
    ys = [r * grid.cell_height for r in range(grid.rows + 1)]
    margin = min(min(abs(e - x) / grid.cell_width for e in box[0::2] for x in xs),
                 min(abs(e - y) / grid.cell_height for e in box[1::2] for y in ys)) * CELL
    assert margin >= 3  # bicubic blurs an edge by ~2 resized pixels: no tolerance needed
    assert seen == set(grid.cells_overlapping(box)) and seen
    tokens = tiny.adapter.image_layout(size).tokens_in_box(box)
    assert len(tokens) == len(seen)


# --------------------------------------------------------------------- the real checkpoint
def real_config(**text) -> Mistral3Config:
    """mistralai/Mistral-Small-3.1-24B-Instruct-2503 as published in its config.json."""
    return Mistral3Config(
        text_config={
            "model_type": "mistral", "hidden_size": 5120, "intermediate_size": 32768,
            "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 1_000_000_000.0, "sliding_window": None, "vocab_size": 131072, **text,
        },
        vision_config={
            "model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "head_dim": 64,
            "image_size": 1540, "patch_size": 14, "hidden_act": "silu", "rope_theta": 10000.0,
        },
        image_token_index=10, spatial_merge_size=2, projector_hidden_act="gelu",
        multimodal_projector_bias=False, vision_feature_layer=-1,
    )


def test_real_mistral3_config_on_meta_device():
    with torch.device("meta"):
        model = Mistral3ForConditionalGeneration(real_config())
    processor = build_processor(patch=14, merge=2, longest=1540)
    adapter = adapter_for(model.config, processor)
    assert isinstance(adapter, Mistral3Adapter) and adapter.image_token_id == 10
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 40
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (32, 8, 128)
    # 644x476 fits 1540: rounded up to 23 x 17 cells of 28 px; 17 rows of 23 and a break
    layout = adapter.image_layout((644, 476))
    assert (layout.grids[0].rows, layout.grids[0].cols, layout.n_tokens) == (17, 23, 408)
    # 2000x1500 shrinks to 1540x1155, rounded up to 55 x 42 cells
    layout = adapter.image_layout((2000, 1500))
    assert (layout.grids[0].rows, layout.grids[0].cols, layout.n_tokens) == (42, 55, 42 * 56)
    adapter.config.image_token_id = processor.image_token_id  # the local tokenizer's [IMG]
    inputs = adapter.build_inputs([Image.new("RGB", (644, 476))], ["what shape ?"])
    assert inputs.images[0].positions.size == 408


def test_a_sliding_window_in_the_language_model_is_refused():
    """Mistral-Small-3.1 sets no window; a Mistral-7B-v0.1-style text config (4096 of a 32k
    context) is refused in one sentence."""
    with pytest.raises(UserError, match="sliding-window attention .*sliding_window=4096"):
        Mistral3Adapter(real_config(sliding_window=4096, max_position_embeddings=32768), None)


@pytest.mark.parametrize(
    ("processor", "message"),
    [
        (build_processor(patch=16, merge=2, longest=1540), "cuts 16 px patches merged 2x2"),
        (build_processor(patch=14, merge=2, longest=2048), "beyond its rotary table"),
        (CLIPImageProcessorPil(), "longest-edge"),
    ],
)
def test_refuses_processors_it_does_not_understand(processor, message):
    with pytest.raises(UserError, match=message):
        Mistral3Adapter(real_config(), processor).image_layout((644, 476))


def test_llava_with_a_pixtral_tower_is_refused_in_one_sentence():
    """mistral-community/pixtral-12b is model_type llava with a Pixtral tower and the Pixtral
    processor; the LLaVA adapter lays out CLIP grids only and says so."""
    config = LlavaConfig(vision_config={"model_type": "pixtral", "image_size": 1024,
                                        "patch_size": 16},
                         text_config={"model_type": "mistral"}, image_token_index=10)
    processor = build_processor(patch=16, merge=1, longest=1024)
    with pytest.raises(UserError, match="Pixtral") as caught:
        LlavaAdapter(config, processor).image_layout((644, 476))
    assert "\n" not in str(caught.value)
