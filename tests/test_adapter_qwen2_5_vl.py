"""The Qwen2.5-VL adapter: tiny random checkpoint through the registry, token positions, the
merged-patch grid against the processor's own pixels, multimodal position ids under a custom
4-D mask, and the real 7B config on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import image_with_box, qwen_hub_layout, red_cells, unnormalise
from PIL import Image
from transformers import (
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from probes.errors import UserError
from probes.models.adapters import Qwen2_5_VLAdapter, Qwen2VLAdapter, adapter_for
from probes.models.adapters.qwen2_5_vl import QwenImageOnlyProcessor
from probes.models.answer import answer_questions
from probes.models.zoo.tiny_qwen2_5_vl import FACTOR, MERGE, PATCH, build_config

# (width, height): square, wide, tall, odd (below min_pixels: upscaled), large (above max_pixels)
SIZES = [(84, 84), (150, 60), (50, 130), (97, 41), (300, 260)]
QUESTIONS = ["what shape is in the image?", "what colour is the object?"]


@pytest.fixture(scope="module")
def tiny_qwen():
    from probes.models.loading import load_model

    return load_model("tiny-random-qwen2.5-vl")


def test_loads_through_registry_and_answers(tiny_qwen):
    assert isinstance(tiny_qwen.adapter, Qwen2_5_VLAdapter)
    assert tiny_qwen.source.kind == "builtin"
    # AutoProcessor found the image-only processor by name; the PIL image backend was used
    assert type(tiny_qwen.processor) is QwenImageOnlyProcessor
    assert isinstance(tiny_qwen.processor.image_processor, Qwen2VLImageProcessorPil)
    assert len(tiny_qwen.adapter.decoder_layers(tiny_qwen.model)) == 4
    assert (tiny_qwen.adapter.num_heads, tiny_qwen.adapter.num_kv_heads) == (4, 2)
    images = [Image.new("RGB", (84, 84), "red"), Image.new("RGB", (150, 60), "blue")]
    answers = answer_questions(tiny_qwen, images, QUESTIONS, max_new_tokens=3)
    for answer in answers:
        assert len(answer.token_ids) == len(answer.token_probabilities) <= 3
        assert 0.0 <= answer.probability <= 1.0


def test_saved_processor_reloads_with_auto_processor(tiny_qwen):
    processor = AutoProcessor.from_pretrained(tiny_qwen.source.location)
    assert type(processor) is QwenImageOnlyProcessor
    assert processor.image_processor.size.longest_edge == 64 * FACTOR * FACTOR
    assert "<|im_start|>assistant" in tiny_qwen.adapter.prompt("what shape?")


@pytest.mark.parametrize("size", SIZES)
def test_image_positions_and_grid_match_processor(tiny_qwen, size):
    check_positions_and_grid(tiny_qwen.adapter, [Image.new("RGB", size), Image.new("RGB", (56, 56))])


def check_positions_and_grid(adapter, images) -> None:
    """Each row's image tokens sit where the processor put them, on a grid of the processor's
    ``image_grid_thw`` merged ``MERGE`` x ``MERGE``; rows are left-padded."""
    inputs = adapter.build_inputs(images, QUESTIONS)
    for row, image in enumerate(inputs.images):
        expected = torch.nonzero(inputs.input_ids[row] == adapter.image_token_id)[:, 0]
        np.testing.assert_array_equal(image.positions, expected.numpy())
        grid = image.layout.grids[0]
        t, h, w = inputs.batch["image_grid_thw"][row].tolist()
        assert (t, grid.rows, grid.cols) == (1, h // MERGE, w // MERGE)
        assert image.layout.n_tokens == grid.rows * grid.cols
    assert inputs.attention_mask[:, -1].all()  # left padding


def _resized_image(pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                   patch: int = PATCH) -> torch.Tensor:
    """Undo Qwen's patchify: rows are patches ordered (merged row, merged col, row in the
    merge block, col in the block), each holding (channel, time, y, x). -> [3, H, W]."""
    _, rows, cols = grid_thw.tolist()
    patches = pixel_values.view(rows // MERGE, cols // MERGE, MERGE, MERGE, 3, 2, patch, patch)
    frame = patches[:, :, :, :, :, 0]  # both time steps are the same still image
    # (merged row, merged col, block row, block col, C, y, x) -> (C, rows*patch, cols*patch)
    return frame.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, rows * patch, cols * patch)


def _margin_in_resized_pixels(grid, box, factor: int = FACTOR) -> float:
    """How close (in resized pixels) a box edge comes to a cell boundary."""
    xs = [c * grid.cell_width for c in range(grid.cols + 1)]
    ys = [r * grid.cell_height for r in range(grid.rows + 1)]
    near_x = min(abs(edge - x) for edge in box[0::2] for x in xs) / grid.cell_width
    near_y = min(abs(edge - y) for edge in box[1::2] for y in ys) / grid.cell_height
    return min(near_x, near_y) * factor


BOXES = [
    ((84, 84), (10, 35, 70, 50), 3),
    ((150, 60), (40, 8, 100, 50), 6),
    ((50, 130), (8, 40, 42, 100), 6),
    ((97, 41), (30, 10, 70, 30), 4),
    ((300, 260), (50, 60, 200, 140), 15),
]


@pytest.mark.parametrize(("size", "box", "n_cells"), BOXES)
def test_box_to_cells_matches_processor_pixels(tiny_qwen, size, box, n_cells):
    adapter = tiny_qwen.adapter
    out = adapter.image_processor(image_with_box(size, box), return_tensors="pt")
    pixels = _resized_image(out["pixel_values"], out["image_grid_thw"][0])
    seen = red_cells(unnormalise(pixels, adapter.image_processor), cell=FACTOR)
    grid = adapter.image_layout(size).grids[0]
    # bicubic resampling blurs an edge over ~2 resized pixels; every box edge here lies at least
    # 3 resized pixels from a cell boundary, so no tolerance is needed: the sets are equal
    assert _margin_in_resized_pixels(grid, box) >= 3
    assert seen == set(grid.cells_overlapping(box))
    assert len(seen) == n_cells


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D additive mask [batch, 1, seq, seq] equivalent to a 2-D padding mask + causality."""
    seq = attention_mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _text_positions(batch) -> torch.Tensor:
    """Plain 1-D positions that skip left padding (what a text-only model would use)."""
    return (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)


def _forward_positions(model, batch, rotary) -> torch.Tensor:
    """The position ids a plain forward hands to the decoder's rotary embedding."""
    captured = []
    hook = rotary.register_forward_hook(lambda module, args, out: captured.append(args[1]))
    with torch.no_grad():
        model(**batch)
    hook.remove()
    return captured[0]


def test_position_ids_reproduce_plain_forward_under_4d_mask(tiny_qwen):
    adapter, model = tiny_qwen.adapter, tiny_qwen.model
    images = [Image.new("RGB", (150, 60), "red"), Image.new("RGB", (56, 56), "blue")]
    inputs = adapter.build_inputs(images, QUESTIONS)
    batch = inputs.batch
    assert not inputs.attention_mask[1].all()  # row 1 is left-padded
    with torch.no_grad():
        plain = model(**batch).logits
    positions = adapter.position_ids(model, batch)
    assert positions.shape == (3, 2, batch["input_ids"].shape[1])
    used = _forward_positions(model, batch, model.model.language_model.rotary_emb)
    assert torch.equal(positions, used)  # exactly what the model computes for itself
    keep = inputs.attention_mask.bool()
    mask = _additive_mask(inputs.attention_mask, plain.dtype)
    rest = {k: v for k, v in batch.items() if k != "attention_mask"}
    with torch.no_grad():
        custom = model(**rest, attention_mask=mask, position_ids=positions).logits
        flat = model(**rest, attention_mask=mask, position_ids=_text_positions(batch)).logits
    torch.testing.assert_close(custom[keep], plain[keep], atol=1e-5, rtol=0)
    assert (flat[keep] - plain[keep]).abs().max() > 1e-4  # 1-D positions give other numbers


def test_qwen2_vl_shares_layout_and_positions(tiny_qwen):
    """Qwen2-VL: same processor and position scheme; its get_rope_index takes no video timing."""
    tiny = build_config(tiny_qwen.processor)
    text, vision = tiny.text_config, tiny.vision_config
    config = Qwen2VLConfig(
        text_config={
            "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
            "num_hidden_layers": 2, "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads, "vocab_size": text.vocab_size,
            "rope_parameters": dict(text.rope_parameters),
        },
        vision_config={
            "depth": 1, "embed_dim": 32, "hidden_size": text.hidden_size, "num_heads": 2,
            "patch_size": vision.patch_size, "spatial_merge_size": vision.spatial_merge_size,
        },
        image_token_id=tiny.image_token_id, video_token_id=tiny.video_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    adapter = adapter_for(model.config, tiny_qwen.processor)
    assert isinstance(adapter, Qwen2VLAdapter) and len(adapter.decoder_layers(model)) == 2
    images = [Image.new("RGB", (97, 41)), Image.new("RGB", (56, 56))]
    inputs = adapter.build_inputs(images, QUESTIONS)
    rotary = model.model.language_model.rotary_emb
    positions = adapter.position_ids(model, inputs.batch)
    assert torch.equal(positions, _forward_positions(model, inputs.batch, rotary))


def test_image_positions_follow_the_grid(tiny_qwen):
    """Image token k sits at (start, start + row, start + col); text after the image resumes at
    start + max(rows, cols)."""
    adapter = tiny_qwen.adapter
    inputs = adapter.build_inputs([Image.new("RGB", (150, 60))], QUESTIONS[:1])
    positions = adapter.position_ids(tiny_qwen.model, inputs.batch)[:, 0]
    image = inputs.images[0]
    first = int(image.positions[0])
    start = int(positions[0, first - 1]) + 1
    cells = image.layout.token_cells
    np.testing.assert_array_equal(positions[0, image.positions].numpy(), start)
    np.testing.assert_array_equal(positions[1, image.positions].numpy(), start + cells[:, 1])
    np.testing.assert_array_equal(positions[2, image.positions].numpy(), start + cells[:, 2])
    grid = image.layout.grids[0]
    after = int(image.positions[-1]) + 1
    assert positions[:, after].tolist() == [start + max(grid.rows, grid.cols)] * 3


def _qwen2_5_vl_7b_config() -> Qwen2_5_VLConfig:
    """Qwen/Qwen2.5-VL-7B-Instruct as published in its config.json (the facts)."""
    return Qwen2_5_VLConfig(
        text_config={
            "num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
            "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
            "max_position_embeddings": 128000,
            "rope_parameters": {
                "rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24],
            },
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "out_hidden_size": 3584, "intermediate_size": 3420,
            "num_heads": 16, "patch_size": 14, "spatial_merge_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=151655,
    )


def _qwen_processor(**overrides) -> Qwen2VLImageProcessorPil:
    """The image processor settings of Qwen/Qwen2.5-VL-7B-Instruct."""
    settings = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2}
    return Qwen2VLImageProcessorPil(**{**settings, **overrides})


def test_real_qwen2_5_vl_config_on_meta_device():
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(_qwen2_5_vl_7b_config())
    processor = _qwen_processor()
    adapter = adapter_for(model.config, processor)
    assert adapter.family == "qwen2_5_vl" and adapter.image_token_id == 151655
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 28
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (28, 4, 128)
    expected = {(336, 336): (12, 12, [1, 24, 24]), (644, 476): (17, 23, [1, 34, 46])}
    for size, (rows, cols, grid_thw) in expected.items():
        layout = adapter.image_layout(size)
        grid = layout.grids[0]
        assert (grid.rows, grid.cols, layout.n_tokens) == (rows, cols, rows * cols)
        out = processor(images=Image.new("RGB", size), return_tensors="pt")
        assert out["image_grid_thw"][0].tolist() == grid_thw
    # 644 = 23*28 and 476 = 17*28 already: no resize, so each cell is 28x28 original pixels
    grid = adapter.image_layout((644, 476)).grids[0]
    assert grid.cell_width == pytest.approx(28.0) and grid.cell_height == pytest.approx(28.0)


@pytest.mark.parametrize(
    ("processor", "needle"),
    [
        (_qwen_processor(do_resize=False), "do_resize"),
        (_qwen_processor(patch_size=16), "16 px"),
        (CLIPImageProcessorPil(), "min/max-pixels"),
    ],
)
def test_refuses_processor_settings_it_does_not_understand(processor, needle):
    adapter = Qwen2_5_VLAdapter(_qwen2_5_vl_7b_config(), processor)
    with pytest.raises(UserError, match=needle):
        adapter.image_layout((336, 336))


def test_checkpoint_in_hub_layout_loads_without_torchvision(tmp_path):
    """Qwen/Qwen2.5-VL-7B-Instruct ships a preprocessor_config.json naming the stock
    Qwen2_5_VLProcessor, whose video processor needs torchvision: loading must still work."""
    from probes.models.loading import load_model

    loaded = load_model(str(qwen_hub_layout(tmp_path)))
    assert isinstance(loaded.processor, QwenImageOnlyProcessor)
    [answer] = answer_questions(loaded, [Image.new("RGB", (90, 60))], ["what shape?"], 2)
    assert 0.0 <= answer.probability <= 1.0
