"""What an analysis gives the runner: its passes over the data, a per-sample measurement, and
an aggregation of the records into its result. The runner (``analyses.runner.execute``) owns
everything else: iteration, ``--limit``, the resumable store, shards, failures, backends.

A *pass* measures a list of samples; most analyses have one. A second pass exists where a
decision must read every earlier record first (layer masking grades every sample, then sweeps
the correct ones; contrastive attention reads every sample's maps to choose its early layer,
then refines). Between passes, :meth:`Analysis.plan` turns the earlier passes' records into the
next pass's samples and a small, picklable context (what every worker needs to know).

A pass measures its samples in *units* of ``batch`` consecutive samples of its list (1 for
most; answer grading batches its generation). Units are the runner's grain of work, of
scheduling and of sharding, so a resumed, sharded or distributed run measures exactly the
same units and gives exactly the same records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Record = dict[str, np.ndarray]  # one sample's measured values (as stored: numbers, strings)
Records = dict[int, Record]  # sample index -> record


@dataclass(frozen=True)
class Pass:
    """One pass over the data: ``batch`` samples per unit of work; ``scope`` "shard" (each
    shard measures its own samples) or "all" (each shard measures every sample, because the
    plan after it reads every sample: cheap passes only)."""

    name: str
    batch: int = 1
    scope: str = "shard"
    description: str = ""

    def __post_init__(self) -> None:
        if self.scope not in ("shard", "all"):
            raise ValueError(f"a pass's scope is 'shard' or 'all', not {self.scope!r}")
        if self.batch < 1:
            raise ValueError("a pass measures at least one sample per unit")


@dataclass(frozen=True)
class RunInfo:
    """What the aggregation knows of the run besides its records."""

    model: dict[str, Any]  # analyses.common.model_record
    data: dict[str, Any]  # analyses.common.data_record
    device: str
    seconds_per_sample: float  # wall time of measuring, per measured sample (this process)
    shard: tuple[int, int] = (0, 1)
    dataset: Any = None  # the dataset, for what the figures show (example images)

    @property
    def num_layers(self) -> int:
        return int(self.model["layers"])

    @property
    def timing(self) -> dict[str, Any]:
        return {"seconds_per_sample": self.seconds_per_sample, "device": self.device}


@dataclass
class Plan:
    """The samples a pass measures (indices into the dataset, ascending) and the context every
    worker gets with them."""

    indices: list[int]
    context: dict[str, Any] = field(default_factory=dict)


def first_readable(samples) -> Any | None:
    """The first sample of ``samples`` (a dataset) that reads, or None when none does: how a
    warm-up or a probe of the data reads a sample outside the runner's per-sample guard."""
    for index in range(len(samples)):
        try:
            return samples[index]
        except Exception:  # noqa: BLE001 - an unreadable image, a broken row: passed over
            continue
    return None


class Analysis(ABC):
    """Base of every analysis the runner runs. Subclasses set ``name`` and ``passes``, keep
    their config, and implement :meth:`measure` and :meth:`aggregate` (and :meth:`plan` for
    a second pass). Instances are pickled to workers: keep them to config values."""

    name: str = ""
    passes: tuple[Pass, ...] = (Pass("samples"),)

    @abstractmethod
    def recorded(self) -> dict[str, Any]:
        """The config as it goes into ``summary.json`` and the run's key (what decides the
        numbers)."""

    def validate(self, num_layers: int) -> None:
        """Raise a UserError for a config this model cannot run (before any work)."""
        return None  # default: every config runs

    def plan(self, step: str, candidates: list[int], earlier: Mapping[str, Records]) -> Plan:
        """The samples pass ``step`` measures among ``candidates`` (this shard's samples, or
        every sample for a pass of scope "all", less those that failed earlier) given the
        earlier passes' records. Default: all of them, no context."""
        return Plan(list(candidates))

    def warm_up(self, loaded, dataset) -> None:
        """Called once per worker before its first unit (e.g. to allocate before timing). A
        sample it reads is read with :func:`first_readable`: an unreadable one fails only
        itself, when the runner measures it."""
        return None  # default: nothing to prepare

    @abstractmethod
    def measure(self, step: str, loaded, samples: Sequence, indices: Sequence[int],
                context: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One record per sample of the unit (``samples[k]`` is dataset sample
        ``indices[k]``): numbers, booleans, strings or arrays of them."""

    @abstractmethod
    def aggregate(self, records: Mapping[str, Records], info: RunInfo):
        """The run's :class:`~analyses.results.RunResult` from every pass's records (sample
        index -> record, ascending; failed samples absent)."""

    def table(self, summary: Mapping[str, Any]) -> str:
        """The short table the CLI prints."""
        return f"{summary['analysis']}: {summary['n_samples']} samples"
