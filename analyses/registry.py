"""Every analysis, registered once, by the name it writes into ``summary.json``: its class (how
``analyses.merge`` and remote workers rebuild it from its recorded config), the function that
draws its figures (:mod:`figures.paper`) and, where it writes any, the function that gives the
extra text files of its result (:func:`analyses.common.write_run`). Each is ``module:name``,
imported on use: this module imports no analysis and no figure, so the runner, merge, the
figures and :mod:`analyses.common` all import it from above."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from probes.errors import UserError


@dataclass(frozen=True)
class Registered:
    """One analysis: where its class, its figures and its extra text files are."""

    analysis: str
    figures: str  # (summary, arrays) -> {name: figure}
    text_files: str | None = None  # summary -> {file name: text}


ANALYSES = {
    "layer_masking": Registered("analyses.layer_masking.run:LayerMasking",
                                "figures.layer_masking:draw_all"),
    "token_importance": Registered("analyses.token_importance.run:TokenImportance",
                                   "figures.token_importance:draw_all"),
    "attention_evolution": Registered("analyses.attention_evolution.run:AttentionEvolution",
                                      "figures.attention_evolution:draw_all"),
    "contrastive_attention": Registered("analyses.contrastive_attention.run:ContrastiveAttention",
                                        "figures.attention_evolution:draw_contrastive"),
    "attenuation": Registered("analyses.attenuation.run:Attenuation",
                              "figures.attenuation:draw_all"),
    "train_vif": Registered("analyses.train_vif.run:VIFEvaluation", "figures.vif:draw_all"),
    "evaluate": Registered("analyses.evaluate.run:Evaluate", "figures.evaluate:draw_all",
                           "analyses.evaluate.table:table_files"),
    "logit_lens": Registered("analyses.logit_lens.run:LogitLens", "figures.logit_lens:draw_all"),
    "heads": Registered("analyses.heads.run:Heads", "figures.heads:draw_all"),
    "patching": Registered("analyses.patching.run:Patching", "figures.patching:draw_all"),
    "sinks": Registered("analyses.sinks.run:Sinks", "figures.sinks:draw_all"),
}


def registered(name: str) -> Registered:
    """The registration of ``name``, refused in one sentence when there is none."""
    if name not in ANALYSES:
        raise UserError(f"unknown analysis {name!r}; known: {', '.join(sorted(ANALYSES))}.")
    return ANALYSES[name]


def load(where: str) -> Any:
    """The object a ``module:name`` of a registration names."""
    module, _, attribute = where.partition(":")
    return getattr(importlib.import_module(module), attribute)


def analysis_class(name: str) -> type:
    """The :class:`~analyses.runner.spec.Analysis` subclass registered as ``name``."""
    return load(registered(name).analysis)


def drawer(name: str) -> Callable[[Mapping, Mapping], dict]:
    """The function drawing the figures of analysis ``name``'s results."""
    return load(registered(name).figures)


def text_files(name: str) -> Callable[[Mapping], dict[str, str]] | None:
    """The function giving the extra text files of analysis ``name``'s results, or None."""
    where = registered(name).text_files
    return None if where is None else load(where)


def rebuild(name: str, recorded: Mapping[str, Any]) -> Any:
    """The analysis ``name`` with the config it recorded (``Analysis.from_recorded``)."""
    return analysis_class(name).from_recorded(dict(recorded))
