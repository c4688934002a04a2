"""Activation patching (probes.patching and the engines' patch operations) against a plain
PyTorch reference written here: one forward per condition with forward hooks on the modules
named by hand (``layers[l]``, ``.self_attn``, ``.mlp``, ``.self_attn.o_proj``), on every tiny
family and on tiny-llava, within 1e-5 in float32; both engines; batched conditions joining at
their first patched layer with the shared prefix; reading sites; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES, consistency_inputs

from probes.engines import named
from probes.errors import UserError
from probes.models.loading import load_model
from probes.patching import Patch, Site, check_site, site_names
from probes.tokens import token_groups

TOLERANCE = 1e-5
FAST, NNSIGHT = named("fast"), named("nnsight")


@pytest.fixture(scope="module", params=[*TINY_FAMILIES, "tiny-llava"])
def setup(request):
    loaded = load_model(request.param)
    inputs = consistency_inputs(loaded)
    return loaded, inputs, token_groups(loaded.adapter, inputs)


def _reference_module(model, site: Site):
    """(module, hooks its input) by hand: every family here keeps its decoder layers at
    model.model.language_model.layers (Idefics3 and SmolVLM: model.model.text_model.layers),
    attention at .self_attn (output projection .o_proj) and the MLP at .mlp."""
    inner = model.model
    layers = (inner.text_model if hasattr(inner, "text_model") else inner.language_model).layers
    if site.layer == -1:
        return layers[0], True
    layer = layers[site.layer]
    return {"residual": (layer, False), "attn": (layer.self_attn, False),
            "mlp": (layer.mlp, False), "head": (layer.self_attn.o_proj, True)}[site.kind]


def _head_columns(loaded, site: Site) -> slice:
    size = loaded.model.config.get_text_config().hidden_size // loaded.adapter.num_heads
    return slice(None) if site.head is None else slice(site.head * size, (site.head + 1) * size)


@torch.inference_mode()
def reference(loaded, inputs, patches, reads=(), positions=()):
    """One plain forward with hooks writing ``patches`` (and reading ``reads`` at
    ``positions``): (last position's logits, read values)."""
    handles, found = [], {}
    by_site: dict[Site, list] = {}
    for patch in patches:
        by_site.setdefault(patch.site, []).append(patch)

    def edit(site, tensor):
        cols = _head_columns(loaded, site)
        for patch in by_site.get(site, []):
            tensor[0, torch.as_tensor(patch.positions), cols] = patch.values.to(tensor.dtype)
        for index, read in enumerate(reads):
            if read == site:
                found[index] = tensor[0, list(positions), cols].float().clone()

    for site in {*by_site, *reads}:
        module, is_input = _reference_module(loaded.model, site)
        if is_input:
            def pre(module, args, site=site):
                tensor = args[0].clone()
                edit(site, tensor)
                return (tensor, *args[1:])
            handles.append(module.register_forward_pre_hook(pre))
        else:
            def post(module, args, output, site=site):
                edit(site, output[0] if isinstance(output, tuple) else output)
            handles.append(module.register_forward_hook(post))
    try:
        logits = loaded.model(**inputs.batch, use_cache=False).logits[0, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    return logits, [found[i] for i in range(len(reads))]


def _close(got, expected):
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= TOLERANCE


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _conditions(loaded, groups):
    """Conditions over every site, several patches in some, from random values."""
    n, hidden = loaded.adapter.num_layers, loaded.adapter.hidden_size
    head_dim = loaded.adapter.head_dim
    last, question, image = groups.last, groups.question, groups.image
    return [
        [Patch(n // 2, last, _random((1, hidden), 1))],
        [Patch(0, question, _random((question.size, hidden), 2), "attn")],
        [Patch(n - 1, image[:3], _random((3, hidden), 3), "mlp")],
        [Patch(1, last, _random((1, head_dim), 4), "head", head=1)],
        [Patch(-1, image, _random((image.size, hidden), 5))],
        [],  # nothing patched: the target run itself
        [Patch(2, question, _random((question.size, head_dim), 6), "head", head=0),
         Patch(1, last, _random((1, hidden), 7), "mlp"),
         Patch(3, image[-2:], _random((2, hidden), 8), "attn")],
    ]


def test_patching_equals_a_hook_reference_on_both_engines(setup):
    loaded, inputs, groups = setup
    conditions = _conditions(loaded, groups)
    expected = torch.stack([reference(loaded, inputs, condition)[0] for condition in conditions])
    assert float((expected[0] - expected[5]).abs().max()) > 1e-3  # patches change the answer
    for engine in (FAST, NNSIGHT):
        prefill = engine.prefill(loaded, inputs, groups)
        _close(engine.patch_many(prefill, conditions, batch_size=3), expected)
        _close(engine.patch(prefill, conditions[3]), expected[3])


def test_a_corrupt_run_with_patches_on_top_equals_the_reference(setup):
    """Denoising: the run patched into holds its own edit (noise on the image embeddings), and
    conditions write clean activations on top of it, batched with the shared prefix."""
    loaded, inputs, groups = setup
    hidden = loaded.adapter.hidden_size
    noise = [Patch(-1, groups.image, _random((groups.image.size, hidden), 9))]
    sites = [Site("residual", 1), Site("attn", 2), Site("mlp", 0), Site("head", 1, 0),
             Site("residual", -1)]
    positions = np.concatenate([groups.question, groups.last])
    _, clean_values = reference(loaded, inputs, [], sites, positions)
    corrupt_logits, corrupt_values = reference(loaded, inputs, noise, sites, positions)
    conditions = [[Patch(site.layer, positions, values, site.kind, site.head)]
                  for site, values in zip(sites, clean_values)]
    expected = torch.stack([reference(loaded, inputs, noise + c)[0] for c in conditions])
    for engine in (FAST, NNSIGHT):
        clean = engine.prefill(loaded, inputs, groups)
        for got, want in zip(engine.read(clean, sites, positions), clean_values):
            _close(got, want)
        corrupt = engine.patched_prefill(loaded, inputs, groups, noise)
        _close(corrupt.logits, corrupt_logits)
        for got, want in zip(engine.read(corrupt, sites, positions), corrupt_values):
            _close(got, want)
        _close(engine.patch_many(corrupt, conditions, batch_size=2), expected)


def test_the_shared_prefix_starts_at_the_first_patched_position(monkeypatch):
    """Only the positions from a condition's first patched one on are recomputed (as knockouts
    do), each first position's conditions from their own prefix."""
    from probes import patching

    loaded = load_model("tiny-random-llava")
    inputs = consistency_inputs(loaded)
    groups = token_groups(loaded.adapter, inputs)
    seen = []
    real = patching.run_layers

    def spy(loaded, entering, starts, rows, start, stop, *rest, **options):
        seen.append((start, stop, list(starts)))
        return real(loaded, entering, starts, rows, start, stop, *rest, **options)

    monkeypatch.setattr(patching, "run_layers", spy)
    prefill = FAST.prefill(loaded, inputs, groups)
    hidden = loaded.adapter.hidden_size
    FAST.patch_many(prefill, [[Patch(4, groups.last, _random((1, hidden), 0))],
                              [Patch(2, groups.question, _random((groups.question.size, hidden), 1))]])
    length = int(inputs.input_ids.shape[1])
    assert seen == [(int(groups.question.min()), length, [2]), (int(groups.last[0]), length, [4])]


def test_sites_a_family_lacks_and_heads_out_of_range_are_refused(monkeypatch):
    loaded = load_model("tiny-random-llava")
    n, heads = loaded.adapter.num_layers, loaded.adapter.num_heads
    assert site_names(loaded) == ("residual", "attn", "mlp", "head")
    check_site(loaded, Site("residual", -1))
    with pytest.raises(UserError, match=f"head {heads} is out of range: this model has heads 0..{heads - 1}"):
        check_site(loaded, Site("head", 0, heads))
    with pytest.raises(UserError, match=f"layer {n} is out of range for the mlp site"):
        check_site(loaded, Site("mlp", n))
    with pytest.raises(UserError, match="unknown site 'ffn'; use residual, attn, mlp, head"):
        check_site(loaded, Site("ffn", 0))
    monkeypatch.setattr(type(loaded.adapter), "mlp_name", None)
    with pytest.raises(UserError, match="the llava family has no 'mlp' site to patch; its "
                                        "sites are residual, attn, head"):
        check_site(loaded, Site("mlp", 0))


# ---------------------------------------------------------------- the analysis


def _run(corrupt, engine="fast", limit=6, **options):
    from analyses.data import load_dataset
    from analyses.patching import Patching, PatchingConfig
    from analyses.runner import LocalBackend, run

    loaded = load_model("tiny-llava")
    dataset = load_dataset("easy-vqa", limit=limit)
    config = PatchingConfig(corrupt=corrupt, sites=("residual", "attn", "head"),
                            groups=("image", "last"), n_bootstrap=50, batch_size=5,
                            engine=engine, **options)
    return loaded, dataset, run(Patching(config), LocalBackend(loaded), dataset)


def test_the_analysis_effect_equals_a_reference_computation():
    """Per used sample, the normalised logit difference of patching the clean residual / attn
    output / a head into the blank-image run, recomputed with the hook reference."""
    from PIL import Image

    loaded, dataset, result = _run("blank")
    arrays, summary = result.arrays, result.summary
    used = np.flatnonzero(arrays["skipped"] == "")
    assert used.size and summary["n_used"] == used.size
    for index in used[:2]:
        sample = dataset[int(index)]
        other = Image.new("RGB", sample.image.size, (128, 128, 128))
        clean_inputs = loaded.adapter.build_inputs([sample.image], [sample.ask])
        corrupt_inputs = loaded.adapter.build_inputs([other], [sample.ask])
        groups = token_groups(loaded.adapter, clean_inputs)
        clean = reference(loaded, clean_inputs, [])[0].double()
        corrupt = reference(loaded, corrupt_inputs, [])[0].double()
        c, x = int(clean.argmax()), int(corrupt.argmax())
        assert (c, x) == (arrays["clean_token"][index], arrays["corrupt_token"][index]) and c != x
        checks = [(Site("residual", 2), groups.last, ("effect", (0, 2, 1))),
                  (Site("attn", 1), groups.image, ("effect", (1, 1, 0))),
                  (Site("head", 3, 1), groups.last, ("head_effect", (3, 1)))]
        for site, where, (name, cell) in checks:
            _, (values,) = reference(loaded, clean_inputs, [], [site], where)
            patched = reference(loaded, corrupt_inputs,
                                [Patch(site.layer, where, values, site.kind, site.head)])[0]
            ld = [float(run[c] - run[x]) for run in (clean, corrupt, patched.double())]
            expected = (ld[2] - ld[1]) / (ld[0] - ld[1])
            assert abs(arrays[name][index][cell] - expected) < 1e-3, (site, expected)
    # the mean row is the mean over the used samples
    row = next(r for r in summary["per_layer"] if r["series"] == "residual:last"
               and r["layer"] == 2)
    assert row["n"] == used.size
    assert abs(row["mean"] - float(arrays["effect"][used, 0, 2, 1].mean())) < 1e-9
    assert summary["restoring_layers"]["residual:last"][-1] == loaded.adapter.num_layers - 1


def test_the_engines_give_the_same_analysis():
    *_, fast = _run("noise", "fast", limit=3, noise_scale=10.0)
    *_, ours = _run("noise", "nnsight", limit=3, noise_scale=10.0)
    assert (fast.arrays["skipped"] == "").any()
    assert (fast.arrays["skipped"] == ours.arrays["skipped"]).all()
    for name in ("effect", "head_effect"):
        np.testing.assert_allclose(ours.arrays[name], fast.arrays[name], atol=1e-4)


def _cli(argv, capsys):
    from analyses.patching.__main__ import main
    from probes.cli import run_cli

    code = run_cli(main, ["--model", "tiny-llava", "--bootstrap", "20", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _pair_data(folder, pair_of_second="a"):
    import json

    from analyses.data import load_dataset

    samples = [s for s in load_dataset("easy-vqa", limit=60) if s.kind == "shape"]
    first = samples[0]
    second = next(s for s in samples if s.answer != first.answer)
    rows = []
    for name, sample, pair in (("a", first, "b"), ("b", second, pair_of_second)):
        sample.image.save(folder / f"{name}.png")
        rows.append({"id": name, "image": f"{name}.png", "question": first.question,
                     "answer": sample.answer, "kind": "shape", "pair": pair})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_pairs_named_by_the_data_are_patched(tmp_path, capsys):
    import json

    data = _pair_data(tmp_path)
    code, out, err = _cli(["--data", str(data), "--corrupt", "pair", "--out",
                           str(tmp_path / "run")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_samples"] == 2 and "residual:last" in out
    assert summary["n_used"] + sum(summary["skipped_by_reason"].values()) == 2


@pytest.mark.parametrize(("argv", "sentence"), [
    (["--corrupt", "pair"], "sample 'pairs.jsonl/b' names the pair 'zz', which is not a sample id of this "
                            "data"),
    (["--sites", "residual,ffn"], "unknown site 'ffn'; use residual, attn, mlp, head."),
    (["--groups", "image,sky"], "unknown token group 'sky' to patch"),
    (["--noise-scale", "1e-9"], "--corrupt noise leaves the model's answer unchanged on every "
                                "one of the 2 samples"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, argv, sentence):
    data = _pair_data(tmp_path, pair_of_second="zz")
    code, _, err = _cli(["--data", str(data), "--out", str(tmp_path / "run"), *argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len([line for line in lines if line.startswith("error: ")]) == 1
    assert sentence in err


def _spied(monkeypatch) -> list:
    """(first computed position, layers the rows join at) of every run_layers call of
    probes.patching from now on."""
    from probes import patching

    seen = []
    real = patching.run_layers

    def spy(loaded, entering, starts, rows, start, stop, *rest, **options):
        seen.append((start, list(starts)))
        return real(loaded, entering, starts, rows, start, stop, *rest, **options)

    monkeypatch.setattr(patching, "run_layers", spy)
    return seen


@pytest.mark.parametrize("model", TINY_FAMILIES)
def test_restoring_a_corrupted_block_runs_only_the_positions_after_it(monkeypatch, model):
    """Denoising the residual stream at every position of the noised block (the image's span)
    makes every position up to the block's end the clean run's from that layer on: with the
    clean run as the source, only the positions after the block are computed, and the numbers
    are the reference's (sliding windows, Gemma 3's bidirectional image block and Qwen3-VL's
    DeepStack additions included)."""
    loaded = load_model(model)
    inputs = consistency_inputs(loaded)
    groups = token_groups(loaded.adapter, inputs)
    n = loaded.adapter.num_layers
    block = np.arange(groups.image[0], groups.image[-1] + 1)  # tiles' markers too: contiguous
    noise = [Patch(-1, block, _random((block.size, loaded.adapter.hidden_size), 3))]
    clean = FAST.prefill(loaded, inputs, groups)
    corrupt = FAST.patched_prefill(loaded, inputs, groups, noise)
    sites = [Site("residual", layer) for layer in range(-1, n)]
    values = FAST.read(clean, sites, block)
    conditions = [[Patch(site.layer, block, read)] for site, read in zip(sites, values)]
    conditions.append([Patch(1, groups.last, FAST.read(clean, [Site("residual", 1)],
                                                        groups.last)[0])])
    expected = torch.stack([reference(loaded, inputs, noise + c)[0] for c in conditions])
    seen = _spied(monkeypatch)
    _close(FAST.patch_many(corrupt, conditions, batch_size=16, source=clean), expected)
    after = int(block[-1]) + 1
    # the embeddings' patch and the last layer's run as any patch; layers 0..n-2 from the block
    assert sorted(seen) == sorted([(after, list(range(1, n))), (int(block[0]), [0, n - 1]),
                                  (int(groups.last[0]), [1])])
    _close(NNSIGHT.patch_many(NNSIGHT.patched_prefill(loaded, inputs, groups, noise),
                              conditions, source=NNSIGHT.prefill(loaded, inputs, groups)),
           expected)


@pytest.mark.parametrize("model", ["tiny-random-qwen3-vl", "tiny-random-llava"])
def test_another_images_run_restored_from_the_clean_one_equals_the_reference(monkeypatch,
                                                                              model):
    """Patching the clean residual stream at the image's positions into the run of another
    image (same layout): the clean run's keys and values stand for the block only where the two
    runs' DeepStack additions after the patched layer are the same (for Qwen3-VL, from the
    layer after its last DeepStack addition on), and the numbers are the reference's."""
    from PIL import Image

    loaded = load_model(model)
    inputs = consistency_inputs(loaded)
    other = loaded.adapter.build_inputs([Image.new("RGB", (90, 60), (20, 30, 200))],
                                        ["what color is the shape ?"])
    groups = token_groups(loaded.adapter, inputs)
    n, image = loaded.adapter.num_layers, groups.image
    clean = FAST.prefill(loaded, inputs, groups)
    target = FAST.prefill(loaded, other, token_groups(loaded.adapter, other))
    sites = [Site("residual", layer) for layer in range(n - 1)]
    conditions = [[Patch(site.layer, image, read)]
                  for site, read in zip(sites, FAST.read(clean, sites, image))]
    expected = torch.stack([reference(loaded, other, c)[0] for c in conditions])
    seen = _spied(monkeypatch)
    _close(FAST.patch_many(target, conditions, source=clean), expected)
    deepstack = loaded.adapter.deepstack_layers
    from_source = [layer for layer in range(n - 1) if layer > max(deepstack, default=-1)]
    assert (int(image[-1]) + 1, [layer + 1 for layer in from_source]) in seen
    assert len(from_source) < n - 1 if deepstack else len(from_source) == n - 1


def test_restoring_part_of_a_bidirectional_image_block_runs_the_whole_block(monkeypatch):
    """Gemma 3 reads its image block both ways: restoring the first half of a noised block
    leaves the block's earlier tokens reading its later (still noised) ones, so the clean
    run's keys and values cannot stand for them; the block is computed from its start."""
    loaded = load_model("tiny-random-gemma3")
    inputs = consistency_inputs(loaded)
    groups = token_groups(loaded.adapter, inputs)
    half = groups.image[: groups.image.size // 2]
    noise = [Patch(-1, half, _random((half.size, loaded.adapter.hidden_size), 3))]
    clean = FAST.prefill(loaded, inputs, groups)
    corrupt = FAST.patched_prefill(loaded, inputs, groups, noise)
    conditions = [[Patch(1, half, FAST.read(clean, [Site("residual", 1)], half)[0])]]
    expected = reference(loaded, inputs, noise + conditions[0])[0]
    seen = _spied(monkeypatch)
    _close(FAST.patch_many(corrupt, conditions, source=clean)[0], expected)
    assert seen == [(int(groups.image[0]), [1])]


def test_fine_grained_questions_are_paired_with_a_twin_differing_in_the_asked_attribute():
    from analyses.data import load_dataset
    from analyses.patching import Patching, PatchingConfig
    from analyses.patching.corrupt import counterpart, partners

    dataset = load_dataset("fine-grained", limit=4)  # colour, shape, count, relation
    assert partners(dataset, "pair") == {}  # generated, not named
    twins = [counterpart(dataset, {}, "pair", i, dataset[i]) for i in range(4)]
    assert twins[2] is None and twins[3] is None
    for sample, twin in zip(dataset, twins[:2]):
        assert twin.question == sample.question and twin.answer != sample.answer
        assert twin.boxes == sample.boxes and twin.id == f"{sample.id}/twin"
        changed = np.asarray(twin.image) != np.asarray(sample.image)
        assert changed.any() and not changed.any(-1)[~sample.mask & ~twin.mask].any()
    analysis = Patching(PatchingConfig(corrupt="pair"))
    loaded = load_model("tiny-llava")
    analysis.warm_up(loaded, dataset)
    records = analysis.measure("samples", loaded, [dataset[0], dataset[2]], [0, 2], {})
    assert records[0]["counterpart"] == f"{dataset[0].id}/twin"
    assert records[0]["skipped"] in ("", "unchanged") and records[1]["skipped"] == "unpaired"


def test_shards_merge_into_the_whole_run(tmp_path):
    from helpers import assert_same_run

    from analyses.data import load_dataset
    from analyses.merge import merge
    from analyses.patching import Patching, PatchingConfig
    from analyses.runner import LocalBackend, RunOptions, run

    backend = LocalBackend(load_model("tiny-llava"))
    easy = load_dataset("easy-vqa", limit=6)
    analysis = Patching(PatchingConfig(noise_scale=10.0, n_bootstrap=50))
    whole = run(analysis, backend, easy)
    directories = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        part = run(analysis, backend, easy, RunOptions(out=out, shard=(index, 2)))
        directories.append(part.save(out))
    assert_same_run(whole, merge(directories))
