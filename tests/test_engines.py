"""Every operation of the :class:`~probes.engine.Engine` interface, the fast engine against the
nnsight engine on each tiny family (float32, 1e-5), and the residual stream, the logit lens and
patching against hand computations from ``output_hidden_states`` and the model's own modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_FAMILIES, consistency_inputs

from probes.engine import Patch, unembed
from probes.engines import DEFAULT, choose, named, names, recorded
from probes.errors import UserError
from probes.masking import Knockout, SetKnockout
from probes.models.loading import load_model
from probes.record import AttentionRecorder
from probes.tokens import token_groups

MODELS = list(TINY_FAMILIES)
TOLERANCE = 1e-5
FAST, NNSIGHT = named("fast"), named("nnsight")


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    inputs = consistency_inputs(loaded)
    groups = token_groups(loaded.adapter, inputs)
    return loaded, inputs, groups


def _both(setup, **options):
    loaded, inputs, groups = setup
    return (FAST.prefill(loaded, inputs, groups, **options),
            NNSIGHT.prefill(loaded, inputs, groups, **options))


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= TOLERANCE


def _recorder(groups) -> AttentionRecorder:
    return AttentionRecorder(queries=groups.get("question,last"), keys=groups.image)


def test_the_registry_names_chooses_and_records_engines():
    assert names() == ("fast", "nnsight") and DEFAULT == FAST and named(FAST) is FAST
    assert recorded(FAST) == {} and recorded(NNSIGHT) == {"engine": "nnsight"}
    assert choose("nnsight") == NNSIGHT != FAST
    with pytest.raises(UserError, match="unknown engine 'torchlens'; use fast or nnsight"):
        choose("torchlens")


def test_prefill_and_recording_agree(setup):
    loaded, inputs, groups = setup
    fast_recorder, ours_recorder = _recorder(groups), _recorder(groups)
    fast = FAST.prefill(loaded, inputs, groups, record=fast_recorder)
    ours = NNSIGHT.prefill(loaded, inputs, groups, record=ours_recorder)
    _close(ours.logits, fast.logits)
    plain = loaded.model(**inputs.batch).logits[0, -1].float()
    _close(fast.logits, plain)  # the model's own output
    alone_fast, alone_ours = _recorder(groups), _recorder(groups)
    _close(NNSIGHT.record(loaded, inputs, alone_ours), FAST.record(loaded, inputs, alone_fast))
    for layer in range(loaded.adapter.num_layers):
        for recorder in (ours_recorder, alone_fast, alone_ours):
            _close(recorder.maps[layer], fast_recorder.maps[layer])


def test_knockouts_and_decoding_agree(setup):
    loaded, inputs, groups = setup
    fast, ours = _both(setup)
    n = loaded.adapter.num_layers
    sweep = [Knockout.window("image->question,last", layer, 1, n) for layer in range(n)]
    expected = FAST.knockouts(fast, sweep, batch_size=4)
    got = NNSIGHT.knockouts(ours, sweep, batch_size=5)
    _close(got.logits, expected.logits)
    assert float((got.logits - fast.logits).abs().max()) > 1e-4  # the knockouts do something
    text = np.sort(np.concatenate([groups.question, groups.template, groups.last]))
    conditions = [None, SetKnockout(text, groups.image[::2], tuple(range(n)), generated=True)]
    loaded.model.generation_config.eos_token_id = -1  # every step, whatever the token
    for got, expected in zip(NNSIGHT.generate(ours, conditions, 3),
                             FAST.generate(fast, conditions, 3)):
        assert got.tokens == expected.tokens
        _close(got.logits, expected.logits)


def test_the_residual_stream_and_the_lens_equal_a_hand_computation(setup):
    loaded, inputs, groups = setup
    fast, ours = _both(setup)
    n = loaded.adapter.num_layers
    layers, positions = [n - 1, 0, n // 2], [int(groups.last[0]), int(groups.image[0]), 1]
    states = loaded.model(**inputs.batch, output_hidden_states=True).hidden_states
    norm = loaded.adapter.final_norm(loaded.model)
    head = loaded.adapter.lm_head(loaded.model)
    for engine, prefill in ((FAST, fast), (NNSIGHT, ours)):
        residual = engine.residual(prefill, layers, positions)
        lens = engine.lens(prefill, layers, positions)
        # hidden_states[i + 1] leaves layer i; the last entry is already through the final norm
        _close(residual[1:], torch.stack([states[layer + 1][0, positions] for layer in layers[1:]]))
        _close(norm(residual[0]), states[n][0, positions])
        hand = torch.stack([head(norm(states[layer + 1][0, positions])) for layer in layers[1:]])
        _close(lens[1:], hand.float())
        _close(lens[0], head(states[n][0, positions]).float())
        _close(lens[0, 0], fast.logits)  # the last layer's lens at last: the model's output
        _close(unembed(loaded, residual), lens)
    _close(NNSIGHT.residual(ours, layers, positions), FAST.residual(fast, layers, positions))
    _close(NNSIGHT.lens(ours, layers, positions), FAST.lens(fast, layers, positions))


def test_patching_agrees_and_equals_a_hand_computation(setup):
    loaded, inputs, groups = setup
    fast, ours = _both(setup)
    n = loaded.adapter.num_layers
    last = int(groups.last[0])
    clean = FAST.residual(fast, [1], groups.question)[0]
    for engine, prefill in ((FAST, fast), (NNSIGHT, ours)):
        # the clean stream put back changes nothing
        _close(engine.patch(prefill, [Patch(1, groups.question, clean)]), fast.logits)
        # the last layer's stream at last is what the head reads: head(norm(v))
        value = torch.randn(1, loaded.model.config.get_text_config().hidden_size,
                            generator=torch.Generator().manual_seed(0))
        _close(engine.patch(prefill, [Patch(n - 1, np.array([last]), value)]),
               unembed(loaded, value)[0])
    noise = torch.randn(groups.image.size, clean.shape[-1], generator=torch.Generator().manual_seed(1))
    patches = [Patch(2, groups.image, noise), Patch(0, np.array([last]), clean[:1])]
    expected = FAST.patch(fast, patches)
    _close(NNSIGHT.patch(ours, patches), expected)
    assert float((expected - fast.logits).abs().max()) > 1e-4  # the patch does something
