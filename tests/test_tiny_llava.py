"""The embedded, trained tiny-llava: committed checkpoint, accuracy floor, default model, CLI."""

from __future__ import annotations

import json

import easy_vqa
import pytest

from analyses.data import load_dataset
from analyses.grading import grade
from probes.cli import run_cli
from probes.models.__main__ import main
from probes.models.registry import DEFAULT_MODEL
from probes.models.zoo import BUILTIN_MODELS, CHECKPOINTS

# Measured on the committed checkpoint (README model card) for the first 500 easy-VQA test
# questions: 94.6% overall (473), colour 92.9% (65 of 70), shape 97.4% (74 of 76), yes/no 94.4%
# (334 of 354). The floors leave about 2 points (two colour or shape answers, six yes/no) for
# another CPU's float rounding. On the full test split the model meets the issue's targets
# (95.8% overall, every kind >= 94.8%).
FLOORS_500 = {"all": 0.925, "color": 0.90, "shape": 0.94, "yes/no": 0.925}


@pytest.fixture(scope="module")
def tiny():
    from probes.models.loading import load_model

    return load_model("tiny-llava")


def test_tiny_llava_is_the_default_and_is_committed():
    assert DEFAULT_MODEL == "tiny-llava"
    directory = BUILTIN_MODELS["tiny-llava"].directory()
    assert directory == CHECKPOINTS / "tiny-llava"
    assert (directory / "model.safetensors").stat().st_size < 5_000_000
    config = json.loads((directory / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] >= 6
    assert config["architectures"] == ["LlavaForConditionalGeneration"]


def test_architecture_as_the_issue_asks(tiny):
    layout = tiny.adapter.image_layout((64, 64))
    grid = layout.grids[0]
    assert (grid.rows, grid.cols, layout.n_tokens) == (8, 8, 64)
    assert tiny.adapter.num_layers >= 6


def test_accuracy_on_fixed_easy_vqa_slice(tiny):
    samples = load_dataset("easy-vqa", "test", limit=500)
    correct = grade(tiny, samples, 250)
    assert len(correct) == 500
    for kind, floor in FLOORS_500.items():
        hits = [c for s, c in zip(samples, correct) if kind in ("all", s.kind)]
        assert sum(hits) / len(hits) >= floor, (kind, sum(hits) / len(hits))


def test_answer_cli_on_an_easy_vqa_image(capsys):
    questions, answers, image_ids = easy_vqa.get_test_questions()
    path = easy_vqa.get_test_image_paths()[image_ids[0]]
    assert run_cli(main, ["answer", "--image", path, "--question", questions[0]]) == 0
    text, _ = capsys.readouterr().out.split("\t")
    assert text == answers[0]
