"""The test run fails on a deprecation warning raised from fusionlens' own calls (tests/conftest.py),
and only on those; the engine passes its KV cache by the name the installed transformers takes."""

from __future__ import annotations

import doctest
import warnings
from pathlib import Path

import torch
from conftest import deprecations_from_our_code
from PIL import Image

from probes import compat, run
from probes.masking import Knockout
from probes.run import run_knockouts

CONFTEST = Path(__file__).with_name("conftest.py")

# A deprecated keyword through transformers' own decorator, which attributes the warning to a
# transformers file (as it does for `past_key_values`), called once from a function whose module
# is in our packages and once from the test itself; and a library whose import warns.
INNER_TESTS = '''
import importlib

from transformers.utils.deprecation import deprecate_kwarg


@deprecate_kwarg("old", version="99.0", new_name="new")
def library_function(new=None):
    return new


OURS = {"__name__": "probes._calls_a_deprecated_api", "library_function": library_function,
        "importlib": importlib}
exec("def our_call():\\n    return library_function(old=1)\\n"
     "def our_import():\\n    return importlib.import_module('noisy_library').VALUE\\n", OURS)


def test_our_deprecated_call_fails():
    assert OURS["our_call"]() == 1


def test_a_library_internal_deprecation_outside_our_code_passes():
    assert library_function(old=2) == 2


def test_a_librarys_import_time_deprecation_passes():
    assert OURS["our_import"]() == 3
'''


def test_a_deprecated_call_through_our_code_fails_the_test(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(noisy_library="import warnings\nwarnings.warn('old', DeprecationWarning)\n"
                                      "VALUE = 3\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    failed = [report for report in result.reprec.getreports("pytest_runtest_logreport")
              if report.failed]
    assert [report.nodeid for report in failed] == ["test_inner.py::test_our_deprecated_call_fails"]
    message = failed[0].longreprtext
    assert message.startswith("deprecated call from fusionlens' code: FutureWarning at <string>:2: ")
    assert "`old` is deprecated" in message


def test_the_old_cache_argument_is_caught(tiny_llava, monkeypatch):
    """The engine as it was (passing ``past_key_values=``) is flagged at its own call site
    wherever the installed transformers deprecates that name; the engine as it is, never."""
    layer = tiny_llava.adapter.decoder_layers(tiny_llava.model)[0]
    deprecated = compat.cache_argument(layer) == "cache"  # transformers >= 5.24
    inputs = tiny_llava.adapter.build_inputs([Image.new("RGB", (64, 64))], ["what shape is it ?"])
    sweep = [Knockout.window("image->question,last", 2, 1, 6)]
    with warnings.catch_warnings(record=True), deprecations_from_our_code() as found:
        now = run_knockouts(tiny_llava, inputs, sweep).logits
    assert found == []
    monkeypatch.setattr(compat, "cache_argument", lambda module: "past_key_values")
    with warnings.catch_warnings(record=True), deprecations_from_our_code() as found:
        before = run_knockouts(tiny_llava, inputs, sweep).logits
    torch.testing.assert_close(before, now, rtol=0, atol=0)
    call_site = f"{run.__file__}:"
    flagged = [entry for entry in found if call_site in entry and "past_key_values" in entry]
    assert len(flagged) == (len(found) if deprecated else 0)
    assert (len(flagged) > 0) == deprecated


def test_cache_argument_follows_the_signature():
    class Old(torch.nn.Module):
        def forward(self, hidden, past_key_values=None, **kwargs):
            return hidden

    class New(torch.nn.Module):
        def forward(self, hidden, cache=None, **kwargs):
            return hidden

    assert compat.with_cache(Old(), "kv") == {"past_key_values": "kv"}
    assert compat.with_cache(New(), "kv") == {"cache": "kv"}
    assert compat.with_cache(New(), None) == {}


def test_compat_docstring_example():
    result = doctest.testmod(compat)
    assert (result.attempted, result.failed) == (3, 0)
