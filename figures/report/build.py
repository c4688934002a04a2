"""The report's one HTML file: every run's summary, findings, provenance and per-sample records
as one JSON blob inside the page, with the page's own script and style (no library, nothing
fetched: the file opens from disk with no network).

>>> html = page({"runs": []})
>>> html.startswith("<!doctype html>"), "<link" in html, 'src="http' in html
(True, False, False)
"""

from __future__ import annotations

import base64
import io
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from figures.report.overviews import overview_panels
from figures.report.runs import Run, read_runs
from figures.report.samples import browser_record

IMAGE_SIDE = 256  # pixels along an embedded image's longer side
PROVENANCE = ("analysis", "model", "data", "n_samples", "config", "versions", "seed", "timing",
              "base_model")
NOT_FINDINGS = {*PROVENANCE, "axes", "per_layer", "rules", "skipped", "failed"}
ROW_FIELDS = {"layer", "mean", "ci_low", "ci_high", "n"}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities -> None, numpy -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def charts(summary: dict[str, Any], spec: dict[str, str] | None = None
           ) -> list[dict[str, Any]]:
    """The summary's ``per_layer`` rows as panels of lines: one panel per metric (or per series
    where rows are split by subset), one line per series (or subset), points with CI. ``spec``
    (an analysis's own, :mod:`figures.report.overviews`): the row fields naming the ``panel``
    and the ``line``, and the panel's ``title`` ("{}" for the panel field's value); or
    ``names``, {series: [panel, line]} (a series it does not name is a panel of its own)."""
    rows = [r for r in summary.get("per_layer") or [] if isinstance(r, dict) and "layer" in r]
    panels: dict[str, dict[str, list]] = {}
    for row in rows:
        labels = {k: v for k, v in row.items() if k not in ROW_FIELDS and isinstance(v, str)}
        if spec and "names" in spec:
            series = labels.get("series", "")
            panel, line = spec["names"].get(series, (series, "mean"))
        elif spec:
            panel = spec.get("title", "{}").format(labels.get(spec["panel"], ""))
            line = labels.get(spec["line"], "") or "mean"
        else:
            if "subset" in labels:
                panel, line = labels.pop("series", ""), labels.pop("subset")
            else:
                panel, line = labels.pop("metric", ""), labels.pop("series", "")
            line = " ".join([line, *labels.values()]).strip() or "mean"
        point = {k: row.get(k) for k in ROW_FIELDS}
        panels.setdefault(panel, {}).setdefault(line, []).append(point)
    return [{"title": title, "lines": [{"name": name, "points": sorted(points, key=lambda p:
                                                                       p["layer"])}
                                       for name, points in lines.items()]}
            for title, lines in panels.items()]


def marks(summary: dict[str, Any]) -> list[int]:
    """Layers to mark on the charts: fusion layers where the run found any."""
    found = set(summary.get("fusion_layers") or [])
    for layers in (summary.get("fusion_layers_by_flow") or {}).values():
        found.update(layers or [])
    return sorted(int(x) for x in found)


def findings(summary: dict[str, Any], hide=()) -> tuple[list[dict], dict[str, Any]]:
    """(the summary's tables: every top-level list of row dicts, key-values of the rest),
    without the keys of ``hide``."""
    tables, values = [], {}
    for key, value in summary.items():
        if key in NOT_FINDINGS or key in hide:
            continue
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            columns = list(dict.fromkeys(k for r in value for k in r))
            tables.append({"title": key, "columns": columns,
                           "rows": [[r.get(c) for c in columns] for r in value]})
        else:
            values[key] = value
    return tables, values


def image_uri(image, side: int = IMAGE_SIDE) -> tuple[str, tuple[int, int]]:
    """(a sample's image as a JPEG data URI, its longer side at most ``side`` pixels; the
    JPEG's (width, height))."""
    from PIL import Image

    picture = image.convert("RGB") if isinstance(image, Image.Image) else \
        Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=82)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri, picture.size


def _map_cells(record: dict[str, Any], i: int):
    """The (grid, row, col) of each value of sample ``i``'s maps, None where the maps differ."""
    found = [np.asarray(e["cells"] if e["cells"] is not None else e["sample_cells"][i])
             for e in record["maps"]]
    if not found or any(c.shape != found[0].shape or (c != found[0]).any() for c in found):
        return None
    return found[0]


def place_maps(run: Run, record: dict[str, Any], images: list) -> None:
    """Add each sample's token boxes (:mod:`figures.report.boxes`) to ``record`` where the
    run's model's processor can be built here; else a note that the maps are stretched."""
    from figures.report.boxes import Placer, adapter_for

    record["boxes"] = [None] * record["n"]
    if not record["maps"]:
        return
    adapter, why = adapter_for(run.summary)
    placed = 0
    if adapter is not None:
        placer = Placer(adapter)
        for i, (image, shown) in enumerate(images):
            cells = _map_cells(record, i)
            if image is None or cells is None:
                continue
            try:
                record["boxes"][i] = placer.pack(image, record["question"][i], cells, shown)
                placed += 1
            except Exception as err:  # a processor that refuses this image: say it, go on
                why = why or f"the processor refused a sample's image ({str(err).rstrip('.')})"
    if placed < record["n"]:
        reason = f" ({why})" if why else " (its image is not available)"
        record["notes"].append(
            f"{record['n'] - placed} of {record['n']} samples' maps are drawn on the token grid "
            f"stretched over the whole image{reason}: a processor's crop, padding or tiles are "
            "not undone there (LLaVA-NeXT: its base grid only).")


def sample_texts(run: Run, record: dict[str, Any]) -> None:
    """Add each sample's image, question and answer to ``record`` from the run's dataset
    (reloaded offline from its data record, checked by fingerprint); where it cannot be
    loaded, the examples' images saved in the run, and a note."""
    from analyses.merge import LazyDataset
    from probes.errors import UserError

    count = record["n"]
    record.update(image=[None] * count, question=[""] * count, answer=[""] * count)
    originals: list = [(None, None)] * count
    data = run.summary.get("data") or {}
    try:
        if not {"name", "split", "size", "fingerprint"} <= set(data):
            raise UserError("the run records no data spec to reload it from")
        dataset = LazyDataset(data, (run.summary.get("model") or {}).get("family"))
        for i, index in enumerate(record["index"]):
            sample = dataset[index]
            record["image"][i], shown = image_uri(sample.image)
            originals[i] = (sample.image, shown)
            record["question"][i] = sample.question
            record["answer"][i] = sample.answer
    except (UserError, Exception) as err:  # any failure of a user's data: say it, go on
        reason = str(err).rstrip(".")
        examples = run.arrays.get("example_images")
        where = {int(k): j for j, k in enumerate(run.arrays.get("example_index", []))}
        found = 0
        for i, index in enumerate(record["index"]):
            if examples is not None and index in where:
                record["image"][i] = image_uri(examples[where[index]])[0]
                found += 1
        record["notes"].append(f"the images and questions come from the run's dataset, which "
                               f"could not be loaded here ({reason}); {found} of {count} samples "
                               "have the example image the run saved.")
    place_maps(run, record, originals)


def run_view(run: Run) -> dict[str, Any]:
    """Everything the page shows of one run."""
    summary = run.summary
    panels = overview_panels(summary)
    tables, values = findings(summary, panels["hide"])
    record, why = browser_record(summary, run.arrays) if summary else ({}, "")
    if record:
        sample_texts(run, record)
    missing = list(run.missing)
    if why and summary and run.arrays:
        missing.append(why)
    skipped = [f"skipped {row.get('part')}: {row.get('reason')}" for row in
               summary.get("skipped") or []]
    return _clean({
        "label": run.label, "path": str(run.path), "analysis": run.analysis,
        "provenance": {**{k: summary[k] for k in PROVENANCE if k in summary},
                       **panels["provenance"]},
        "charts": charts(summary, panels["charts"]), "marks": marks(summary),
        "grids": panels["grids"], "bars": panels["bars"], "tables": panels["tables"] + tables,
        "findings": values, "rules": summary.get("rules") or {},
        "missing": missing, "skipped": skipped, "samples": record,
    })


def bundle(paths) -> dict[str, Any]:
    """The page's data for the runs in ``paths`` (one analysis)."""
    runs = read_runs(paths)
    return {"analysis": next((r.analysis for r in runs if r.analysis), None),
            "runs": [run_view(run) for run in runs]}


def _asset(name: str) -> str:
    return resources.files("figures.report").joinpath(name).read_text(encoding="utf-8")


def page(data: dict[str, Any]) -> str:
    """The HTML of the report for ``data`` (:func:`bundle`)."""
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = f"fusionlens report: {data.get('analysis') or 'runs'}"
    return (_asset("page.html").replace("{{title}}", title)
            .replace("{{style}}", _asset("report.css"))
            .replace("{{script}}", _asset("report.js"))
            .replace("{{data}}", blob))  # last: the data may hold any text


def write_report(paths, out: str | Path) -> Path:
    """Build the report of the runs in ``paths`` into the file ``out``."""
    from analyses.results import write_atomic

    out = Path(out)
    html = page(bundle(paths))
    write_atomic(out, html.encode("utf-8"))
    return out
