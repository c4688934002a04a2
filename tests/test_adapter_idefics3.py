"""The Idefics3 and SmolVLM adapters: the tiny random checkpoints through the registry; tile
counts, token counts and the image's span (tile tags, line breaks, global view) against the
processor; the box <-> token mapping against the processor's pixels of every tile and the global
view, with the token order read off the model's own pixel shuffle; the real Idefics3-8B and
SmolVLM2-2.2B configs on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import image_with_box, red_cells, unnormalise
from PIL import Image
from test_adapter_internvl import _around, _overlaps
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from probes.errors import UserError
from probes.models.adapters import Idefics3Adapter, SmolVLMAdapter, adapter_for
from probes.models.adapters.grids import SEPARATOR
from probes.models.adapters.idefics3 import SmolVLMImageOnlyProcessor
from probes.models.loading import load_model
from probes.models.zoo.tiny_idefics3 import _tokenizer
from probes.tokens import token_groups

NAMES = ["tiny-random-smolvlm", "tiny-random-idefics3"]
SIZES = [(32, 32), (64, 64), (70, 30), (30, 70), (33, 47), (200, 41), (96, 64)]


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES)
def test_tiles_counts_and_span_match_processor(models, name, size):
    loaded = models[name]
    adapter, processor = loaded.adapter, loaded.processor
    out = processor.image_processor([[Image.new("RGB", size)]], return_row_col_info=True)
    rows, cols, _ = adapter.tiles(size)
    assert (rows, cols) == (out["rows"][0][0], out["cols"][0][0])
    images = [Image.new("RGB", size, (90, 30, 200)), Image.new("RGB", (40, 40))]
    inputs = adapter.build_inputs(images, ["what shape is in the image?", "what colour?"])
    ids = inputs.input_ids.numpy()
    tokenizer = processor.tokenizer
    for row, (image, tokens) in enumerate(zip(images, inputs.images)):
        layout = tokens.layout
        patches = layout.token_cells[:, 0] != SEPARATOR
        counted = processor._get_num_multimodal_tokens(image_sizes=[image.size[::-1]])
        assert int(patches.sum()) == counted["num_image_tokens"][0]
        np.testing.assert_array_equal(tokens.positions[patches],
                                      np.flatnonzero(ids[row] == adapter.image_token_id))
        markers = tokenizer.convert_ids_to_tokens(ids[row, tokens.positions[~patches]])
        # the span opens and closes with the fake token; one tag per tile, the global tag
        assert markers[0] == markers[-1] == "<fake_token_around_image>"
        tags = [m for m in markers if m.startswith("<row_")]
        r, c, _ = adapter.tiles(image.size)
        assert tags == [f"<row_{i}_col_{j}>" for i in range(1, r + 1) for j in range(1, c + 1)]
        assert markers.count("<global-img>") == 1 and markers.count("\n") == (r + 1 if r else 0)
    groups = token_groups(adapter, inputs, 0)
    assert tokenizer.decode(ids[0, groups.question]) == "what shape is in the image?"
    assert np.isin(groups.image_patches, groups.image).all()


def _token_sources(model, n_views: int, patches: int) -> np.ndarray:
    """(view, row, col) in tokens of each image token, by the model's own pixel shuffle of
    features that spell out their patch (a token's first channels: its top-left patch)."""
    view, row, col = torch.meshgrid(torch.arange(n_views), torch.arange(patches),
                                    torch.arange(patches), indexing="ij")
    codes = torch.stack([view, row, col], -1).float().reshape(n_views, patches * patches, 3)
    scale = model.config.scale_factor
    shuffled = model.model.connector.pixel_shuffle(codes, scale)
    first = shuffled[..., :3].reshape(-1, 3).long()
    return (first // torch.tensor([1, scale, scale])).numpy()


BOX_CASES = [  # edges a resampled pixel away from every cell edge (see _around)
    ((64, 64), (8, 19, 29, 63)),  # resized to 96x96: 3x3 tiles + global
    ((30, 70), (1, 21, 29, 38)),  # tall: 3x2 tiles
    ((33, 47), (1, 18, 32, 33)),  # upscaled, 3x3 tiles
    ((100, 60), (3, 19, 46, 41)),  # wide: 2x3 tiles
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("size", "box"), BOX_CASES)
def test_box_to_tokens_matches_processor_pixels(models, name, size, box):
    loaded = models[name]
    adapter, image_processor = loaded.adapter, loaded.processor.image_processor
    pixels = image_processor([[image_with_box(size, box)]], return_tensors="pt")["pixel_values"][0]
    vision = loaded.model.config.vision_config
    cell = vision.patch_size * loaded.model.config.scale_factor
    seen = [red_cells(unnormalise(view, image_processor), cell=cell) for view in pixels]
    sources = _token_sources(loaded.model, len(pixels), vision.image_size // vision.patch_size)
    red = {k for k, (v, r, c) in enumerate(sources) if (r, c) in seen[v]}
    layout = adapter.image_layout(size)
    patch_offsets = np.flatnonzero(layout.token_cells[:, 0] != SEPARATOR)
    assert len(patch_offsets) == len(sources)
    scale = max(1.0, max(size) / vision.image_size)
    inner = {k for k, o in enumerate(patch_offsets)
             if _overlaps(layout.token_box(o), _around(box, -scale))}
    outer = {k for k, o in enumerate(patch_offsets)
             if _overlaps(layout.token_box(o), _around(box, scale))}
    assert inner == outer, "pick a box whose edges are a pixel away from the cell edges"
    assert red == inner
    assert red == {int(np.searchsorted(patch_offsets, o)) for o in layout.tokens_in_box(box)}
    if len(layout.grids) == 2:  # seen in the tiles and in the global view
        n_tiled = int((layout.token_cells[:, 0] == 0).sum())
        assert min(red) < n_tiled <= max(red)


# --------------------------------------------------------------------- the real checkpoints
def _idefics3_8b(**overrides) -> Idefics3Config:
    """HuggingFaceM4/Idefics3-8B-Llama3: SigLIP-so400m at 364 px, patch 14, scale 2, Llama 3."""
    return Idefics3Config(**{
        "vision_config": Idefics3VisionConfig(hidden_size=1152, intermediate_size=4304,
                                              num_hidden_layers=27, num_attention_heads=16,
                                              image_size=364, patch_size=14),
        "text_config": LlamaConfig(hidden_size=4096, intermediate_size=14336,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, vocab_size=128259,
                                   max_position_embeddings=131072,
                                   rope_parameters={"rope_type": "default",
                                                    "rope_theta": 500000.0}),
        "scale_factor": 2, "image_token_id": 128257, **overrides})


def _smolvlm2_2b(**overrides) -> SmolVLMConfig:
    """HuggingFaceTB/SmolVLM2-2.2B-Instruct: SigLIP-so400m at 384 px, patch 14, scale 3,
    SmolLM2-1.7B."""
    return SmolVLMConfig(**{
        "vision_config": SmolVLMVisionConfig(hidden_size=1152, intermediate_size=4304,
                                             num_hidden_layers=27, num_attention_heads=16,
                                             image_size=384, patch_size=14),
        "text_config": LlamaConfig(hidden_size=2048, intermediate_size=8192,
                                   num_hidden_layers=24, num_attention_heads=32,
                                   num_key_value_heads=32, vocab_size=49280,
                                   max_position_embeddings=8192,
                                   rope_parameters={"rope_type": "default",
                                                    "rope_theta": 130000.0}),
        "scale_factor": 3, "image_token_id": 49190, **overrides})


def _processor(kind: str, tile: int, seq: int, **overrides):
    settings = {"size": {"longest_edge": 4 * tile}, "max_image_size": {"longest_edge": tile},
                **overrides}
    if kind == "idefics3":
        return Idefics3Processor(Idefics3ImageProcessorPil(**settings), _tokenizer(),
                                 image_seq_len=seq, chat_template=DEFAULT_CHAT_TEMPLATE)
    return SmolVLMImageOnlyProcessor(SmolVLMImageProcessorPil(**settings), _tokenizer(),
                                     image_seq_len=seq, chat_template=DEFAULT_CHAT_TEMPLATE)


@pytest.mark.parametrize(("kind", "model_class", "config", "tile", "seq", "layers", "cell"), [
    ("idefics3", Idefics3ForConditionalGeneration, _idefics3_8b, 364, 169, 32, 28),
    ("smolvlm", SmolVLMForConditionalGeneration, _smolvlm2_2b, 384, 81, 24, 42),
])
def test_real_configs_on_meta_device(kind, model_class, config, tile, seq, layers, cell):
    with torch.device("meta"):
        model = model_class(config())
    processor = _processor(kind, tile, seq)
    adapter = adapter_for(model.config, processor)
    assert isinstance(adapter, SmolVLMAdapter if kind == "smolvlm" else Idefics3Adapter)
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == layers
    adapter = adapter_for(config(image_token_id=processor.image_token_id), processor)
    # 800x600: longest edge to 4 tiles (600 -> 4*tile*3/4 rounded to even), up to multiples
    # of the tile: 4x3 tiles + the global view, 13 views of `seq` tokens
    rows, cols, _ = adapter.tiles((800, 600))
    assert (rows, cols) == (3, 4)
    layout = adapter.image_layout((800, 600))
    patches = layout.token_cells[:, 0] != SEPARATOR
    assert int(patches.sum()) == 13 * seq
    # markers: 12 x (fake + tag), 3 line breaks, then "\n", fake, global tag ... fake
    assert layout.n_tokens == 13 * seq + 12 * 2 + 3 + 1 + 2 + 1
    canvas, global_view = layout.grids
    # one token covers `cell` resized pixels (SmolVLM2: 27 patches of 14 px, by 3: 9 of 42)
    assert canvas.cell_width == pytest.approx(cell * 800 / (4 * tile))
    assert global_view.cell_height == pytest.approx(cell * 600 / tile)
    counted = processor._get_num_multimodal_tokens(image_sizes=[(600, 800)])
    assert counted["num_image_tokens"] == [13 * seq]


def test_refusals():
    with pytest.raises(UserError, match="cuts 384 px views but the vision tower takes 364"):
        adapter_for(_idefics3_8b(), _processor("idefics3", 384, 169)).image_layout((99, 99))
    with pytest.raises(UserError, match="inserts 100 tokens per view"):
        adapter_for(_idefics3_8b(), _processor("idefics3", 364, 100)).image_layout((99, 99))
