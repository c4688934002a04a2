"""fusionlens probes: everything that touches a model (loading, adapters, token groups,
edge masks, attention recording, the executor). No plotting, no files written.

The public entry points are importable from here (loaded on first use, so ``import probes``
stays cheap); ``docs/python.md`` walks through them:

- :func:`load_model` (``"tiny-llava"``, a hub alias or id, a directory) -> ``loaded``;
- :func:`build_inputs` ``(loaded, image, question, box=None)`` -> inputs carrying their token
  groups; :func:`token_groups`, :func:`token_boxes` (each image token's pixel box);
- :class:`Knockout`, :func:`run_knockouts`, :func:`top_tokens`;
- :func:`record_attention` -> a :class:`Recording` of attention to the image, per layer and head;
- :func:`decode` -> a :class:`Reply` with ``.text``, clean or under a knockout;
  :func:`masked_generate` underneath.
"""

from __future__ import annotations

import importlib

from probes.errors import UserError

_PUBLIC = {
    "load_model": "probes.models.loading",
    "LoadedModel": "probes.models.loading",
    "build_inputs": "probes.inputs",
    "token_boxes": "probes.inputs",
    "token_groups": "probes.tokens",
    "TokenGroups": "probes.tokens",
    "Knockout": "probes.masking",
    "run_knockouts": "probes.run",
    "masked_generate": "probes.run",
    "KnockoutResult": "probes.run",
    "AttentionRecorder": "probes.record",
    "record_attention": "probes.quick",
    "Recording": "probes.quick",
    "decode": "probes.quick",
    "Reply": "probes.quick",
    "top_tokens": "probes.quick",
}

__all__ = ["UserError", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
