"""Shared fixtures. Built-in random models are built into a per-session cache, so tests never
depend on what an earlier run left in ~/.cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    old = os.environ.get("FUSIONLENS_CACHE")
    os.environ["FUSIONLENS_CACHE"] = str(tmp_path_factory.mktemp("fusionlens-cache"))
    yield
    if old is None:
        os.environ.pop("FUSIONLENS_CACHE", None)
    else:
        os.environ["FUSIONLENS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llava():
    from probes.models.loading import load_model

    return load_model("tiny-random-llava")
