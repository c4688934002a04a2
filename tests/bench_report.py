"""The report's size and first-view time at full size: a synthetic attention-evolution run of
200 samples x 32 layers at LLaVA-1.5 geometry (576 image tokens, 2 series, 32 heads recorded),
written as files (no model), built into one HTML file and opened in headless Chromium.

    make bench        (or: python tests/bench_report.py [--samples 200] [--heads 32])

Prints the file's size, the build time, and the page's first view (performance.now() when the
overview is drawn, and Chromium's first contentful paint), the median of 3 loads."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_report import Opened, launch, synthetic_run  # noqa: E402

from figures.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run = synthetic_run(folder / "run", args.samples, args.layers, heads=args.heads)
        started = time.perf_counter()
        path = write_report([run], folder / "report.html")
        build = time.perf_counter() - started
        size = path.stat().st_size / 2**20
        firsts, paints, samples = [], [], []
        with sync_playwright() as playwright:
            browser = launch(playwright)
            for _ in range(3):
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


if __name__ == "__main__":
    main()
