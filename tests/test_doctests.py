"""Every docstring example is a test: the examples in the docs must run and be right."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "probes.tracing", "probes.run", "probes.masking", "probes.record", "probes.steer",
    "probes.images", "probes.models.registry", "probes.models.answer", "probes.models.loading",
    "probes.models.adapters.grids", "probes.models.zoo.vocab", "analyses.stats",
    "analyses.results", "analyses.layer_masking", "analyses.layer_masking.findings",
    "figures.style", "figures.layer_masking", "analyses.attention_evolution",
    "analyses.attention_evolution.scores", "analyses.contrastive_attention",
    "analyses.contrastive_attention.contrast", "figures.attention_evolution",
    "analyses.runner.store", "analyses.common", "analyses.grading", "probes.devices",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0
