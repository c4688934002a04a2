"""The overview panels an analysis adds to its report beyond the generic ones (the curves of its
``per_layer`` rows, its findings and tables, :mod:`figures.report.build`): grids (a heatmap of
one value over two axes, e.g. layer x head, a value on hover), bar charts (bars with their CI
and a reference line) and tables built from its summary.

Each analysis's panels are one function of :data:`OVERVIEWS` from its ``summary.json`` to a dict
with ``grids``, ``bars``, ``tables``, ``hide`` (summary keys the generic findings leave out
because a panel shows them), ``provenance`` (entries added to the run's provenance) and
``charts`` (how its ``per_layer`` rows make panels and lines, :func:`figures.report.build.charts`);
the page draws whatever the dict holds.

>>> rows = [{"layer": l, "head": h, "drop": float(l - h), "key_head": (l, h) == (1, 0)}
...         for l in range(2) for h in range(2)]
>>> g = grid("drop", rows, 2, 2, "drop", signed=True, marked="key_head")
>>> g["values"], g["marks"]
([[0.0, -1.0], [1.0, 0.0]], [[1, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def grid(title: str, rows: Sequence[dict], num_rows: int, num_cols: int, field: str,
         signed: bool = False, marked: str | None = None,
         extra: dict[str, str] | None = None, row_label: str = "layer",
         col_label: str = "head", row_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A heatmap of ``field`` of ``rows`` (each with its ``row_label`` and ``col_label``
    indices): ``values`` [row][col] (None where no row); ``marks`` the [row, col] cells whose
    ``marked`` field is true; ``extra`` {hover label: field} shown on hover with the value;
    ``row_names`` the rows' names (default: their indices)."""
    def table(name: str) -> list[list]:
        out: list[list] = [[None] * num_cols for _ in range(num_rows)]
        for row in rows:
            out[int(row[row_label])][int(row[col_label])] = row.get(name)
        return out

    return {"title": title, "row_label": row_label, "col_label": col_label, "signed": signed,
            "values": table(field),
            "marks": [[int(r[row_label]), int(r[col_label])] for r in rows
                      if marked and r.get(marked)],
            "extra": {label: table(name) for label, name in (extra or {}).items()},
            "row_names": None if row_names is None else list(row_names)}


def _named(rows: Sequence[dict]) -> dict[str, dict]:
    return {f"{r['layer']}.{r['head']}": r for r in rows}


def _top_table(title: str, names: Sequence[str], rows: dict[str, dict],
               columns: Sequence[str]) -> dict[str, Any]:
    return {"title": title, "columns": ["head", *columns],
            "rows": [[name, *(rows[name].get(c) for c in columns)] for name in names
                     if name in rows]}


def _heads(summary: dict[str, Any]) -> dict[str, Any]:
    rows = summary.get("heads") or []
    layers, heads = int(summary.get("num_layers") or 0), int(summary.get("num_heads") or 0)
    if not rows or not layers or not heads:
        return {}
    flow = summary.get("flow", "")
    ci = {"95% CI low": "drop_ci_low", "95% CI high": "drop_ci_high"}
    grids = [
        grid(f"drop of p(answer), % ({flow}); outlined: key heads", rows, layers, heads, "drop",
             signed=True, marked="key_head",
             extra={**ci, "control": "control_drop", "p (Holm)": "p_holm",
                    "key head": "key_head"}),
        grid("direct logit attribution", rows, layers, heads, "dla", signed=True,
             extra={"95% CI low": "dla_ci_low", "95% CI high": "dla_ci_high"}),
        grid("attention on the image from last", rows, layers, heads, "image_share_last"),
        grid("attention on the image from the question", rows, layers, heads,
             "image_share_question"),
    ]
    named = _named(rows)
    top = [name for name in summary.get("top_heads") or [] if name in named]
    bars = [{"title": f"top heads by drop, % ({flow}; mean, 95% CI; n = "
                      f"{summary.get('n_tested')})",
             "names": top, "values": [named[n]["drop"] for n in top],
             "ci_low": [named[n]["drop_ci_low"] for n in top],
             "ci_high": [named[n]["drop_ci_high"] for n in top],
             "highlight": [bool(named[n]["key_head"]) for n in top],
             "highlight_label": "key head",
             "line": named[top[0]]["control_drop"] if top else None,
             "line_label": "random head (control)"}] if top else []
    tables = [
        _top_table("top heads by drop", top, named,
                   ["drop", "drop_ci_low", "drop_ci_high", "control_drop", "p_holm", "key_head",
                    "dla", "image_share_last", "image_share_question"]),
        _top_table("top heads by |DLA|", summary.get("top_dla_heads") or [], named,
                   ["dla", "dla_ci_low", "dla_ci_high", "drop"]),
        _top_table("top heads by image share at last", summary.get("top_visual_heads") or [],
                   named, ["image_share_last", "image_share_question", "drop"]),
    ]
    return {"grids": grids, "bars": bars, "tables": tables, "hide": ["heads"]}


PATCHING_CI = {"95% CI low": "ci_low", "95% CI high": "ci_high", "n": "n"}


def patching_effect(summary: dict[str, Any], short: bool = False) -> str:
    """What a patching run's effect is, in words (its direction; ``short``: for a grid)."""
    denoise = (summary.get("config") or {}).get("direction", "denoise") == "denoise"
    if short:
        return "share restored" if denoise else "share removed"
    return ("share of the logit difference restored (clean into corrupt)" if denoise
            else "share of the logit difference removed (corrupt into clean)")


def _patching(summary: dict[str, Any]) -> dict[str, Any]:
    from analyses.patching.run import RESTORED

    layers = int(summary.get("num_layers") or 0)
    sites, groups = summary.get("sites") or [], summary.get("groups") or []
    config = summary.get("config") or {}
    effect, short = patching_effect(summary), patching_effect(summary, short=True)
    restoring = summary.get("restoring_layers") or {}
    grids = []
    for site in sites if layers and groups else []:
        rows = [{**r, "group": groups.index(r["group"]),
                 "restores": r["layer"] in restoring.get(r["series"], [])}
                for r in summary.get("per_layer") or [] if r.get("site") == site]
        grids.append(grid(f"{site}: {short}; outlined: restoring layers", rows, len(groups),
                          layers, "mean", signed=True, marked="restores", extra=PATCHING_CI,
                          row_label="group", col_label="layer", row_names=groups))
    heads = summary.get("heads") or []
    if heads and layers:
        count = 1 + max(int(r["head"]) for r in heads)
        grids.append(grid(f"heads at {config.get('head_group', 'last')}: {short}", heads,
                          layers, count, "mean", signed=True, extra=PATCHING_CI))
    tables = [{"title": f"restoring layers (mean effect at least {RESTORED:g})",
               "columns": ["site:group", "layers"],
               "rows": [[series, ", ".join(map(str, found)) or "none"]
                        for series, found in restoring.items()]}] if restoring else []
    skipped = summary.get("skipped_by_reason") or {}
    corrupt = config.get("corrupt")
    if corrupt == "noise":
        corrupt = f"noise on the image embeddings, {config.get('noise_scale')} x their std"
    provenance = {"patching": {
        "corruption": corrupt, "direction": config.get("direction"),
        "sites": ", ".join(sites + (["head"] if heads else [])), "token groups": ", ".join(groups),
        "samples used": summary.get("n_used"), "samples": summary.get("n_samples"),
        "skipped": ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "none"}}
    return {"grids": grids, "tables": tables, "provenance": provenance,
            "hide": ["heads", "restoring_layers", "skipped_by_reason", "sites", "groups"],
            "charts": {"panel": "site", "line": "group", "title": f"{{}}: {effect}"}}


# the sinks analysis's query rows and how the report names them
SINKS_ROWS = (("answer", "the answer row (last)"), ("question", "the question's rows"))
SINKS_RATIO = "massive activations: max |h_d| / median |h_d|"


def sinks_panels() -> dict[str, tuple[str, str]]:
    """{sinks series: (panel, line)}: the attention of each row on each key group (heads
    averaged, and the largest head), massive activations per token group, the first token's
    sink dimensions and the visual sink tokens, one panel each."""
    from analyses.sinks.measure import GROUPS, RATIO_GROUPS

    names = {}
    for query, rows in SINKS_ROWS:
        for group in GROUPS:
            names[f"{query}_{group}"] = (f"attention of {rows} on each key group", group)
            names[f"{query}_{group}_head_max"] = (f"attention of {rows}, largest head", group)
    for group in RATIO_GROUPS:
        names[f"top_ratio_{group}"] = (f"{SINKS_RATIO} of the group's tokens", group)
    names["first_ratio"] = ("the first token's largest |h_d| / RMS(h)", "first")
    names["n_sink_dims"] = ("the first token's sink dimensions (|h_d| >= tau x RMS)", "count")
    names["visual_share"] = ("visual sink tokens", "share of the image tokens")
    names["visual_attention"] = ("visual sink tokens", "the answer row's attention on them")
    return names


def _sinks(summary: dict[str, Any]) -> dict[str, Any]:
    dims = summary.get("sink_dims") or {}
    tables = [{"title": "what the run found", "columns": ["finding"],
               "rows": [[line] for line in summary.get("lines") or []]}]
    if dims:
        tables.append({"title": f"the first token's sink dimensions (|h_d| >= "
                                f"{summary.get('tau')} x RMS in at least half the samples)",
                       "columns": ["layer", "dimensions"],
                       "rows": [[int(layer), ", ".join(map(str, found))]
                                for layer, found in sorted(dims.items(), key=lambda x: int(x[0]))]})
    return {"tables": tables, "hide": ["series", "sink_dims", "lines"],
            "charts": {"names": sinks_panels()}}


# analysis -> the function of its summary giving its overview's own panels
OVERVIEWS = {"heads": _heads, "patching": _patching, "sinks": _sinks}


def overview_panels(summary: dict[str, Any]) -> dict[str, Any]:
    """The analysis's own panels (``grids``, ``bars``, ``tables``, ``hide``; empty lists where
    it has none; ``provenance`` and ``charts``: empty dicts)."""
    fill = OVERVIEWS.get(summary.get("analysis"))
    found = fill(summary) if fill else {}
    return {**{key: found.get(key, []) for key in ("grids", "bars", "tables", "hide")},
            **{key: found.get(key, {}) for key in ("provenance", "charts")}}
