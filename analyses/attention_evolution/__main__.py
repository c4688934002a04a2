"""``python -m analyses.attention_evolution [options]``: record, score and draw."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from analyses.attention_evolution import EvolutionConfig, run_attention_evolution
from analyses.common import add_analysis_arguments, load_data, load_model_from_args, write_run
from probes.cli import run_cli
from probes.errors import UserError

DEFAULT_OUT = "runs/attention_evolution"


def parse_layers(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"3,4"`` -> (3, 4); None stays None."""
    if text is None:
        return None
    try:
        layers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes layer numbers separated by commas, e.g. 3,4; not "
                        f"{text!r}.") from None
    if not layers:
        raise UserError(f"{option} needs at least one layer.")
    return layers


def format_table(summary: dict) -> str:
    rows = {(r["series"], r["metric"], r["layer"]): r for r in summary["per_layer"]}

    def cell(series, metric, layer, ci=True):
        row = rows.get((series, metric, layer))
        if row is None:
            return f"{'-':>6}" + (" " * 16 if ci else "")
        text = f"{row['mean']:6.3f}"
        return text + (f" [{row['ci_low']:5.3f},{row['ci_high']:5.3f}]" if ci else "")

    data = summary["data"]
    lines = [f"{summary['model']['id']} on {data['name']}/{data['split']}: "
             f"{summary['n_samples']} samples ({summary['n_with_region']} with a region), "
             f"{summary['n_patches']} patches",
             "per layer, attention of last (question): on image | on region (95% CI) | AUROC "
             "(95% CI) | on sinks",
             f"{'layer':>5}  {'image':>13}  {'region':>30}  {'AUROC':>30}  {'sinks':>6}"]
    for layer in range(summary["num_layers"]):
        lines.append(
            f"{layer:>5}  {cell('last', 'image_share', layer, False)} "
            f"({cell('question', 'image_share', layer, False)})  "
            f"{cell('last', 'relevant_share', layer)} ({cell('question', 'relevant_share', layer, False)})  "
            f"{cell('last', 'auroc', layer)} ({cell('question', 'auroc', layer, False)})  "
            f"{cell('last', 'sink_share', layer, False)}")
    sinks = summary["sinks"]
    found = ", ".join(f"patch {p} (row {c[1]}, col {c[2]}; {s:.2f})"
                      for p, c, s in zip(sinks["patches"], sinks["cells"], sinks["scores"]))
    top = sinks["top"][0] if sinks["top"] else None
    lines.append("sinks: " + (found or "none") + (
        f"; highest sink score {top['score']:.2f} (patch {top['patch']}; chance "
        f"{sinks['chance']:.2f})" if top else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyses.attention_evolution",
                                     description=__doc__.split("\n")[0])
    add_analysis_arguments(parser, DEFAULT_OUT)
    parser.add_argument("--heads", action="store_true", help="also keep every head's maps")
    parser.add_argument("--top-share", type=float, default=0.05,
                        help="a patch is high in a map when among its top share (default 0.05)")
    parser.add_argument("--sink-threshold", type=float, default=0.5,
                        help="sink score from which a patch is a sink (default 0.5)")
    parser.add_argument("--examples", type=int, default=4, help="samples shown in the map figure")
    parser.add_argument("--figure-layers", default=None,
                        help="layers shown in the map figure, e.g. 0,2,5 (default: up to 6)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    config = EvolutionConfig(heads=args.heads, top_share=args.top_share,
                             sink_threshold=args.sink_threshold, examples=args.examples,
                             figure_layers=parse_layers(args.figure_layers, "--figure-layers"),
                             n_bootstrap=args.bootstrap, seed=args.seed)
    dataset = load_data(args.data, args.split, args.limit)
    loaded = load_model_from_args(args)
    config.validate(loaded.adapter.num_layers)
    result = run_attention_evolution(loaded, dataset, config, progress=True, out=args.out,
                                     resume=args.resume)
    write_run(result, args.out, format_table(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
