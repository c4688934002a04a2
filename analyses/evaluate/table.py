"""The paper table of an evaluation: rows = methods, columns = benchmarks, each cell the
headline score in percent with its 95% CI; as Markdown (``table.md``), as LaTeX with booktabs
(``table.tex``) and as the short text the CLI prints. A dagger marks a change from clean with
p < 0.05 (the paired test of ``summary.json``).

>>> summary = {"method_names": ["clean"], "benchmarks": ["pope"], "results": {"pope": {
...     "methods": [{"method": "clean", "accuracy": 0.5, "ci_low": 0.25, "ci_high": 0.75,
...                  "n": 4, "p_value_vs_clean": None, "summary": "pope"}]}}}
>>> print(markdown_table(summary))
| method | pope (F1) |
|---|---|
| clean | 50.0 [25.0, 75.0] |
<BLANKLINE>
Scores in %, 95% CI in brackets; n per benchmark: pope 4.
<BLANKLINE>
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from analyses.evaluate.summary import headline_table

HEADLINE = {"mean": "", "macro": "macro", "pope": "F1", "refcoco": "IoU≥0.5"}
ALPHA = 0.05


def label(method: str) -> str:
    """A method's name in tables and figures: ``vif:PATH`` as ``vif:`` and the file's stem.

    >>> label("vif:runs/vif/module.safetensors"), label("aif")
    ('vif:module', 'aif')
    """
    name, _, path = method.partition(":")
    return f"{name}:{PurePath(path).stem}" if path else method


def percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def significant(row: Mapping[str, Any]) -> bool:
    p = row.get("p_value_vs_clean")
    return p is not None and p < ALPHA


def column(name: str, summary: Mapping[str, Any]) -> str:
    how = HEADLINE.get(summary["results"][name]["methods"][0].get("summary", "mean"), "")
    return f"{name} ({how})" if how else name


def _notes(summary: Mapping[str, Any], latex: bool = False) -> str:
    sizes = ", ".join(f"{name} {summary['results'][name]['methods'][0]['n']}"
                      for name in summary["benchmarks"])
    text = f"Scores in %, 95% CI in brackets; n per benchmark: {sizes}."
    table = headline_table(summary)
    if any(significant(row) for rows in table.values() for row in rows.values()):
        text += ((" \\dag" if latex else " †") + f": paired test vs clean, p < {ALPHA} (of "
                 "per-sample scores; for an F1 or macro-mean headline the change's paired "
                 "bootstrap CI in summary.json is the test of the headline).")
    excluded = [f"{label(method)} on {name}: {row['n']} with a region, {row['excluded']} excluded"
                for method, rows in table.items() for name, row in rows.items()
                if row.get("excluded")]
    if excluded:
        text += " Excluded samples: " + "; ".join(excluded) + "."
    return text


def _body(summary: Mapping[str, Any], cell, missing: str) -> list[tuple[str, list[str]]]:
    """Per method, its label and one cell per benchmark (``missing`` where it has no row)."""
    names = summary["benchmarks"]
    return [(label(method), [missing if rows.get(n) is None else cell(rows[n]) for n in names])
            for method, rows in headline_table(summary).items()]


def markdown_table(summary: Mapping[str, Any]) -> str:
    names = summary["benchmarks"]
    lines = ["| method | " + " | ".join(column(n, summary) for n in names) + " |",
             "|---|" + "---|" * len(names)]

    def cell(row) -> str:
        return (f"{percent(row['accuracy'])} [{percent(row['ci_low'])}, "
                f"{percent(row['ci_high'])}]" + ("†" if significant(row) else ""))

    lines += [f"| {method} | " + " | ".join(cells) + " |"
              for method, cells in _body(summary, cell, "-")]
    return "\n".join(lines) + "\n\n" + _notes(summary) + "\n"


LATEX = {"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#",
         "{": "\\{", "}": "\\}", "≥": "$\\geq$"}


def _latex_escape(text: str) -> str:
    return "".join(LATEX.get(character, character) for character in text)


def latex_table(summary: Mapping[str, Any]) -> str:
    names = summary["benchmarks"]
    lines = ["\\begin{tabular}{l" + "c" * len(names) + "}", "\\toprule",
             "Method & " + " & ".join(_latex_escape(column(n, summary)) for n in names)
             + " \\\\", "\\midrule"]

    def cell(row) -> str:
        return (f"{percent(row['accuracy'])}{{\\scriptsize\\,[{percent(row['ci_low'])}, "
                f"{percent(row['ci_high'])}]}}"
                + ("\\textsuperscript{\\dag}" if significant(row) else ""))

    lines += [_latex_escape(method) + " & " + " & ".join(cells) + " \\\\"
              for method, cells in _body(summary, cell, "--")]
    lines += ["\\bottomrule", "\\end{tabular}", "% " + _notes(summary, latex=True)]
    return "\n".join(lines) + "\n"


def text_table(summary: Mapping[str, Any]) -> str:
    """What ``python -m analyses.evaluate`` prints: per benchmark, a header, then each method's
    score with its CI and n, and its change from clean (method - clean, in points: positive =
    better than clean) with its CI and the paired test's p."""
    lines = [f"{summary['model']['id']} on {summary['data']['name']}: "
             f"{summary['n_samples']} samples; scores in %, change = method - clean in points"]
    width = max(len("method"), *(len(label(m)) for m in summary["method_names"])) + 2
    for name in summary["benchmarks"]:
        lines += [f"{column(name, summary)}",
                  f"  {'method':<{width}}{'score':>6} {'95% CI':>14} {'n':>5}  {'change':>6} "
                  f"{'95% CI':>14}  {'p vs clean':>10}"]
        for row in summary["results"][name]["methods"]:
            p = row["p_value_vs_clean"]
            change = "" if row["method"] == "clean" or row["n"] == 0 else (
                f"  {100 * row['delta']:+6.1f} {_ci(row, 'delta_ci'):>14}  "
                + (f"{'-':>10}" if p is None else f"{p:10.3f}"))
            lines.append(f"  {label(row['method']):<{width}}{percent(row['accuracy']):>6} "
                         f"{_ci(row, 'ci'):>14} {row['n']:>5}{change}")
    return "\n".join(lines)


def _ci(row: Mapping[str, Any], prefix: str) -> str:
    return f"[{percent(row[prefix + '_low'])}, {percent(row[prefix + '_high'])}]"


def table_files(summary: Mapping[str, Any]) -> dict[str, str]:
    """The paper table as files: ``table.md`` and ``table.tex``."""
    return {"table.md": markdown_table(summary), "table.tex": latex_table(summary)}
