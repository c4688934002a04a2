"""What the engine does not model is refused in one sentence at load time, and so is a weights
file that is truncated or corrupt; every model the engine models loads as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_adapter_llava import _llava_config
from test_adapter_llava_next import _real_config as _llava_next_config
from test_adapter_qwen2_5_vl import _qwen2_5_vl_7b_config
from transformers import (
    BloomConfig,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    Llama4TextConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MistralConfig,
    Qwen2_5_VLConfig,
)

from analyses.attenuation.__main__ import main as attenuation_main
from probes.cli import EXIT_BAD_INPUT, run_cli
from probes.errors import UserError
from probes.models.__main__ import main as models_main
from probes.models.adapters import adapter_for
from probes.models.adapters.modelled import check_modelled
from probes.models.loading import load_model
from probes.models.zoo import BUILTIN_MODELS

TINY_LLAVA = Path(__file__).resolve().parents[1] / "probes/models/zoo/checkpoints/tiny-llava"
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32064,
                  max_position_embeddings=32768)
QWEN_TEXT = {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 32768}
FULL = ["full_attention"] * 26  # Gemma 2 / 3 configs with no sliding layer


def llava(text_config) -> LlavaConfig:
    return LlavaConfig(text_config=text_config, image_token_id=32000)


def sentence(feature: str, evidence: str) -> str:
    return (f"fusionlens refuses this model: its text config turns on {feature} ({evidence}), "
            "which fusionlens' engine does not reproduce.")


REFUSED = {
    # Mistral-7B-v0.1's 4096-token window (LLaVA-NeXT's Mistral-7B-Instruct-v0.2 has none)
    "mistral window": (
        LlavaNextConfig(text_config=MistralConfig(**MISTRAL_7B, sliding_window=4096)),
        sentence("sliding-window attention", "sliding_window=4096 with max_position_embeddings=32768")),
    "qwen window": (
        Qwen2_5_VLConfig(text_config={**QWEN_TEXT, "use_sliding_window": True,
                                      "sliding_window": 4096, "max_window_layers": 2}),
        sentence("sliding-window attention",
                 "use_sliding_window=True, sliding_window=4096 with max_position_embeddings=32768")),
    "gemma 2 windows": (
        llava(Gemma2Config()),
        sentence("sliding-window attention", "sliding_window=4096 with max_position_embeddings=8192")),
    "soft-capping": (
        llava(Gemma2Config(layer_types=FULL)),
        sentence("attention logit soft-capping", "attn_logit_softcapping=50.0")),
    "chunked": (
        llava(Llama4TextConfig()),
        sentence("chunked attention layers", "layer_types names 'chunked_attention'")),
    "alibi": (
        llava(FalconConfig(alibi=True)),
        sentence("ALiBi position biases", "alibi=True")),
    "no rotary": (
        llava(BloomConfig()),
        sentence("position encodings other than rotary ones", "it has no rope_parameters")),
    "bidirectional": (
        llava(Gemma3TextConfig(layer_types=FULL, use_bidirectional_attention=True)),
        sentence("bidirectional attention", "use_bidirectional_attention=True")),
    "dynamic rope": (
        llava(LlamaConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                           "rope_theta": 10000.0})),
        sentence("'dynamic' rotary scaling, whose tables depend on each call's length",
                 "rope_parameters rope type 'dynamic'")),
    "longrope": (
        llava(LlamaConfig(head_dim=64, max_position_embeddings=4096, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 32,
            "long_factor": [2.0] * 32, "original_max_position_embeddings": 1024})),
        sentence("'longrope' rotary scaling, whose tables depend on each call's length",
                 "rope_parameters rope type 'longrope'")),
}


@pytest.mark.parametrize("name", REFUSED)
def test_an_unmodelled_feature_is_refused_with_its_sentence(name):
    config, expected = REFUSED[name]
    with pytest.raises(UserError) as refusal:
        check_modelled(config)
    assert str(refusal.value) == expected
    with pytest.raises(UserError) as refusal:  # every adapter refuses it on construction
        adapter_for(config)
    assert str(refusal.value) == expected


def _qwen_as_published() -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct with the window fields of its config.json: a 32768 window that
    use_sliding_window=false switches off."""
    config = _qwen2_5_vl_7b_config()
    text = config.get_text_config().to_dict()
    text.update(sliding_window=32768, use_sliding_window=False, max_window_layers=28)
    return Qwen2_5_VLConfig(text_config=text, vision_config=config.vision_config.to_dict(),
                            image_token_id=config.image_token_id)


ACCEPTED = {
    "llava-1.5-7b": _llava_config(),
    "llava-v1.6-mistral-7b": _llava_next_config(),
    "qwen2.5-vl-7b": _qwen2_5_vl_7b_config(),
    "qwen2.5-vl-7b as published": _qwen_as_published(),
    # a window as long as the context never masks a key within it (q - k < window always)
    "mistral window = context": LlavaNextConfig(
        text_config=MistralConfig(**{**MISTRAL_7B, "sliding_window": 32768})),
    # Qwen2's window only in the layers from max_window_layers on: here none
    "qwen window in no layer": Qwen2_5_VLConfig(
        text_config={**QWEN_TEXT, "use_sliding_window": True, "max_window_layers": 4}),
    # caps logits only, and LLaVA's forward computes lm_head(hidden) without it, as the engine
    "final soft-capping": llava(Gemma2Config(layer_types=FULL, attn_logit_softcapping=None)),
    "static rope scaling": llava(LlamaConfig(rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    "attention bias": llava(LlamaConfig(attention_bias=True)),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_a_modelled_config_is_accepted(name):
    config = ACCEPTED[name]
    check_modelled(config)
    assert adapter_for(config).config is config


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_the_builtin_models_load_as_before(name):
    loaded = load_model(name, device="cpu")
    assert loaded.adapter.num_layers == len(loaded.adapter.decoder_layers(loaded.model)) > 0


# ------------------------------------------------------------------ through load_model and CLIs
def _tiny_llava_copy(tmp_path: Path, **text_config) -> Path:
    copy = tmp_path / "tiny-llava"
    shutil.copytree(TINY_LLAVA, copy)
    if text_config:
        config_file = copy / "config.json"
        config = json.loads(config_file.read_text())
        config["text_config"].update(text_config)
        config_file.write_text(json.dumps(config))
    return copy


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err[len("error: "):].strip()


def _answer(model: Path, tmp_path: Path) -> int:
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 64), "red").save(image)
    return run_cli(models_main, ["answer", "--model", str(model), "--image", str(image),
                                 "--question", "what shape is it ?", "--device", "cpu"])


@pytest.mark.parametrize("text_config, expected", [
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     sentence("'dynamic' rotary scaling, whose tables depend on each call's length",
              "rope_parameters rope type 'dynamic'")),
    ({"model_type": "mistral", "sliding_window": 256},
     sentence("sliding-window attention", "sliding_window=256 with max_position_embeddings=512")),
])
def test_a_refused_checkpoint_is_one_sentence_from_load_model_and_the_cli(
        tmp_path, capsys, text_config, expected):
    checkpoint = _tiny_llava_copy(tmp_path, **text_config)
    with pytest.raises(UserError) as refusal:
        load_model(str(checkpoint), device="cpu")
    assert str(refusal.value) == expected
    assert _answer(checkpoint, tmp_path) == EXIT_BAD_INPUT
    assert _one_error_line(capsys) == expected


def _truncate(weights: Path) -> None:
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _random_bytes(weights: Path) -> None:
    size = weights.stat().st_size
    weights.write_bytes(bytes((7 * i * i + 3 * i + 1) % 256 for i in range(size)))


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "Error while deserializing header: incomplete metadata, file not fully covered"),
    (_random_bytes, "Error while deserializing header: header too large"),
])
def test_a_corrupt_weights_file_is_one_sentence_naming_it(tmp_path, capsys, damage, reason):
    checkpoint = _tiny_llava_copy(tmp_path)
    weights = checkpoint / "model.safetensors"
    damage(weights)
    expected = (f"the weights file {weights} is truncated or corrupt ({reason}); copy or "
                "download the checkpoint again.")
    with pytest.raises(UserError) as refusal:
        load_model(str(checkpoint), device="cpu")
    assert str(refusal.value) == expected
    assert _answer(checkpoint, tmp_path) == EXIT_BAD_INPUT
    assert _one_error_line(capsys) == expected
    out = tmp_path / "attenuation"
    code = run_cli(attenuation_main, ["--model", str(checkpoint), "--device", "cpu",
                                      "--limit", "2", "--out", str(out)])
    assert code == EXIT_BAD_INPUT
    assert _one_error_line(capsys) == expected
