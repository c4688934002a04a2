"""The short table ``python -m analyses.attention_evolution`` prints."""

from __future__ import annotations


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
