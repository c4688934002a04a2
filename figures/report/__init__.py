"""``python -m figures.report RUN [RUN ...] --out report.html``: one self-contained HTML page of
saved runs (no model loaded) that opens from disk in any browser with no network: the headline
curves with their CI bands, the findings and the provenance of every run, and a sample browser
with the recorded maps over each image under a layer slider and a head selector.

:func:`write_report` builds the file; :func:`bundle` gives the data the page shows."""

from figures.report.build import bundle, write_report

__all__ = ["bundle", "write_report"]
