"""fusionlens figures: pure functions from results to matplotlib figures; the paper style."""
