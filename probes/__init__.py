"""fusionlens probes: everything that touches a model (loading, adapters, token groups,
edge masks, attention recording, the executor). No plotting, no files written."""

from probes.errors import UserError

__all__ = ["UserError"]
