"""``python -m analyses.token_importance [options]``: clean vs AIF vs the ablations on a dataset.
Shard runs merge with ``python -m analyses.merge``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from analyses.runner.cli import add_analysis_arguments, add_engine_argument, run_from_args
from analyses.token_importance.aif import HEADS, SCANS, AIFConfig
from analyses.token_importance.dynamics import DEFAULT_RATIOS
from analyses.token_importance.run import TokenImportance, TokenImportanceConfig
from probes.arguments import BOOTSTRAP, NONNEGATIVE, POSITIVE, PROBABILITY, ArgumentParser, number
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/token_importance"


def _ratios(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas, e.g. 0.3,0.5, not "
                        f"{text!r}.") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analyses.token_importance",
                                     description=__doc__.split("\n")[0].split(": ", 1)[1])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=1)
    add_engine_argument(parser)
    parser.add_argument("--heads", default="mean", help=f"head aggregation: {', '.join(HEADS)}")
    parser.add_argument("--text-rows", default="question,last",
                        help="token groups whose rows are the text tokens (default: "
                             "question,last; any of system, question, template, last)")
    parser.add_argument("--no-mask-generated", action="store_true",
                        help="let generated tokens read the masked image tokens")
    parser.add_argument("--scan", default="published",
                        help=f"the S of the ratio scan: {', '.join(SCANS)} (default: published)")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in DEFAULT_RATIOS),
                        help="candidate mask ratios of the adaptive scan")
    parser.add_argument("--ratio", type=PROBABILITY, default=None,
                        help="a fixed mask ratio for AIF instead of the adaptive one")
    parser.add_argument("--fixed-ratios", default="0.3,0.5,0.7",
                        help="fixed-ratio ablations (default: 0.3,0.5,0.7)")
    parser.add_argument("--max-new-tokens", type=POSITIVE, default=4)
    parser.add_argument("--top-fraction", type=number(0, 1, low_open=True), default=0.2,
                        help="object-token recall within this top share (default: 0.2)")
    parser.add_argument("--timed-samples", type=NONNEGATIVE, default=20,
                        help="samples timed with a plain generate side by side (default: 20)")
    parser.add_argument("--bootstrap", type=BOOTSTRAP, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.batch_size != 1:
        raise UserError("analyses.token_importance decodes one sample at a time; --batch-size "
                        "must be 1.")
    aif = AIFConfig(heads=args.heads, text_rows=args.text_rows,
                    mask_generated=not args.no_mask_generated,
                    ratios=_ratios(args.ratios, "--ratios"), ratio=args.ratio, scan=args.scan,
                    max_new_tokens=args.max_new_tokens)
    config = TokenImportanceConfig(aif=aif, fixed_ratios=_ratios(args.fixed_ratios,
                                                                 "--fixed-ratios"),
                                   top_fraction=args.top_fraction,
                                   timed_samples=args.timed_samples, seed=args.seed,
                                   n_bootstrap=args.bootstrap, engine=args.engine)
    config.validate()  # bad options fail before the model loads
    run_from_args(TokenImportance(config), args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
