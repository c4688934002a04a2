"""Shared fixtures. Built-in random models are built into a per-session cache, so tests never
depend on what an earlier run left in ~/.cache.

Every test fails on a deprecation warning raised from fusionlens' own calls (see
:func:`deprecations_from_our_code`), so no deprecated transformers or torch call slips in.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch

pytest_plugins = ("pytester",)  # tests/test_deprecations.py runs a test session of its own

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(min(2, torch.get_num_threads()))

OUR_PACKAGES = frozenset({"probes", "analyses", "figures"})
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# A warning raised while a library module's top-level code runs (its import) is allowed even
# when our code triggered the import: we cannot influence it. With transformers 5.24, torch
# 2.13, nnsight and ray none is raised (`python -W default` importing every module of probes,
# analyses and figures prints nothing); a library that adds one is let through by this rule.


# Packages whose frames only pass a call on (module call machinery, hooks, tracing): a
# deprecation raised by library X is still our call when our code called X through them.
PASS_THROUGH = {"torch", "accelerate", "nnsight", "warnings", "functools", "contextlib"}


def _our_call_site(frame) -> str | None:
    """``file:line`` of the innermost frame of probes, analyses or figures on the stack from
    ``frame`` outwards, when our code called the library that warns (through call machinery
    only: ``PASS_THROUGH``); None when there is none, when another library stands in between
    (seaborn's own use of a deprecated matplotlib call is seaborn's, not ours), or when a
    library import runs in between."""
    warner = None
    while frame is not None:
        package = (frame.f_globals.get("__name__") or "").partition(".")[0]
        if package in OUR_PACKAGES:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        if frame.f_code.co_name == "<module>":  # a module's import is running: not our call
            return None
        if package not in PASS_THROUGH:
            if warner is None:
                warner = package
            elif package != warner:  # a library calling another library
                return None
        frame = frame.f_back
    return None


@contextlib.contextmanager
def deprecations_from_our_code() -> Iterator[list[str]]:
    """Collect (as "Category at file:line: message") every deprecation warning whose call
    stack passes through our packages, whichever file the warning names (transformers
    attributes its own to its own files). Every warning is still handed on as before."""
    found: list[str] = []
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DEPRECATIONS):
            where = _our_call_site(sys._getframe(1))
            if where is not None:
                found.append(f"{category.__name__} at {where}: {message}")
        previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        for category in DEPRECATIONS:  # every occurrence, not once per place in a library
            warnings.simplefilter("always", category)
        warnings.showwarning = showwarning
        yield found


def _fail_on_our_deprecations() -> Iterator[None]:
    with deprecations_from_our_code() as found:
        result = yield
    if found:
        pytest.fail("deprecated call from fusionlens' code: " + "; ".join(dict.fromkeys(found)),
                    pytrace=False)
    return result


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_fail_on_our_deprecations)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_fail_on_our_deprecations)
pytest_runtest_teardown = pytest.hookimpl(wrapper=True)(_fail_on_our_deprecations)


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
