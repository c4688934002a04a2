"""The engines, one module each: a module of this package that defines ``ENGINE`` (an
:class:`~probes.engine.Engine`) is the engine of its own name, so a third engine is one new
file here. :func:`choose` is the command line's edge: it names an engine and checks that it can
run here, once; the analyses hold the engine it returns and never ask which one it is.

>>> names()
('fast', 'nnsight')
>>> choose("fast") == DEFAULT, recorded(DEFAULT), recorded(named("nnsight"))
(True, {}, {'engine': 'nnsight'})
>>> choose("torchlens")
Traceback (most recent call last):
...
probes.errors.UserError: unknown engine 'torchlens'; use fast or nnsight.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict

from probes.engine import Engine
from probes.errors import UserError


def names() -> tuple[str, ...]:
    """Every engine's name (the modules of this package; none is imported)."""
    return tuple(sorted(module.name for module in pkgutil.iter_modules(__path__)
                        if not module.name.startswith("_")))


def named(engine: Engine | str) -> Engine:
    """The engine of that name (an engine is returned as it is)."""
    if isinstance(engine, Engine):
        return engine
    if engine not in names():
        raise UserError(f"unknown engine {engine!r}; use {' or '.join(names())}.")
    return importlib.import_module(f"{__name__}.{engine}").ENGINE


def choose(engine: Engine | str) -> Engine:
    """:func:`named`, refused in one sentence where it cannot run here (``Engine.check``)."""
    chosen = named(engine)
    chosen.check()
    return chosen


DEFAULT = named("fast")


def recorded(engine: Engine) -> dict[str, str]:
    """The engine as a result's config records it: nothing for :data:`DEFAULT` (its runs keep
    the files they always had), ``{"engine": name}`` for any other."""
    return {} if engine == DEFAULT else engine.recorded()


def recorded_config(config) -> dict:
    """A dataclass config as a result records it: its fields, with its ``engine`` field
    written as :func:`recorded` writes an engine."""
    fields = asdict(config)
    fields.update(recorded(fields.pop("engine")))
    return fields
