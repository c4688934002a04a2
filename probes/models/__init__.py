"""Models: the registry of aliases, loading, the family adapters and the built-in tiny models
(``python -m probes.models list`` / ``answer``)."""
