"""`python -m probes.models`: answers, and one clear sentence with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from probes.cli import run_cli
from probes.models.__main__ import main
from probes.models.registry import HUB_ALIASES, resolve
from probes.models.zoo import BUILTIN_MODELS

REPO = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> int:
    return run_cli(main, list(argv))


def one_sentence_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(path)
    return path


def test_answer_prints_answer_and_probability(image_file, capsys):
    assert cli("answer", "--model", "tiny-random-llava", "--image", str(image_file),
               "--question", "what color is the shape?", "--max-new-tokens", "2") == 0
    out = capsys.readouterr()
    text, probability = out.out.rstrip("\n").split("\t")
    assert 0.0 <= float(probability.removeprefix("(p=").removesuffix(")")) <= 1.0
    assert "random weights" in out.err  # the untrained model is labelled as such


def test_list_shows_every_alias(capsys):
    assert cli("list") == 0
    out = capsys.readouterr().out
    for alias in [*HUB_ALIASES, *BUILTIN_MODELS]:
        assert alias in out


def test_hub_aliases_resolve_to_checkpoints():
    assert resolve("llava").location == "llava-hf/llava-1.5-7b-hf"
    assert resolve("qwen2.5-vl").location == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve("llava-next").location == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert resolve("org/some-model").kind == "hub"


def test_unknown_alias_lists_known_ones(image_file, capsys):
    assert cli("answer", "--model", "lava", "--image", str(image_file), "--question", "q") == 2
    err = one_sentence_error(capsys)
    assert "unknown model 'lava'" in err and "llava" in err and "qwen2.5-vl" in err


def test_missing_local_dir(image_file, capsys, tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    assert cli("answer", "--model", missing, "--image", str(image_file), "--question", "q") == 2
    assert "does not exist" in one_sentence_error(capsys)


def test_dir_of_unsupported_architecture(image_file, capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert cli("answer", "--model", str(tmp_path), "--image", str(image_file), "--question", "q") == 2
    err = one_sentence_error(capsys)
    assert "'bert'" in err and "llava" in err


def test_dir_without_config(image_file, capsys, tmp_path):
    assert cli("answer", "--model", str(tmp_path), "--image", str(image_file), "--question", "q") == 2
    assert "no config.json" in one_sentence_error(capsys)


def test_pickled_weights_refused(image_file, capsys, tmp_path):
    from safetensors.torch import load_file

    checkpoint = tmp_path / "pickled"
    shutil.copytree(BUILTIN_MODELS["tiny-random-llava"].directory(), checkpoint)
    torch.save(load_file(checkpoint / "model.safetensors"), checkpoint / "pytorch_model.bin")
    (checkpoint / "model.safetensors").unlink()
    args = ("answer", "--model", str(checkpoint), "--image", str(image_file), "--question", "q",
            "--max-new-tokens", "1")
    assert cli(*args) == 2
    assert "--allow-pickle" in one_sentence_error(capsys)
    assert cli(*args, "--allow-pickle") == 0


@pytest.mark.parametrize("offline", ["1", "0"])
def test_weights_unavailable_offline_names_checkpoint(image_file, tmp_path, offline):
    """A real subprocess: exit code 2, one sentence on stderr, no traceback; also when the hub
    is tried and cannot be reached (an endpoint that refuses connections: the hub client's own
    warnings must not reach the user)."""
    env = {**os.environ, "HF_HUB_OFFLINE": offline, "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO), "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "probes.models", "answer", "--model", "llava",
         "--image", str(image_file), "--question", "what is it?"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "llava-hf/llava-1.5-7b-hf" in line and "not available offline" in line
    assert "hf download" in line


def test_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    assert cli("answer", "--image", str(bad), "--question", "q") == 2
    assert "cannot read" in one_sentence_error(capsys)
    assert cli("answer", "--image", str(tmp_path / "none.png"), "--question", "q") == 2
    assert "does not exist" in one_sentence_error(capsys)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "I;16"])
def test_grayscale_and_transparent_images_are_converted(mode, capsys, tmp_path):
    path = tmp_path / f"image-{mode.replace(';', '')}.png"
    Image.new(mode, (40, 30)).save(path)
    assert cli("answer", "--model", "tiny-random-llava", "--image", str(path), "--question",
               "what shape?", "--max-new-tokens", "1") == 0


def test_tiny_image_refused(capsys, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    assert cli("answer", "--image", str(path), "--question", "q") == 2
    assert "1x1 pixels" in one_sentence_error(capsys)


def test_empty_question(image_file, capsys):
    assert cli("answer", "--image", str(image_file), "--question", "   ") == 2
    assert "question is empty" in one_sentence_error(capsys)


def test_transparent_pixels_become_white():
    from probes.images import to_rgb

    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((3, 3)) == (255, 255, 255)
