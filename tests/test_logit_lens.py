"""The logit lens (probes.logit_lens) against ``output_hidden_states`` through the final norm
and head by hand on the three tiny families, its last layer against the model's own logits,
the readout against the whole vocabulary, the nnsight engine against the hooks; and the
analysis (analyses.logit_lens): end to end on the embedded model, shards + merge, bad input,
figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES
from PIL import Image, ImageDraw

from probes.logit_lens import lens_logits, lens_readout, residuals
from probes.models.loading import load_model

FAMILIES = list(TINY_FAMILIES)
EXACT = 1e-5


def shape_image(size=(90, 60)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((10, 8, 50, 44), fill=(200, 30, 30))
    return image


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    loaded = load_model(request.param)
    inputs = loaded.adapter.build_inputs([shape_image()], ["what color is the shape ?"])
    return loaded, inputs


def by_hand(loaded, inputs, positions):
    """[layers, positions, vocab]: every decoder layer's output from ``output_hidden_states``
    (entry l + 1 leaves layer l; the last entry is already normed by the model) through
    ``model.model.language_model.norm`` (Idefics3 / SmolVLM: ``text_model``) and
    ``model.lm_head``, written out here."""
    model = loaded.model
    decoder = getattr(model.model, "text_model", None) or model.model.language_model
    with torch.inference_mode():
        output = model(**inputs.batch, output_hidden_states=True)
        states = output.hidden_states
        layers = len(states) - 1
        rows = [decoder.norm(states[layer + 1][0, positions])
                for layer in range(layers - 1)]
        rows.append(states[layers][0, positions])  # the model's own final norm, applied
        return model.lm_head(torch.stack(rows)).float(), output.logits[0].float()


def test_lens_equals_hidden_states_through_norm_and_head(family):
    loaded, inputs = family
    image = inputs.images[0].positions
    positions = np.concatenate([image[:5], image[-3:], [inputs.input_ids.shape[1] - 1]])
    expected, logits = by_hand(loaded, inputs, torch.from_numpy(positions))
    lens = lens_logits(loaded, inputs, positions)
    assert lens.shape == (loaded.adapter.num_layers, positions.size, expected.shape[-1])
    torch.testing.assert_close(lens, expected, atol=EXACT, rtol=0)
    # the last layer's lens is the model's own next-token logits at every position read
    torch.testing.assert_close(lens[-1], logits[torch.from_numpy(positions)], atol=EXACT, rtol=0)
    # and the layers differ: the lens reads each layer, not one of them many times
    assert (lens[0] - lens[-1]).abs().max() > 1e-2


def test_groups_negative_positions_and_chosen_layers(family):
    loaded, inputs = family
    whole = lens_logits(loaded, inputs, "image,last")
    some = lens_logits(loaded, inputs, [-1], layers=[2, 0])
    torch.testing.assert_close(some, whole[[2, 0], -1:], atol=EXACT, rtol=0)


def test_readout_equals_the_whole_vocabulary(family, monkeypatch):
    loaded, inputs = family
    monkeypatch.setattr("probes.logit_lens.CHUNK", 7)  # several chunks of image tokens
    tokens = [0, 3, int(inputs.input_ids[0, -1])]
    readout = lens_readout(loaded, inputs, "image", tokens=tokens, top_k=4)
    log_probs = lens_logits(loaded, inputs, "image").log_softmax(-1)
    top = log_probs.topk(4, dim=-1)
    torch.testing.assert_close(readout.top_log_probs, top.values, atol=EXACT, rtol=0)
    assert torch.equal(readout.top_ids[..., 0], log_probs.argmax(-1))
    torch.testing.assert_close(readout.token_log_probs, log_probs[..., tokens], atol=EXACT, rtol=0)
    # rank by counting, token by token: how many tokens have a strictly larger log-probability
    for t, token in enumerate(tokens):
        counted = (log_probs > log_probs[..., token:token + 1]).sum(-1)
        assert torch.equal(readout.token_ranks[..., t], counted)
    assert readout.layers == tuple(range(loaded.adapter.num_layers))


def test_nnsight_engine_reads_the_same_residuals(family):
    from probes.nnsight.lens import residuals as traced

    loaded, inputs = family
    fast = residuals(loaded, inputs, "image,last", layers=[3, 0, 1])
    other = traced(loaded, inputs, "image,last", layers=[3, 0, 1])
    torch.testing.assert_close(other, fast, atol=EXACT, rtol=0)
    a = lens_readout(loaded, inputs, "last", states=fast, layers=[3, 0, 1], tokens=[5])
    b = lens_readout(loaded, inputs, "last", states=other, layers=[3, 0, 1], tokens=[5])
    torch.testing.assert_close(a.token_log_probs, b.token_log_probs, atol=EXACT, rtol=0)


def test_refuses_bad_arguments(tiny_llava):
    from probes.errors import UserError

    inputs = tiny_llava.adapter.build_inputs([shape_image()], ["what color ?"])
    with pytest.raises(UserError, match="out of range"):
        lens_logits(tiny_llava, inputs, "last", layers=[9])
    with pytest.raises(UserError, match="empty"):
        lens_logits(tiny_llava, inputs, "object")
    with pytest.raises(ValueError, match="positions"):
        lens_logits(tiny_llava, inputs, [10_000])
    two = tiny_llava.adapter.build_inputs([shape_image()] * 2, ["what color ?"] * 2)
    with pytest.raises(ValueError, match="one input row"):
        lens_logits(tiny_llava, two, "last")


# ----------------------------------------------------------------------------- the analysis
@pytest.fixture(scope="module")
def easy():
    from analyses.data import load_dataset

    return load_dataset("easy-vqa", limit=6)


@pytest.fixture(scope="module")
def lens_run(tmp_path_factory):
    """The CLI on the embedded model, in process: 8 samples."""
    from analyses.logit_lens.__main__ import main

    out = tmp_path_factory.mktemp("lens") / "run"
    assert main(["--limit", "8", "--out", str(out), "--bootstrap", "200"]) == 0
    from analyses.results import RunResult

    return out, RunResult.load(out)


def test_cli_run_equals_the_lens_by_hand(lens_run):
    from analyses.data import load_dataset
    from analyses.grading import grade

    out, result = lens_run
    summary, arrays = result.summary, result.arrays
    assert summary["analysis"] == "logit_lens" and summary["n_samples"] == 8
    assert {"model", "data", "config", "versions", "seed", "skipped", "timing"} <= set(summary)
    loaded = load_model("tiny-llava")
    samples = load_dataset("easy-vqa", limit=8)
    for index in (0, 5):
        sample = samples[index]
        inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
        image = inputs.images[0].positions
        where = torch.from_numpy(np.append(image, inputs.input_ids.shape[1] - 1))
        logits, _ = by_hand(loaded, inputs, where)
        probabilities = logits.double().softmax(-1)
        answer = int(probabilities[-1, -1].argmax())  # the model's first reply token
        assert arrays["answer_token"][index] == answer
        np.testing.assert_allclose(arrays["answer_prob"][index],
                                   probabilities[:, -1, answer].numpy(), atol=EXACT, rtol=0)
        rank = (probabilities[:, -1] > probabilities[:, -1, answer:answer + 1]).sum(-1).numpy()
        np.testing.assert_array_equal(arrays["answer_rank"][index], rank)
        on_top = np.flatnonzero(rank == 0)
        assert arrays["first_top1"][index] == on_top[0]
        assert arrays["settled"][index] == next(
            k for k in range(rank.size) if (rank[k:] == 0).all())
        start, stop = arrays["image_offsets"][index:index + 2]
        top = probabilities[:, :-1].argmax(-1).numpy()  # [layers, image tokens]
        np.testing.assert_array_equal(arrays["image_top1"][start:stop].T, top)
        # each image token's (grid, row, col): LLaVA-1.5's one grid, row-major
        side = int(round((stop - start) ** 0.5))
        np.testing.assert_array_equal(arrays["image_cells"][start:stop],
                                      [[0, r, c] for r in range(side) for c in range(side)])
        # in-box: the image patches whose pixel box overlaps the sample's mask
        from probes.inputs import token_boxes

        mask = np.asarray(sample.region())
        inside = np.array([mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].any()
                           for x0, y0, x1, y1 in token_boxes(inputs)])
        np.testing.assert_array_equal(arrays["in_box"][start:stop], inside)
        names = top == answer
        np.testing.assert_allclose(arrays["names_answer"][index, 1], names[:, inside].mean(1))
        np.testing.assert_allclose(arrays["names_answer"][index, 2], names[:, ~inside].mean(1))
        assert arrays["correct"][index] == grade(loaded, [sample])[0]
    # the per-layer rows are the means of the arrays
    row = next(r for r in summary["per_layer"] if r["series"] == "answer_prob"
               and r["subset"] == "correct" and r["layer"] == 2)
    assert row["n"] == arrays["correct"].sum() == summary["n_correct"]
    assert row["mean"] == pytest.approx(arrays["answer_prob"][arrays["correct"], 2].mean())
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    last = [r for r in summary["per_layer"] if r["series"] == "answer_top1" and r["layer"] == 5]
    assert all(r["mean"] == 1.0 for r in last)  # the model's own top token at the last layer
    first = next(r for r in summary["emergence"] if r["measure"] == "first_top1"
                 and r["subset"] == "all")
    assert first["counts"] == np.bincount(arrays["first_top1"], minlength=6).tolist()
    assert summary["skipped"] == [] and summary["layer_masking"] is None


def test_figures_are_drawn_and_redraw_without_a_model(lens_run, tmp_path):
    from figures.paper import main as paper

    out, result = lens_run
    names = {"logit_lens_answer", "logit_lens_emergence", "logit_lens_region",
             "logit_lens_kinds", "logit_lens_image_tokens"}
    assert {p.stem for p in out.glob("*.png")} == names
    assert paper([str(out), "--out", str(tmp_path)]) == 0
    assert {p.stem for p in (tmp_path / out.name).glob("*.png")} == names
    from figures.logit_lens import image_tokens

    figure = image_tokens(result.summary, result.arrays)
    example = int(np.flatnonzero(result.arrays["sample_index"]
                                 == result.arrays["example_index"])[0])
    start, stop = result.arrays["image_offsets"][example:example + 2]
    top = result.arrays["image_top1"][start:stop]
    for axes, layer in zip(figure.axes, result.summary["figure_layers"]):
        named = int((top[:, layer] == result.arrays["answer_token"][example]).sum())
        assert axes.get_title().startswith(f"layer {layer}: {named} name")


def test_shards_merge_into_the_whole_run(easy, tmp_path):
    from helpers import assert_same_run

    from analyses.logit_lens import LensConfig, LogitLens
    from analyses.merge import merge
    from analyses.runner import LocalBackend, RunOptions, run

    backend = LocalBackend(load_model("tiny-llava"))
    analysis = LogitLens(LensConfig(n_bootstrap=100))
    whole = run(analysis, backend, easy)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run(analysis, backend, easy, RunOptions(out=out, shard=(index, 2)))
        directories.append(part.save(out))
    assert_same_run(whole, merge(directories))


def _no_box_data(folder, easy) -> str:
    rows = []
    for i, sample in enumerate(list(easy)[:3]):
        sample.image.save(folder / f"image{i}.png")
        rows.append({"image": f"image{i}.png", "question": sample.question,
                     "answer": sample.answer, "kind": sample.kind, "id": f"q{i}"})
    path = folder / "no_boxes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_data_without_boxes_skips_the_region_shares(easy, tmp_path):
    from analyses.logit_lens.__main__ import main
    from analyses.results import RunResult

    data = _no_box_data(tmp_path, easy)
    assert main(["--data", data, "--out", str(tmp_path / "run"), "--bootstrap", "50"]) == 0
    summary = RunResult.load(tmp_path / "run").summary
    assert [row["part"] for row in summary["skipped"]] == ["in_box and out_box shares"]
    rows = [r for r in summary["per_layer"] if r["series"] == "in_box_names_answer"]
    assert rows and all(r["n"] == 0 and np.isnan(r["mean"]) for r in rows)
    assert all(r["n"] == 3 for r in summary["per_layer"]
               if r["series"] == "image_names_answer" and r["subset"] == "all")


def _layer_masking_summary(folder, model="tiny-llava", data="easy-vqa", analysis="layer_masking"):
    from analyses.common import data_record
    from analyses.data import load_dataset
    from analyses.results import RunResult

    summary = {"analysis": analysis, "model": {"id": model, "layers": 6},
               "data": {**data_record(load_dataset("easy-vqa", limit=8)), "name": data},
               "n_samples": 6, "num_layers": 6, "flows": ["image->question,last"],
               "fusion_layers": [1, 3], "fusion_layers_by_kind": {}}
    RunResult(summary).save(folder)
    return str(folder)


def test_fusion_layers_beside_the_lens(tmp_path, capsys):
    from analyses.logit_lens.__main__ import main
    from analyses.results import RunResult

    run = _layer_masking_summary(tmp_path / "lm")
    assert main(["--limit", "8", "--layer-masking", run, "--out", str(tmp_path / "lens"),
                 "--bootstrap", "50"]) == 0
    assert "fusion layers [1, 3]" in capsys.readouterr().out
    result = RunResult.load(tmp_path / "lens")
    beside = result.summary["layer_masking"]
    assert beside["fusion_layers"] == [1, 3] and beside["same_samples"]
    layers = result.arrays["first_top1"][result.arrays["correct"]]
    assert beside["first_top1"] == {"n": int(layers.size),
                                    "before_fusion": int((layers < 1).sum()),
                                    "within_fusion": int(((layers >= 1) & (layers <= 3)).sum()),
                                    "after_fusion": int((layers > 3).sum())}


@pytest.mark.parametrize("kind, message", [
    ("missing", "no readable summary.json"),
    ("other analysis", "is a attenuation run, not a layer masking run"),
    ("other model", "of the model tiny-random-llava, not tiny-llava"),
    ("other data", "is a run on fine-grained/test, not on easy-vqa/test"),
])
def test_bad_layer_masking_run_gets_one_sentence_and_exit_2(kind, message, tmp_path, capsys):
    from analyses.logit_lens.__main__ import main
    from probes.cli import run_cli

    folder = tmp_path / "lm"
    folder.mkdir()
    if kind != "missing":
        _layer_masking_summary(folder, **{"other analysis": {"analysis": "attenuation"},
                                          "other model": {"model": "tiny-random-llava"},
                                          "other data": {"data": "fine-grained"}}[kind])
    code = run_cli(main, ["--limit", "2", "--layer-masking", str(folder),
                          "--out", str(tmp_path / "lens")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("error: ")
    assert message in error[0]
    assert not (tmp_path / "lens").exists()  # refused before any work


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "4"], "--batch-size must be 1"),
    (["--bootstrap", "0"], "--bootstrap takes a whole number from 1"),
    (["--figure-layers", "9"], "layer 9 is out of range"),
])
def test_bad_options_get_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    from analyses.logit_lens.__main__ import main
    from probes.cli import run_cli

    assert run_cli(main, [*argv, "--limit", "2", "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


def test_both_engines_measure_the_same_sample_records(easy):
    from analyses.logit_lens import measure_sample

    loaded = load_model("tiny-llava")
    for sample in list(easy)[:3]:
        fast = measure_sample(loaded, sample, "fast")
        other = measure_sample(loaded, sample, "nnsight")
        assert fast["answer_token"] == other["answer_token"]
        np.testing.assert_allclose(other["answer_prob"], fast["answer_prob"], atol=EXACT, rtol=0)
        for name in ("answer_rank", "image_top1", "in_box", "first_top1", "settled"):
            np.testing.assert_array_equal(other[name], fast[name], err_msg=name)
        np.testing.assert_allclose(other["names_answer"], fast["names_answer"], atol=EXACT)
