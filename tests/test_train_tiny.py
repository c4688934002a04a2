"""The trainer's sampling (source shares, shape phases, yes/no balance, by hand) and its save."""

from __future__ import annotations

import torch

from analyses.data import Sample
from analyses.train_tiny import (
    Encoded,
    TrainConfig,
    asks_about_present,
    sampling_weights,
    save_weights,
    yes_no_group,
)


def _encoded(kinds, sources, present, groups=None):
    n = len(kinds)
    groups = groups or [0 if kind == "yes/no" else -1 for kind in kinds]
    return Encoded(prompts=[[1]] * n, answers=[[2]] * n, image_index=torch.zeros(n, dtype=torch.long),
                   pixels=torch.zeros(1, 3, 2, 2), kinds=kinds, source=torch.tensor(sources),
                   asks_present=torch.tensor(present), yes_no_group=torch.tensor(groups))


def test_source_shares_shape_oversampling_and_yes_no_balance():
    kinds = ["shape", "color", "yes/no", "yes/no", "yes/no", "yes/no", "count"]
    sources = [0, 0, 0, 0, 0, 0, 1]
    present = [False, False, True, False, False, False, False]
    config = TrainConfig(fine_grained_share=0.25, shape_oversample=2.0, balance_yes_no=True)
    weights = sampling_weights(_encoded(kinds, sources, present), config, shape_only=False)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=weights.dtype))
    assert torch.isclose(weights[6], torch.tensor(0.25, dtype=weights.dtype))  # fine-grained share
    easy = weights[:6] / weights[:6].sum()
    # by hand: shape 2, colour 1, four yes/no of 1 -> 7; yes/no total 4 split 2 present / 2 absent
    expected = torch.tensor([2, 1, 2, 2 / 3, 2 / 3, 2 / 3], dtype=weights.dtype) / 7
    torch.testing.assert_close(easy, expected)


def test_shape_only_phase_draws_only_shape_questions():
    kinds = ["shape", "color", "yes/no", "shape"]
    weights = sampling_weights(_encoded(kinds, [0, 0, 0, 1], [False] * 4), TrainConfig(), True)
    assert (weights[[1, 2]] == 0).all() and (weights[[0, 3]] > 0).all()


def test_asks_about_present_reads_negations():
    def sample(question, answer):
        return Sample(id="x", image=None, question=question, answer=answer, kind="yes/no",
                      boxes=(), target=(), mask=None, dataset="t")

    assert asks_about_present(sample("is there a red shape ?", "yes"))
    assert not asks_about_present(sample("is there a red shape ?", "no"))
    assert asks_about_present(sample("is there not a red shape ?", "no"))
    assert not asks_about_present(sample("is no circle present ?", "yes"))


def test_yes_no_cells_get_equal_weight():
    # two template groups x present/absent: four cells, 1 + 3 + 2 + 2 questions
    kinds = ["yes/no"] * 8
    groups = [0, 0, 0, 0, 3, 3, 3, 3]
    present = [True, False, False, False, True, True, False, False]
    config = TrainConfig(fine_grained_share=0.0, balance_yes_no=True)
    weights = sampling_weights(_encoded(kinds, [0] * 8, present, groups), config, False)
    cells = [[0], [1, 2, 3], [4, 5], [6, 7]]
    for cell in cells:
        assert torch.isclose(weights[cell].sum(), torch.tensor(0.25, dtype=weights.dtype))


def test_yes_no_group_reads_attribute_and_negation():
    def sample(question):
        return Sample(id="x", image=None, question=question, answer="yes", kind="yes/no",
                      boxes=(), target=(), mask=None, dataset="t")

    assert yes_no_group(sample("is there a red shape ?")) == 0
    assert yes_no_group(sample("is there not a red shape ?")) == 1
    assert yes_no_group(sample("is a circle present ?")) == 2
    assert yes_no_group(sample("is no circle present ?")) == 3


def test_float16_save_loads_back_as_the_rounded_float32_model(tmp_path):
    from probes.models.loading import load_model

    loaded = load_model("tiny-random-llava")
    original = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    save_weights(loaded.model, loaded.processor, tmp_path, "float16")
    again = load_model(str(tmp_path))  # dtype auto: float32 on CPU
    saved = dict(again.model.named_parameters())
    assert set(saved) == set(original)
    for name, weight in original.items():
        assert saved[name].dtype == torch.float32
        assert torch.equal(saved[name], weight.half().float()), name
    assert (tmp_path / "model.safetensors").stat().st_size < 0.55 * sum(
        w.numel() * 4 for w in original.values())
