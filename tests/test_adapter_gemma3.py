"""The Gemma 3 adapter and what the engine models of Gemma 3: the tiny random checkpoint through
the registry, the pooled soft-token grid against the processor's own pixels, sliding-window
layers and bidirectional image blocks against masks built here from scratch (window AND
(causal OR same image) AND NOT knockout), per-layer-type rotary tables, masked decoding across
the window, the real google/gemma-3-4b-it config on the meta device, and the refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import image_with_box, red_cells, unnormalise
from PIL import Image
from transformers import (
    AutoProcessor,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from probes import attention
from probes.errors import UserError
from probes.masking import Knockout, parse_flows
from probes.models.adapters import Gemma3Adapter, adapter_for
from probes.models.adapters.llava_next import LlavaNextAdapter
from probes.record import AttentionRecorder
from probes.run import masked_generate, run_knockouts
from probes.tokens import token_groups

QUESTION = "what color is the shape ?"


@pytest.fixture(scope="module")
def tiny():
    from probes.models.loading import load_model

    loaded = load_model("tiny-random-gemma3")
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (90, 60), (200, 30, 30))], [QUESTION])
    return loaded, inputs


def test_loads_through_registry_with_the_real_processor(tiny):
    loaded, inputs = tiny
    assert isinstance(loaded.adapter, Gemma3Adapter)
    assert type(loaded.processor) is Gemma3Processor
    assert isinstance(loaded.processor.image_processor, Gemma3ImageProcessorPil)
    text = loaded.model.config.text_config
    assert loaded.adapter.sliding_windows() == (12, 12, None, 12, 12, None)
    assert [loaded.adapter.rotary_type(i) for i in range(3)] == [
        "sliding_attention", "sliding_attention", "full_attention"]
    # the window cuts: the prompt is longer than it
    assert inputs.input_ids.shape[1] > text.sliding_window
    # <start_of_image>, the 16 soft tokens, <end_of_image>; only the soft tokens are the image
    groups = token_groups(loaded.adapter, inputs)
    ids = inputs.input_ids[0]
    first, last = int(groups.image[0]), int(groups.image[-1])
    assert groups.image.tolist() == list(range(first, last + 1)) and groups.image.size == 16
    assert int(ids[first - 1]) == loaded.model.config.boi_token_id
    assert int(ids[last + 1]) == loaded.model.config.eoi_token_id
    assert loaded.processor.tokenizer.convert_ids_to_tokens(ids[groups.question]) == QUESTION.split()


def test_saved_processor_reloads_and_batches_one_image_per_prompt(tiny):
    loaded, _ = tiny
    processor = AutoProcessor.from_pretrained(loaded.source.location)
    assert type(processor) is Gemma3Processor and processor.image_seq_length == 16
    images = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (90, 60), "blue")]
    inputs = loaded.adapter.build_inputs(images, ["what shape is in the image ?", "what color ?"])
    assert inputs.input_ids.shape[0] == 2 and inputs.attention_mask[:, -1].all()
    for row, image in enumerate(inputs.images):
        expected = torch.nonzero(inputs.batch["token_type_ids"][row] == 1)[:, 0]
        np.testing.assert_array_equal(image.positions, expected.numpy())


# (size, box in original pixels): every box edge lies mid-cell in the resized 32 x 32 image
# (cells of 8 resized pixels), where bilinear resampling cannot carry red into the next cell
BOXES = [((90, 60), (12, 8, 56, 37), 9), ((64, 64), (8, 24, 40, 56), 9), ((40, 100), (5, 12, 25, 88), 12)]


@pytest.mark.parametrize(("size", "box", "n_cells"), BOXES)
def test_box_lands_on_the_pooled_cells_of_the_processors_pixels(tiny, size, box, n_cells):
    loaded, _ = tiny
    adapter = loaded.adapter
    out = adapter.image_processor(image_with_box(size, box), return_tensors="pt")
    pixels = out["pixel_values"][0]
    assert pixels.shape[-2:] == (32, 32)
    seen = red_cells(unnormalise(pixels, adapter.image_processor), cell=8)  # 4 x 4 soft tokens
    layout = adapter.image_layout(size)
    assert seen == set(layout.grids[0].cells_overlapping(box))
    assert len(seen) == n_cells
    # and the tokens in the box are those cells, read row by row
    inputs = adapter.build_inputs([image_with_box(size, box)], [QUESTION])
    groups = token_groups(adapter, inputs, box=box)
    expected = sorted(4 * row + col for row, col in seen)
    assert (groups.object - groups.image[0]).tolist() == expected


# ----------------------------------------------------------------- the reference: masks by hand
def _blocks(token_type_ids: torch.Tensor) -> np.ndarray:
    """Image block ids, the slow way: a new block at each run of 1s."""
    ids, current, previous = [], -1, 0
    for value in token_type_ids.tolist():
        if value == 1 and previous != 1:
            current += 1
        ids.append(current if value == 1 else -1)
        previous = value
    return np.array(ids)


def _handmade_allowed(config, blocks: np.ndarray, length: int, layer: int) -> np.ndarray:
    """[length, length] bool: causal, or both tokens in one image; in a sliding layer, only
    keys less than ``sliding_window`` positions back."""
    allowed = np.zeros((length, length), dtype=bool)
    window = config.sliding_window if config.layer_types[layer] == "sliding_attention" else None
    padded = np.concatenate([blocks, -np.ones(length - len(blocks), dtype=np.int64)])
    for q in range(length):
        for k in range(length):
            readable = k <= q or (padded[q] >= 0 and padded[q] == padded[k])
            if window is not None:
                readable = readable and q - k < window
            allowed[q, k] = readable
    return allowed


def _handmade_forward(loaded, batch, blocked_at) -> torch.Tensor:
    """Logits [seq, vocab] of a forward whose every layer reads exactly the handmade mask minus
    ``blocked_at(layer, length)`` (bool [length, length] or None): the model's own layers under
    plain sdpa, each given its 4-D mask by a pre-hook."""
    text = loaded.model.config.text_config
    length = batch["input_ids"].shape[1]
    blocks = _blocks(batch["token_type_ids"][0])
    layers = loaded.adapter.decoder_layers(loaded.model)
    low = torch.finfo(torch.float32).min

    def hook(layer):
        allowed = _handmade_allowed(text, blocks, length, layer)
        blocked = blocked_at(layer, length)
        if blocked is not None:
            allowed &= ~blocked
        mask = torch.where(torch.from_numpy(allowed), 0.0, low)[None, None]

        def set_mask(module, args, kwargs):
            return args, {**kwargs, "attention_mask": mask}
        return set_mask

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode(), attention.kept(loaded.model):
            attention.use(loaded.model, edited=False)
            return loaded.model(**batch, use_cache=False).logits[0].float()
    finally:
        for handle in handles:
            handle.remove()


def _knockout_blocked(knockout, groups, num_layers):
    """The knockout's edges as bool [length, length] per layer, generated queries included."""
    def blocked_at(layer, length):
        if layer not in knockout.layers:
            return None
        blocked = np.zeros((length, length), dtype=bool)
        for edges in knockout.edges(groups, num_layers):
            queries = list(edges.queries)
            if edges.queries_from is not None:
                queries += list(range(edges.queries_from, length))
            blocked[np.ix_(queries, edges.keys)] = True
        return blocked
    return blocked_at


@pytest.mark.parametrize("flows", ["image->question,last", "question->last", "image->image",
                                   "system->question,last"])
def test_knockout_in_each_layer_equals_the_handmade_combined_mask(tiny, flows):
    loaded, inputs = tiny
    n = loaded.adapter.num_layers
    groups = token_groups(loaded.adapter, inputs)
    windows = loaded.adapter.sliding_windows()
    # image->image would leave a sliding layer's image query no key within its window (refused)
    layers = [i for i in range(n) if flows != "image->image" or windows[i] is None]
    sweep = [Knockout(parse_flows(flows), (layer,)) for layer in layers]
    result = run_knockouts(loaded, inputs, sweep, batch_size=2, hidden_states=True)
    clean = _handmade_forward(loaded, dict(inputs.batch), lambda layer, length: None)
    torch.testing.assert_close(result.clean_logits, clean[-1], atol=1e-5, rtol=0)
    for row, knockout in enumerate(sweep):
        expected = _handmade_forward(loaded, dict(inputs.batch), _knockout_blocked(knockout, groups, n))
        torch.testing.assert_close(result.logits[row], expected[-1], atol=1e-5, rtol=0)
    assert (result.logits - result.clean_logits).abs().amax() > 1e-4  # the knockouts act


def test_the_window_and_the_image_blocks_change_the_numbers(tiny):
    """The reference can tell: without the window, or without the image blocks, the model's
    logits differ (so the equalities above test the structure, not nothing)."""
    loaded, inputs = tiny
    batch = dict(inputs.batch)
    with_structure = _handmade_forward(loaded, batch, lambda layer, length: None)[-1]
    assert torch.allclose(with_structure, loaded.model(**batch).logits[0, -1].float(), atol=1e-5)
    blocks = _blocks(batch["token_type_ids"][0])
    text = loaded.model.config.text_config

    def causal_only(layer, length):  # block the future image keys: causal inside images
        return np.triu(np.ones((length, length), dtype=bool), 1)

    assert (with_structure - _handmade_forward(loaded, batch, causal_only)[-1]).abs().max() > 1e-4
    wide = text.sliding_window
    try:
        text.sliding_window = 10_000  # the handmade masks read it: no window
        unwindowed = _handmade_forward(loaded, batch, lambda layer, length: None)[-1]
    finally:
        text.sliding_window = wide
    assert (with_structure - unwindowed).abs().max() > 1e-4
    assert blocks.max() == 0  # one image, one block


def test_recorded_maps_show_the_window_and_the_backward_image_edges(tiny):
    loaded, inputs = tiny
    groups = token_groups(loaded.adapter, inputs)
    window = loaded.model.config.text_config.sliding_window
    image, last = groups.image, int(groups.last[0])
    first_image = int(image[0])
    full, sliding = 2, 0
    recorder = AttentionRecorder(queries=[first_image, last], layers=[sliding, full])
    knockout = Knockout(parse_flows("image->image"), (full,))
    result = run_knockouts(loaded, inputs, [knockout], record=recorder)
    clean = result.clean_attentions
    # the last token in a sliding layer reads exactly the keys less than `window` back
    last_row = clean[sliding][0, :, 1]  # [heads, keys]
    assert (last_row[:, : last - window + 1] == 0).all()
    assert (last_row[:, last - window + 1 :] > 0).all()
    # in a full layer the first image token reads the later image tokens (backward edges) ...
    first_row = clean[full][0, :, 0]
    assert (first_row[:, image[1:]] > 0).all() and (first_row[:, image[-1] + 1 :] == 0).all()
    # ... and a knockout of image->image there removes every image key, exactly
    knocked = result.attentions[full][0, :, 0]
    assert (knocked[:, image] == 0).all()
    torch.testing.assert_close(knocked.sum(-1), torch.ones(knocked.shape[0]), atol=1e-5, rtol=0)
    # the recorded rows are those of the handmade mask's eager softmax
    reference = _eager_probabilities(loaded, inputs, full, first_image)
    torch.testing.assert_close(first_row, reference, atol=1e-5, rtol=0)


def _eager_probabilities(loaded, inputs, layer, query):
    """output_attentions of transformers' eager attention (the model's own masks) at a row."""
    with torch.inference_mode(), attention.kept(loaded.model):
        attention.use(loaded.model, edited=False, base="eager")
        out = loaded.model(**inputs.batch, output_attentions=True)
    return out.attentions[layer][0, :, query].float()


@pytest.mark.parametrize("flows", [None, "image->question,last,generated", "question->generated"])
def test_masked_decoding_across_the_window_equals_handmade_no_cache_loop(tiny, flows):
    loaded, inputs = tiny
    n = loaded.adapter.num_layers
    steps = 5
    knockout = Knockout(parse_flows(flows), tuple(range(n))) if flows else None
    eos = loaded.model.generation_config.eos_token_id
    loaded.model.generation_config.eos_token_id = -1
    try:
        result = masked_generate(loaded, inputs, knockout, max_new_tokens=steps)
    finally:
        loaded.model.generation_config.eos_token_id = eos
    groups = token_groups(loaded.adapter, inputs)
    blocked_at = (_knockout_blocked(knockout, groups, n) if knockout
                  else (lambda layer, length: None))
    batch = dict(inputs.batch)
    tokens, logits = [], []
    for _ in range(steps):
        step = _handmade_forward(loaded, batch, blocked_at)[-1]
        tokens.append(int(step.argmax()))
        logits.append(step)
        extra = torch.tensor([[tokens[-1]]])
        for key, value in (("input_ids", extra), ("attention_mask", torch.ones_like(extra)),
                           ("token_type_ids", torch.zeros_like(extra))):
            batch[key] = torch.cat([batch[key], value], 1)
    assert batch["input_ids"].shape[1] - 1 > 2 * loaded.model.config.text_config.sliding_window
    assert result.tokens == tokens
    torch.testing.assert_close(result.logits, torch.stack(logits), atol=1e-5, rtol=0)


def test_each_layer_type_gets_its_own_rotary_table(tiny):
    from probes.run import clean_pass
    from probes.suffix import RotaryTables

    loaded, inputs = tiny
    clean = clean_pass(loaded, inputs)
    tables = RotaryTables(loaded, clean.hidden_states[0], clean.position_ids, 0)
    rotary = loaded.adapter.language_model(loaded.model).rotary_emb
    like = clean.hidden_states[0]
    for layer, kind in enumerate(loaded.model.config.text_config.layer_types):
        cos, sin = rotary(like, clean.position_ids, kind)
        got = tables.rows(torch.device("cpu"), 0, like.shape[1], layer)
        assert torch.equal(got[0], cos) and torch.equal(got[1], sin)
    local = tables.rows(torch.device("cpu"), 0, like.shape[1], 0)[0]
    assert not torch.allclose(local, tables.rows(torch.device("cpu"), 0, like.shape[1], 2)[0])


# ----------------------------------------------------------------- the real checkpoint's facts
def _gemma3_4b_config() -> Gemma3Config:
    """google/gemma-3-4b-it as published in its config.json (the facts)."""
    return Gemma3Config(
        text_config={
            "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "query_pre_attn_scalar": 256, "sliding_window": 1024, "vocab_size": 262208,
            "max_position_embeddings": 131072, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
        },
        vision_config={
            "hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
            "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
            "vision_use_head": False, "model_type": "siglip_vision_model",
        },
        mm_tokens_per_image=256, boi_token_index=255999, eoi_token_index=256000,
        image_token_index=262144, eos_token_id=[1, 106],
    )


def _real_image_processor(**overrides) -> Gemma3ImageProcessorPil:
    """google/gemma-3-4b-it's preprocessor_config.json: 896 x 896, mean = std = 0.5."""
    settings = {"size": {"height": 896, "width": 896}, "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3, "do_pan_and_scan": None, "resample": 2}
    return Gemma3ImageProcessorPil(**{**settings, **overrides})


def test_real_gemma3_4b_config_on_meta_device():
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(_gemma3_4b_config())
    adapter = adapter_for(model.config, _real_image_processor())
    assert isinstance(adapter, Gemma3Adapter)
    assert len(adapter.decoder_layers(model)) == adapter.num_layers == 34
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (8, 4, 256)
    windows = adapter.sliding_windows()
    assert windows[:6] == (1024,) * 5 + (None,) and sum(w is None for w in windows) == 5
    assert adapter.attention_modules(model)[0].scaling == 256 ** -0.5
    assert adapter.lm_head(model).out_features == 262208
    assert adapter.final_norm(model) is model.model.language_model.norm
    assert adapter.image_token_id == 262144
    rotary = adapter.language_model(model).rotary_emb
    assert rotary.rope_type == {"full_attention": "linear", "sliding_attention": "default"}
    assert model.config.text_config.final_logit_softcapping is None
    grid = adapter.image_layout((1000, 600)).grids[0]
    assert (grid.rows, grid.cols, grid.cell_width, grid.cell_height) == (16, 16, 62.5, 37.5)


def test_a_box_lands_on_the_real_16x16_grid():
    size, box = (896, 896), (60, 230, 330, 500)  # edges mid-cell: cells are 56 pixels
    processor = _real_image_processor()
    out = processor(image_with_box(size, box), return_tensors="pt")
    seen = red_cells(unnormalise(out["pixel_values"][0], processor), cell=56)
    adapter = Gemma3Adapter(_gemma3_4b_config(), processor)
    assert seen == set(adapter.image_layout(size).grids[0].cells_overlapping(box))
    assert len(seen) == 5 * 5


# ----------------------------------------------------------------- refusals
def test_pan_and_scan_is_refused_in_one_sentence():
    adapter = Gemma3Adapter(_gemma3_4b_config(), _real_image_processor(do_pan_and_scan=True))
    with pytest.raises(UserError, match="pan-and-scan") as caught:
        adapter.image_layout((1000, 400))
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")


def test_a_cutting_window_is_still_refused_for_families_that_do_not_model_it():
    from transformers import LlavaNextConfig

    config = LlavaNextConfig(text_config={"model_type": "mistral", "sliding_window": 64,
                                          "max_position_embeddings": 4096})
    with pytest.raises(UserError, match="sliding-window attention"):
        LlavaNextAdapter(config, None)
    Gemma3Adapter(_gemma3_4b_config(), None)  # Gemma 3's windows are modelled: no refusal


def test_cli_refuses_pan_and_scan_with_exit_2(tiny, tmp_path, capsys):
    from probes.cli import run_cli
    from probes.models.__main__ import main

    loaded, _ = tiny
    checkpoint = tmp_path / "gemma3-pan-and-scan"
    shutil.copytree(loaded.source.location, checkpoint)
    settings = json.loads((checkpoint / "processor_config.json").read_text())
    settings["image_processor"]["do_pan_and_scan"] = True
    (checkpoint / "processor_config.json").write_text(json.dumps(settings))
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30)).save(image)
    code = run_cli(main, ["answer", "--model", str(checkpoint), "--image", str(image),
                          "--question", "what?"])
    error = capsys.readouterr().err.splitlines()[-1]  # after the weights' loading bar
    assert code == 2, error
    assert error.startswith("error: ") and "pan-and-scan" in error and error.count(". ") == 0
