"""fusionlens analyses: one module per analysis, each runnable as ``python -m analyses.<name>``;
datasets, metrics with confidence intervals, result files."""
