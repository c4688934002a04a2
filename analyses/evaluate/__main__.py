"""``python -m analyses.evaluate [options]``: every benchmark of ``--data`` (comma-separated)
under every method of ``--methods``, graded by the benchmarks' own rules. Shard runs merge with
``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.evaluate import Evaluate, EvaluateConfig
from analyses.evaluate.methods import METHODS, check_vif_paths, parse_methods
from analyses.runner.cli import add_analysis_arguments, run_from_args
from probes.arguments import BOOTSTRAP, POSITIVE, ArgumentParser
from probes.cli import run_cli

DEFAULT_OUT = "runs/evaluate"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.evaluate",
                                     description=__doc__.split("\n")[0].split(": ", 1)[1])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=8)
    parser.add_argument("--methods", default="clean,aif",
                        help=f"comma-separated, among {', '.join(METHODS)} (clean is always "
                             "run: the reference; default: clean,aif)")
    parser.add_argument("--max-new-tokens", type=POSITIVE, default=None,
                        help="reply length for every benchmark (default: the benchmark's, 16 "
                             "tokens, 128 for RefCOCO boxes)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    methods = parse_methods(args.methods)
    check_vif_paths(methods)  # before the model loads
    from analyses.train_vif.run import file_sha256

    config = EvaluateConfig(methods=methods, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, n_bootstrap=args.bootstrap,
                            seed=args.seed,
                            vif_sha256={m: file_sha256(m[4:]) for m in methods
                                        if m.startswith("vif:")})
    config.validate()
    run_from_args(Evaluate(config), args)  # writes table.md and table.tex too
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
