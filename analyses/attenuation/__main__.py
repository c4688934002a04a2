"""``python -m analyses.attenuation [options]``: attenuation curves of one model on one dataset
(see :mod:`analyses.attenuation`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from analyses.attenuation import AttenuationConfig, run_attenuation
from analyses.common import add_analysis_arguments, load_data, load_model_from_args, write_run
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/attenuation"
TABLE_SERIES = ("image_share(last)", "region_share(last)", "image_value_ratio(last)",
                "answer_prob")


def format_table(summary: dict) -> str:
    """Per layer, the mean of the main curves for each subset present."""
    subsets = [s for s in ("all", "small", "large") if summary["subsets"].get(s)]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples ("
             + ", ".join(f"{s} {summary['subsets'][s]}" for s in subsets) + ")"]
    for series in TABLE_SERIES:
        lines.append(f"{series}: mean per layer 0..{summary['num_layers'] - 1}")
        for subset in subsets:
            rows = sorted((r for r in summary["per_layer"]
                           if r["series"] == series and r["subset"] == subset),
                          key=lambda r: r["layer"])
            cells = " ".join(f"{r['mean']:.3f}" for r in rows)
            lines.append(f"  {subset:<6} {cells}")
    for row in summary["attenuation"]:
        if row["series"] == "region_share(last)":
            lines.append(f"region_share(last) {row['subset']}: peak {row['peak']:.3f} at layer "
                         f"{row['peak_layer']}, last layer {row['last']:.3f} "
                         f"(retained {row['retained']:.2f}; uniform over the image: "
                         f"{summary['region_chance'][row['subset']]:.3f})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.attenuation",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT, default_batch_size=1)
    parser.add_argument("--small-cells", type=float, default=1.0,
                        help="targets covering fewer patch cells than this are small (default 1)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.batch_size != 1:
        raise UserError("attenuation measures one sample per forward; --batch-size must be 1.")
    config = AttenuationConfig(small_cells=args.small_cells, seed=args.seed,
                               n_bootstrap=args.bootstrap)
    config.validate()
    dataset = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    result = run_attenuation(loaded, dataset, config, progress=True, out=args.out,
                             resume=args.resume)
    write_run(result, args.out, format_table(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
