"""The executor against the naive way (one full masked forward per condition, batch 1)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from probes.masking import Knockout
from probes.models.loading import load_model
from probes.run import run_knockouts, run_knockouts_naively

MODELS = ["tiny-random-llava", "tiny-random-llava-next", "tiny-random-qwen2.5-vl"]


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    loaded = load_model(request.param)
    inputs = loaded.adapter.build_inputs([Image.new("RGB", (90, 60), (30, 160, 60))],
                                         ["what shape is in the image ?"])
    return loaded, inputs


def _sweep(n, flows, window):
    return [Knockout.window(flows, layer, window, n) for layer in range(n)]


@pytest.mark.parametrize("flows", ["image->question,last", "image->last", "question->last",
                                   "system->image"])
@pytest.mark.parametrize("window", [1, 3])
def test_executor_equals_naive_full_reruns(setup, flows, window):
    loaded, inputs = setup
    sweep = _sweep(loaded.adapter.num_layers, flows, window)
    result = run_knockouts(loaded, inputs, sweep, batch_size=3)
    naive = run_knockouts_naively(loaded, inputs, sweep)
    torch.testing.assert_close(result.logits, naive, atol=1e-5, rtol=0)
    # the knockouts do something, and the prefix really is shared
    assert (result.logits - result.clean_logits).abs().amax() > 1e-4
    assert 0 < result.prefix_length < inputs.input_ids.shape[1]


def test_mixed_flows_in_one_batch(setup):
    loaded, inputs = setup
    n = loaded.adapter.num_layers
    sweep = [Knockout.window("image->last", n - 1, 1, n), Knockout.window("question->last", 0, 2, n),
             Knockout.window("image->question", 1, 1, n)]
    result = run_knockouts(loaded, inputs, sweep, batch_size=8)
    torch.testing.assert_close(result.logits, run_knockouts_naively(loaded, inputs, sweep),
                               atol=1e-5, rtol=0)
