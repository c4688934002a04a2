"""The short table ``python -m analyses.heads`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_table(summary: Mapping[str, Any]) -> str:
    """The top heads by drop, with their control, p, DLA and image share; the key heads; the
    top heads by attribution and by image share; the ``--heads`` set."""
    rows = {f"{r['layer']}.{r['head']}": r for r in summary["heads"]}
    lines = [f"{summary['model']['id']} on {summary['data']['name']}/{summary['data']['split']}: "
             f"{summary['n_samples']} samples, {summary['n_tested']} tested "
             f"({summary['n_correct']} answered correctly); flow {summary['flow']} knocked out "
             f"in one head at a time",
             f"{'head':>6} {'drop %':>8} {'95% CI':>18} {'control':>8} {'p (Holm)':>9} "
             f"{'DLA':>8} {'img@last':>9} {'img@q':>7}"]
    for name in summary["top_heads"]:
        r = rows[name]
        interval = f"[{r['drop_ci_low']:.2f}, {r['drop_ci_high']:.2f}]"
        lines.append(f"{name:>6} {r['drop']:8.2f} {interval:>18} {r['control_drop']:8.2f} "
                     f"{r['p_holm']:9.4f} {r['dla']:8.3f} {r['image_share_last']:9.3f} "
                     f"{r['image_share_question']:7.3f}" + ("  key" if r["key_head"] else ""))
    lines.append(f"key heads: {', '.join(summary['key_heads']) or 'none'}")
    lines.append(f"top heads by |DLA|: {', '.join(summary['top_dla_heads'])}")
    lines.append(f"top heads by image share at last: {', '.join(summary['top_visual_heads'])}")
    chosen = summary.get("head_set")
    if chosen:
        lines.append(f"heads {','.join(chosen['heads'])} together: drop {chosen['drop']:.2f}% "
                     f"[{chosen['drop_ci_low']:.2f}, {chosen['drop_ci_high']:.2f}] vs "
                     f"{chosen['control_drop']:.2f}% for as many random heads, one-sided paired "
                     f"p = {chosen['p_value']:.4f} (n = {chosen['n']})")
    lines.append(f"DLA check: parts sum to the clean logit difference within "
                 f"{summary['dla_check']['max_abs_error']:.2e}")
    return "\n".join(lines)
