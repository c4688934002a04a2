"""The short table ``python -m analyses.token_importance`` prints."""

from __future__ import annotations

from analyses.stats import method_table


def format_table(summary: dict) -> str:
    """Accuracy per method with its CI and McNemar p against clean, then recall and timing."""
    config = summary["config"]["aif"]
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples; heads {config['heads']}, text rows "
             f"{config['text_rows']}, scan {config['scan']}",
             *method_table(summary["methods"])]
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
