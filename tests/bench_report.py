"""The report's size and first-view time at full size: a synthetic attention-evolution run of
200 samples x 32 layers at LLaVA-1.5 geometry (576 image tokens, 2 series, 32 heads recorded),
written as files (no model), built into one HTML file and opened in headless Chromium; and a
synthetic heads run of 200 samples of a 32 layer x 32 head model (its overview: four 32 x 32
heatmaps; each sample's four grids); and a synthetic patching run of 200 samples of a 32 layer x
32 head model (residual, attn and mlp at three token groups, every head: its overview's four
heatmaps, each sample's four grids).

    make bench        (or: python tests/bench_report.py [--samples 200] [--heads 32])

Prints the file's size, the build time, and the page's first view (performance.now() when the
overview is drawn, and Chromium's first contentful paint), the median of 3 loads. Rows for
bench-results.json: the file against the naive way of storing its maps (one PNG per sample,
series and layer, as figures would), and the first view against the 2 s it must stay under.
Smoke mode (``FUSIONLENS_BENCH_SMOKE=1``): 4 samples x 2 layers, 2 heads, one load."""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import report, sized  # noqa: E402
from test_report import (  # noqa: E402
    Opened,
    launch,
    synthetic_heads_run,
    synthetic_patching_run,
    synthetic_run,
)

from figures.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=sized(200, 4))
    parser.add_argument("--layers", type=int, default=sized(32, 2))
    parser.add_argument("--heads", type=int, default=sized(32, 2))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run = synthetic_run(folder / "run", args.samples, args.layers, heads=args.heads)
        started = time.perf_counter()
        path = write_report([run], folder / "report.html")
        build = time.perf_counter() - started
        size = path.stat().st_size / 2**20
        naive = png_per_map_mb(run)
        firsts, paints, samples = [], [], []
        with sync_playwright() as playwright:
            browser = launch(playwright)
            for _ in range(sized(3, 1)):
                opened = Opened(browser, path)
                firsts.append(opened.first_view_ms())
                paints.append(opened.page.evaluate(
                    "performance.getEntriesByName('first-contentful-paint')[0].startTime"))
                started = time.perf_counter()
                opened.page.click("[data-tab=samples]")
                opened.page.wait_for_function(
                    "document.querySelector('canvas.overlay') && "
                    "document.querySelector('canvas.overlay').width > 1")
                samples.append((time.perf_counter() - started) * 1000)
                opened.close()
            browser.close()
    print(f"report: {args.samples} samples x {args.layers} layers x 576 tokens x 2 series, "
          f"{args.heads} heads recorded")
    print(f"  file size          {size:.1f} MB")
    print(f"  build              {build:.1f} s")
    print(f"  first view drawn   {statistics.median(firsts):.0f} ms (median of 3)")
    print(f"  first paint        {statistics.median(paints):.0f} ms")
    print(f"  samples tab + map  {statistics.median(samples):.0f} ms")
    shape = f"{args.samples} samples x {args.layers} layers x 576 tokens, {args.heads} heads"
    first = statistics.median(firsts)
    heads_size, heads_first, heads_sample = grids_report(args.samples, args.layers, args.heads)
    print(f"heads report: {args.samples} samples x {args.layers} layers x {args.heads} heads")
    print(f"  file size          {heads_size:.1f} MB")
    print(f"  first view drawn   {heads_first:.0f} ms (median of 3)")
    print(f"  samples tab        {heads_sample:.0f} ms")
    heads_shape = f"heads run, {args.samples} samples x {args.layers} layers x {args.heads} heads"
    patching_size, patching_first, patching_sample = grids_report(
        args.samples, args.layers, args.heads, synthetic_patching_run)
    print(f"patching report: {args.samples} samples x {args.layers} layers, residual, attn and "
          f"mlp at 3 token groups, {args.heads} heads")
    print(f"  file size          {patching_size:.1f} MB")
    print(f"  first view drawn   {patching_first:.0f} ms (median of 3)")
    print(f"  samples tab        {patching_sample:.0f} ms")
    patching_shape = (f"patching run, {args.samples} samples x {args.layers} layers x 3 sites x "
                      f"3 groups + {args.heads} heads")
    report([
        {"name": "report: file size, PNG per map vs ours", "baseline": naive, "ours": size,
         "unit": "MB", "ratio": naive / size, "shape": shape},
        {"name": "report: first view, 2 s target vs ours", "baseline": 2000.0, "ours": first,
         "unit": "ms", "ratio": 2000.0 / first, "shape": shape},
        {"name": "report: heads file size, 25 MB target vs ours", "baseline": 25.0,
         "ours": heads_size, "unit": "MB", "ratio": 25.0 / heads_size, "shape": heads_shape},
        {"name": "report: heads first view, 2 s target vs ours", "baseline": 2000.0,
         "ours": heads_first, "unit": "ms", "ratio": 2000.0 / heads_first,
         "shape": heads_shape},
        {"name": "report: patching file size, 25 MB target vs ours", "baseline": 25.0,
         "ours": patching_size, "unit": "MB", "ratio": 25.0 / patching_size,
         "shape": patching_shape},
        {"name": "report: patching first view, 2 s target vs ours", "baseline": 2000.0,
         "ours": patching_first, "unit": "ms", "ratio": 2000.0 / patching_first,
         "shape": patching_shape},
    ])


def grids_report(samples: int, layers: int, heads: int, make=synthetic_heads_run
                 ) -> tuple[float, float, float]:
    """(MB, first view ms, samples tab ms; medians) of the report of a synthetic run of grids
    (``make``: heads, or patching)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run = make(folder / "run", samples, layers, heads)
        path = write_report([run], folder / "report.html")
        firsts, tabs = [], []
        with sync_playwright() as playwright:
            browser = launch(playwright)
            for _ in range(sized(3, 1)):
                opened = Opened(browser, path)
                firsts.append(opened.first_view_ms())
                started = time.perf_counter()
                opened.page.click("[data-tab=samples]")
                opened.page.wait_for_selector("#sample-detail .chart.grid")
                tabs.append((time.perf_counter() - started) * 1000)
                opened.close()
            browser.close()
        return (path.stat().st_size / 2**20, statistics.median(firsts),
                statistics.median(tabs))


def png_per_map_mb(run: Path) -> float:
    """The naive way's size: every recorded map (sample x series x layer, heads averaged) as its
    own 8-bit grayscale PNG of the token grid, base64 in the page (4/3 of the bytes)."""
    from PIL import Image

    from analyses.results import RunResult

    maps = RunResult.load(run).arrays["maps"]  # [samples, series, layers, tokens]
    side = int(round(maps.shape[-1] ** 0.5))
    total = 0
    for values in maps.reshape(-1, maps.shape[-1]):
        scaled = (255 * values / max(float(values.max()), 1e-12)).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(scaled.reshape(side, side), mode="L").save(buffer, format="PNG")
        total += len(buffer.getvalue())
    return total * 4 / 3 / 2**20


if __name__ == "__main__":
    main()
