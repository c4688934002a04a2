"""The one place that knows which transformers names the KV cache by.

transformers 5.0 to 5.23 call the cache argument of a model's ``forward`` and of a decoder
layer's ``forward`` ``past_key_values``, and the output field too. 5.24 renames both to
``cache`` and keeps ``past_key_values`` as a deprecated alias (a FutureWarning; removed in
5.40). A decoder layer takes ``**kwargs``, so the wrong name is not an error but a silently
ignored cache: the name is read from the callee's own signature, once per class.

>>> from probes.models.loading import load_model
>>> loaded = load_model("tiny-random-llava")
>>> cache_argument(loaded.model) in ("cache", "past_key_values")
True
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import cache
from typing import Any


@cache
def _cache_argument_of(cls: type) -> str:
    # inspect.signature follows the __wrapped__ of transformers' deprecation decorators to the
    # forward as written
    parameters = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(module: Any) -> str:
    """The keyword ``module``'s forward takes its KV cache by: ``cache`` (transformers >= 5.24)
    or ``past_key_values`` (5.0 to 5.23)."""
    return _cache_argument_of(type(module))


def with_cache(module: Any, kv_cache: Any) -> dict[str, Any]:
    """``{name: kv_cache}`` for ``module(..., **with_cache(module, kv_cache))``; empty for None."""
    return {} if kv_cache is None else {cache_argument(module): kv_cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned: the ``cache`` field (>= 5.24) or ``past_key_values``."""
    names = {field.name for field in dataclasses.fields(output)}
    return output.cache if "cache" in names else output.past_key_values
