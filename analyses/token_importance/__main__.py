"""``python -m analyses.token_importance [options]``: clean vs AIF vs the ablations on a dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from analyses.common import add_analysis_arguments, load_data, load_model_from_args, write_run
from analyses.token_importance.aif import HEADS, SCANS, AIFConfig
from analyses.token_importance.dynamics import DEFAULT_RATIOS
from analyses.token_importance.run import TokenImportanceConfig, run_token_importance
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/token_importance"


def _ratios(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas, e.g. 0.3,0.5, not "
                        f"{text!r}.") from None


def format_table(summary: dict) -> str:
    """Accuracy per method with its CI and McNemar p against clean, then recall and timing."""
    config = summary["config"]["aif"]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples; heads {config['heads']}, text rows "
             f"{config['text_rows']}, scan {config['scan']}",
             f"{'method':<18} {'accuracy':>8} {'95% CI':>15} {'p vs clean':>10}"]
    for row in summary["methods"]:
        ci = f"[{row['ci_low']:5.1%}, {row['ci_high']:5.1%}]"
        lines.append(f"{row['method']:<18} {row['accuracy']:8.1%} {ci:>15} "
                     f"{row['p_value_vs_clean']:10.2g}")
    ratios = summary["chosen_ratios"]["published_s"]
    lines.append("adaptive ratio chosen: " + ", ".join(f"{r}: {n}" for r, n in ratios.items()
                                                        if n))
    recall = summary["recall"]
    for name in ("all", "small"):
        part = recall[name]
        if part["n"]:
            lines.append(f"object-token recall in the top {recall['top_fraction']:.0%} "
                         f"({name} objects, n={part['n']}): low entropy "
                         f"{part['entropy']['mean']:.1%}, highest attention "
                         f"{part['attention']['mean']:.1%}, random {part['random']:.1%}")
    timing = summary["timing"]
    if timing["n"]:
        lines.append(f"time per answer: plain generate {timing['plain_generate_seconds'] * 1e3:.1f}"
                     f" ms, AIF {timing['aif_seconds'] * 1e3:.1f} ms "
                     f"({timing['ratio_median']:.2f}x, median over {timing['n']} samples)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.token_importance",
                                     description=__doc__.split("\n")[0].split(": ", 1)[1])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=1)
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
    parser.add_argument("--ratio", type=float, default=None,
                        help="a fixed mask ratio for AIF instead of the adaptive one")
    parser.add_argument("--fixed-ratios", default="0.3,0.5,0.7",
                        help="fixed-ratio ablations (default: 0.3,0.5,0.7)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--top-fraction", type=float, default=0.2,
                        help="object-token recall within this top share (default: 0.2)")
    parser.add_argument("--timed-samples", type=int, default=20,
                        help="samples timed with a plain generate side by side (default: 20)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
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
                                   n_bootstrap=args.bootstrap)
    config.validate()  # bad options fail before the model loads
    dataset = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    result = run_token_importance(loaded, dataset, config, progress=True, out=args.out,
                                  resume=args.resume)
    write_run(result, args.out, format_table(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
