"""The per-sample records of a run, as the report's sample browser reads them: ids, kinds,
verdicts per method, per-layer curves, the prompt's tokens with a value each, and maps over the
image tokens packed compactly.

Each analysis's view is one function of :data:`BROWSERS` (the arrays it needs, and a function
filling the record: ``verdicts``, ``curves``, ``maps``, ``grids``, ``values``, ``prompt``,
``notes``); the page draws whatever a record holds, so a new analysis's view is that one
function.

Grids (a value over two axes that are not the image, e.g. layer x head) are kept exactly: one
base64 blob of float32 [rows, cols] per sample (:func:`grid_entry`), decoded when shown.

Maps are quantised to uint8 per map (a map = one sample, series, layer and head) with its own
(low, high): value = low + q / 255 * (high - low), within (high - low) / 510 of the float.
A sample's maps are one base64 blob: float32 [maps, 2] lows and highs, then uint8 [maps,
tokens]; the page decodes a sample's blob only when it is shown.

>>> maps = np.array([[0.0, 0.5, 1.0], [2.0, 2.0, 2.0]])
>>> low_high, q = quantise(maps)
>>> low_high.tolist(), q.tolist()
([[0.0, 1.0], [2.0, 2.0]], [[0, 128, 255], [0, 0, 0]])
>>> dequantise(low_high, q).round(3).tolist()
[[0.0, 0.502, 1.0], [2.0, 2.0, 2.0]]
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

HEADS_BUDGET_MB = 8.0  # raw bytes of per-head maps in one report; samples past it show means


def quantise(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [..., 2] low/high over the last axis, uint8 of the same shape as ``maps``);
    NaN values become low."""
    maps = np.asarray(maps, dtype=np.float64)
    finite = np.where(np.isfinite(maps), maps, np.nan)
    with np.errstate(all="ignore"):
        low = np.nan_to_num(np.nanmin(finite, axis=-1, keepdims=True))
        high = np.nan_to_num(np.nanmax(finite, axis=-1, keepdims=True))
    span = np.where(high > low, high - low, 1.0)
    q = np.rint((np.nan_to_num(finite, nan=0.0) - low) / span * 255)
    q = np.where(np.isfinite(finite), q, 0)
    return np.concatenate([low, high], axis=-1).astype(np.float32), q.clip(0, 255).astype(np.uint8)


def dequantise(low_high: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The inverse of :func:`quantise` (what the page computes)."""
    low, high = low_high[..., :1].astype(np.float64), low_high[..., 1:].astype(np.float64)
    return low + q / 255.0 * (high - low)


def pack(maps: np.ndarray) -> str:
    """One sample's maps [..., tokens] as base64 (lows/highs then bytes)."""
    low_high, q = quantise(maps)
    return base64.b64encode(low_high.tobytes() + q.tobytes()).decode("ascii")


def _strings(values) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def _rounded(values: np.ndarray, digits: int = 5) -> list:
    """Nested lists of floats with ``digits`` significant digits, NaN as None (JSON null)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        out = np.where(np.isfinite(values), values, np.nan)
    flat = [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in out.ravel()]
    return np.array(flat, dtype=object).reshape(values.shape).tolist()


def _cells(cells: np.ndarray) -> list[list[int]]:
    return np.asarray(cells, dtype=np.int64).reshape(-1, 3).tolist()


def _map_entry(name: str, values: np.ndarray, series: Sequence[str], cells, signed: bool = False,
               layered: bool = True, heads: int = 0, every_sample: Sequence[bool] | None = None,
               binary: bool = False):
    """A map entry: ``values`` [sample, series, layer(, head), token] (layered) or [sample,
    series, token]; ``cells`` [token, 3] shared or [sample, token, 3]. ``binary``: 0/1 values,
    drawn only where 1 (the image shows through elsewhere)."""
    shared = np.asarray(cells).ndim == 2
    data = [pack(v) if every_sample is None or every_sample[i] else None
            for i, v in enumerate(values)]
    return {"name": name, "series": list(series), "signed": signed, "binary": binary,
            "layers": int(values.shape[2]) if layered else 0, "heads": heads,
            "tokens": int(values.shape[-1]),
            "cells": _cells(cells) if shared else None,
            "sample_cells": None if shared else [_cells(c) for c in cells], "data": data}


def grid_entry(title: str, values: np.ndarray, signed: bool = False, marks=(),
               row_label: str = "layer", col_label: str = "head",
               row_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A per-sample grid: ``values`` [sample, rows, cols] as float32 (NaN where none),
    ``marks`` [row, col] cells outlined in every sample's grid, ``row_names`` the rows' names
    (default: their indices)."""
    values = np.asarray(values, dtype="<f4")
    return {"title": title, "row_label": row_label, "col_label": col_label, "signed": signed,
            "rows": int(values.shape[1]), "cols": int(values.shape[2]),
            "marks": [[int(r), int(c)] for r, c in marks],
            "row_names": None if row_names is None else list(row_names),
            "data": [base64.b64encode(v.tobytes()).decode("ascii") for v in values]}


def _methods(summary: dict[str, Any], count: int) -> list[str]:
    names = summary.get("method_names") or [row.get("method") for row in
                                            summary.get("methods") or []]
    names = [str(n) for n in names if n]
    return names if len(names) == count else [f"method {i}" for i in range(count)]


def _verdicts(methods, correct=None, replies=None, scores=None) -> dict[str, Any]:
    return {"methods": list(methods),
            "correct": None if correct is None else np.asarray(correct).astype(bool).tolist(),
            "replies": None if replies is None else np.asarray(replies).astype(str).tolist(),
            "scores": None if scores is None else _rounded(scores)}


def _curve(title: str, series: Sequence[str], values: np.ndarray) -> dict[str, Any]:
    """A per-sample chart: ``values`` [sample, series, layer]."""
    return {"title": title, "series": list(series), "values": _rounded(values)}


def _by_offsets(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Per sample, its slice of arrays saved end to end (sample s's at offsets[s]:offsets[s+1])."""
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _padded(rows: list[np.ndarray], fill) -> np.ndarray:
    """[sample, longest, ...] of per-sample arrays of different lengths, ``fill`` after each."""
    longest = max(len(r) for r in rows)
    out = np.full((len(rows), longest, *rows[0].shape[1:]), fill,
                  dtype=np.result_type(rows[0].dtype, np.asarray(fill).dtype))
    for k, r in enumerate(rows):
        out[k, :len(r)] = r
    return out


def _layer_masking(summary, arrays, out):
    graded = dict(zip(arrays["graded_index"].tolist(), arrays["graded_correct"].tolist())) \
        if "graded_index" in arrays else {}
    correct = [[bool(graded.get(int(i), False))] for i in arrays["sample_index"]]
    out["verdicts"] = _verdicts(["clean"], correct)
    series = summary.get("series") or []
    out["curves"].append(_curve("change of the answer's probability when the flow is cut (%)",
                                series, arrays["prob_change_pct"]))
    out["values"] = {"clean probability": _rounded(arrays["clean_probability"])}


def _token_importance(summary, arrays, out):
    methods = _methods(summary, arrays["answers"].shape[1])
    out["verdicts"] = _verdicts(methods, arrays["correct"], arrays["answers"])
    out["curves"].append(_curve("attention to kept vs masked image tokens (AIF)",
                                ["kept tokens", "masked tokens"],
                                np.stack([arrays["kept_curve"], arrays["masked_curve"]], 1)))
    cells = arrays["cells"]
    out["maps"].append(_map_entry("attention to each image token (dynamics)",
                                  arrays["dynamics"].transpose(0, 2, 1)[:, None], ["dynamics"],
                                  cells))
    out["maps"].append(_map_entry("importance: -entropy of the token's attention curve",
                                  -arrays["entropy"][:, None], ["importance"], cells,
                                  layered=False))
    out["values"] = {"chosen ratio": _rounded(arrays["ratio"])}
    if "reference" in arrays:
        out["reference"] = _strings(arrays["reference"])
    if "prompt_offsets" in arrays:
        from analyses.token_importance.aif import PROMPT_GROUPS

        offsets = arrays["prompt_offsets"]
        out["prompt"] = {
            "title": "the prompt's tokens: the answer position's attention to each (mean over "
                     "layers)",
            "groups": list(PROMPT_GROUPS), "scale_group": PROMPT_GROUPS.index("question"),
            "tokens": [_strings(t) for t in _by_offsets(arrays["prompt_tokens"], offsets)],
            "values": [_rounded(v) for v in _by_offsets(arrays["prompt_importance"], offsets)],
            "group": [g.astype(int).tolist() for g in _by_offsets(arrays["prompt_groups"],
                                                                  offsets)]}
    else:
        out["notes"].append("the run predates prompt token importance (no prompt_importance "
                            "in its arrays): rerun it to see the prompt's tokens coloured.")


def _attention_evolution(summary, arrays, out):
    series = summary.get("series") or [f"series {i}" for i in range(arrays["maps"].shape[1])]
    out["curves"].append(_curve("share of attention on the image", series,
                                arrays["image_share"]))
    out["maps"].append(_map_entry("attention on the image (heads averaged)", arrays["maps"],
                                  series, arrays["cells"]))
    if "head_maps" in arrays:
        heads = arrays["head_maps"]
        per_sample = heads[0].nbytes / heads.dtype.itemsize
        keep = max(1, int(HEADS_BUDGET_MB * 2**20 // max(per_sample, 1)))
        out["maps"].append(_map_entry("attention on the image per head", heads, series,
                                      arrays["cells"], heads=int(heads.shape[3]),
                                      every_sample=[i < keep for i in range(len(heads))]))
        if keep < len(heads):
            out["notes"].append(f"per-head maps are in this report for the first {keep} of "
                                f"{len(heads)} samples (a budget of {HEADS_BUDGET_MB:g} MB); the "
                                "others show the heads' mean.")
    out["maps"].append(_map_entry("relevant patches (the question's object)",
                                  arrays["relevant"][:, None].astype(float), ["relevant"],
                                  arrays["cells"], layered=False))


def _contrastive_attention(summary, arrays, out):
    methods = _methods(summary, arrays["answers"].shape[1])
    out["verdicts"] = _verdicts(methods, arrays["correct"], arrays["answers"])
    maps = arrays["maps"]
    out["maps"].append(_map_entry("attention of the answer position on the image", maps[:, None],
                                  [str((summary.get("config") or {}).get("series", "last"))],
                                  arrays["cells"]))
    layers = summary.get("layers") or {}
    if "late" in layers and "early" in layers:
        late, early = int(layers["late"]), int(layers["early"])
        norm = maps / np.maximum(maps.sum(-1, keepdims=True), 1e-12)
        out["maps"].append(_map_entry(f"contrast: layer {late} - layer {early}",
                                      (norm[:, late] - norm[:, early])[:, None], ["contrast"],
                                      arrays["cells"], signed=True, layered=False))
    out["maps"].append(_map_entry("suppressed patches (refined method)",
                                  arrays["suppressed"][:, None].astype(float), ["suppressed"],
                                  arrays["cells"], layered=False))


def _attenuation(summary, arrays, out):
    out["verdicts"] = _verdicts(["clean"], arrays["correct"][:, None])
    metrics = summary.get("metrics") or [f"metric {i}" for i in range(arrays["curves"].shape[1])]
    out["curves"].append(_curve("per-layer curves", metrics, arrays["curves"]))
    out["values"] = {"target cells": _rounded(arrays["target_cells"])}


def _evaluate(summary, arrays, out):
    methods = _methods(summary, arrays["replies"].shape[1])
    scores = np.where(arrays["excluded"], np.nan, arrays["scores"]) if "excluded" in arrays \
        else arrays["scores"]
    out["verdicts"] = _verdicts(methods, np.nan_to_num(scores) >= 0.5, arrays["replies"], scores)
    out["benchmark"] = _strings(arrays["benchmark"])


def _logit_lens(summary, arrays, out):
    out["verdicts"] = _verdicts(["clean"], arrays["correct"][:, None])
    out["curves"].append(_curve("the answer's probability at the last position (logit lens)",
                                ["answer probability"], arrays["answer_prob"][:, None]))
    out["curves"].append(_curve("the answer's rank at the last position (0 = top)",
                                ["answer rank"], arrays["answer_rank"][:, None]))
    text = dict(zip(arrays["token_ids"].tolist(), _strings(arrays["token_text"])))
    layer = [[None if v < 0 else int(v) for v in arrays[k].tolist()]
             for k in ("first_top1", "settled")]
    out["values"] = {"answer token": [repr(text.get(int(t), str(t)))
                                      for t in arrays["answer_token"]],
                     "first top-1 layer": layer[0], "settled layer": layer[1]}
    if "image_cells" not in arrays:
        out["notes"].append("the run predates image_cells in its arrays: rerun it to see the "
                            "image tokens naming the answer over each image.")
        return
    offsets = arrays["image_offsets"]
    names = [(top == answer).astype(np.float32) for top, answer in  # [image token, layer]
             zip(_by_offsets(arrays["image_top1"], offsets), arrays["answer_token"].tolist())]
    padded = _padded(names, np.nan).transpose(0, 2, 1)  # [sample, layer, image token]
    cells = _padded(_by_offsets(arrays["image_cells"], offsets), -1)
    out["maps"].append(_map_entry("image tokens whose top token is the answer (names the answer)",
                                  padded[:, None], ["names the answer"], cells, binary=True))
    region = _padded([r.astype(np.float32) for r in _by_offsets(arrays["in_box"], offsets)],
                     np.nan)
    out["maps"].append(_map_entry("the question's region (in box)", region[:, None],
                                  ["in box"], cells, layered=False, binary=True))


def _heads(summary, arrays, out):
    from analyses.heads.measure import control_change

    out["verdicts"] = _verdicts(["clean"], arrays["correct"][:, None])
    changes = arrays["prob_change_pct"]  # [sample, layer, head]
    flow = summary.get("flow", "")
    keys = [(r["layer"], r["head"]) for r in summary.get("heads") or [] if r.get("key_head")]
    out["grids"] += [
        grid_entry(f"drop of p(answer), % ({flow}); outlined: the run's key heads", -changes,
                   signed=True, marks=keys),
        grid_entry("direct logit attribution", arrays["dla_heads"], signed=True),
        grid_entry("attention on the image from last", arrays["image_share"][:, 0]),
        grid_entry("attention on the image from the question", arrays["image_share"][:, 1])]
    out["values"] = {"clean probability": _rounded(arrays["clean_probability"]),
                     "random-head control drop, %": _rounded(
                         -control_change(changes, arrays["control_heads"])),
                     "logit difference": _rounded(arrays["logit_difference"])}


def _sinks(summary, arrays, out):
    from analyses.sinks.measure import GROUPS, RATIO_GROUPS
    from figures.report.overviews import SINKS_RATIO, SINKS_ROWS

    for query, rows in SINKS_ROWS:
        out["curves"].append(_curve(f"attention of {rows} on each key group", GROUPS,
                                    arrays[f"{query}_share"].transpose(0, 2, 1)))
    out["curves"].append(_curve(SINKS_RATIO, RATIO_GROUPS, arrays["top_ratio"].transpose(0, 2, 1)))
    out["values"] = {
        "the first token's largest |h_d| / RMS(h)": _rounded(arrays["first_ratio"].max(1)),
        "layers with visual sink tokens": (arrays["visual_sinks"] > 0).sum(1).tolist(),
        "visual sink tokens, most in one layer": arrays["visual_sinks"].max(1).tolist()}


def _patching(summary, arrays, out):
    from figures.report.overviews import patching_effect

    effect, heads = arrays["effect"], arrays["head_effect"]  # [sample, site, layer, group]
    sites = summary.get("sites") or [f"site {s}" for s in range(effect.shape[1])]
    groups = summary.get("groups") or [f"group {g}" for g in range(effect.shape[3])]
    restoring = summary.get("restoring_layers") or {}
    what, short = patching_effect(summary), patching_effect(summary, short=True)
    for s, site in enumerate(sites):
        marks = [(g, layer) for g, group in enumerate(groups)
                 for layer in restoring.get(f"{site}:{group}", [])]
        by_group = effect[:, s].transpose(0, 2, 1)  # [sample, group, layer]
        out["grids"].append(grid_entry(f"{site}: {short}; outlined: the run's restoring layers",
                                       by_group, signed=True, marks=marks, row_label="group",
                                       col_label="layer", row_names=groups))
        out["curves"].append(_curve(f"{site}: {what}", groups, by_group))
    if heads.shape[2]:
        group = (summary.get("config") or {}).get("head_group", "last")
        out["grids"].append(grid_entry(f"heads at {group}: {short}", heads, signed=True))

    def answers(run: str) -> list[str]:  # "text" (token id); "–" where the run has none
        ids = arrays[f"{run}_token"].tolist()
        texts = _strings(arrays[f"{run}_text"]) if f"{run}_text" in arrays else [None] * len(ids)
        return [("–" if t < 0 else f"token {t}" if text is None else f"{text!r} (token {t})")
                for t, text in zip(ids, texts)]

    from analyses.patching.run import SKIPPED

    reasons = _strings(arrays["skipped"])
    for entry in out["grids"]:  # a skipped sample has no values: its grids are left out
        entry["data"] = [None if r else d for r, d in zip(reasons, entry["data"])]
    out["values"] = {"clean answer": answers("clean"), "corrupt answer": answers("corrupt"),
                     "logit difference, clean": _rounded(arrays["ld_clean"]),
                     "logit difference, corrupt": _rounded(arrays["ld_corrupt"]),
                     "skipped": [f"{r}: {SKIPPED.get(r, '')}".rstrip(": ") if r else
                                 "no (patched)" for r in reasons]}
    if "counterpart" in arrays and any(_strings(arrays["counterpart"])):
        out["values"]["counterpart"] = _strings(arrays["counterpart"])
    if "clean_text" not in arrays:
        out["notes"].append("the run predates its answers' text in its arrays (clean_text, "
                            "corrupt_text): the answers show as token ids; rerun it to see "
                            "their text.")


# analysis -> (the arrays it needs, the function filling the browser's record)
BROWSERS = {
    "layer_masking": (("sample_index", "prob_change_pct"), _layer_masking),
    "token_importance": (("sample_index", "answers", "correct", "dynamics", "entropy", "cells",
                          "kept_curve", "masked_curve"), _token_importance),
    "attention_evolution": (("sample_index", "maps", "cells", "image_share", "relevant"),
                            _attention_evolution),
    "contrastive_attention": (("sample_index", "maps", "cells", "answers", "correct",
                               "suppressed"), _contrastive_attention),
    "attenuation": (("curves", "correct"), _attenuation),
    "evaluate": (("sample_index", "replies", "scores"), _evaluate),
    "logit_lens": (("sample_index", "answer_prob", "answer_rank", "correct", "answer_token",
                    "image_top1", "image_offsets", "in_box", "token_ids", "token_text",
                    "first_top1", "settled"), _logit_lens),
    "heads": (("sample_index", "correct", "prob_change_pct", "dla_heads", "image_share",
               "control_heads", "clean_probability", "logit_difference"), _heads),
    "sinks": (("sample_index", "answer_share", "question_share", "top_ratio", "first_ratio",
               "visual_sinks"), _sinks),
    "patching": (("sample_id", "effect", "head_effect", "skipped", "clean_token",
                  "corrupt_token", "ld_clean", "ld_corrupt"), _patching),
}


def browser_record(summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict, str]:
    """(the sample browser's record of a run, "" or the sentence saying why it has none)."""
    analysis = summary.get("analysis")
    if analysis not in BROWSERS:
        return {}, f"the sample browser does not read {analysis} runs."
    needed, fill = BROWSERS[analysis]
    absent = [name for name in needed if name not in arrays]
    if absent:
        return {}, f"the run's arrays lack {', '.join(absent)}: no sample browser for it."
    first = arrays[needed[0]]
    count = len(first)
    index = arrays["sample_index"] if "sample_index" in arrays else np.arange(count)
    out: dict[str, Any] = {
        "n": count, "index": np.asarray(index).astype(int).tolist(),
        "id": _strings(arrays["sample_id"]) if "sample_id" in arrays else
        [str(i) for i in np.asarray(index).tolist()],
        "kind": _strings(arrays["kind"]) if "kind" in arrays else [""] * count,
        "verdicts": None, "curves": [], "maps": [], "grids": [], "values": {}, "prompt": None, "notes": [],
    }
    fill(summary, arrays, out)
    return out, ""
