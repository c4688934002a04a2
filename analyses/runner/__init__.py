"""One runner for every analysis (see ``spec`` for what an analysis provides, ``execute`` for
the driver and the local backend, ``store`` for the resumable records, ``ray_backend`` for
Ray)."""

from analyses.runner.execute import LocalBackend, RunOptions, parse_shard, run
from analyses.runner.spec import Analysis, Pass, Plan, RunInfo
from analyses.runner.store import PARTIAL, RecordStore

__all__ = ["Analysis", "LocalBackend", "PARTIAL", "Pass", "Plan", "RecordStore", "RunInfo",
           "RunOptions", "parse_shard", "run"]
