"""docs/python.md runs: its python blocks, in order, in one namespace, on the embedded
tiny-llava; what the page says they print is what they print, and the overlay is a PNG."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from PIL import Image

from probes.models.answer import answer_questions

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# what the page's comments say the blocks print
CLAIMED = ["llava 6", "25 of 64", "[('red', 0.91), ('yellow', 0.03), ('brown', 0.02)]",
           "layer 1: blue 0.73", "(64,) (4, 1, 64)", "red -> gray",
           *(f"layer {layer}: red" for layer in (0, 2, 3, 4, 5))]


def test_python_blocks_run_in_order_and_print_what_the_page_says(tmp_path, monkeypatch):
    blocks = BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "quickstart"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"{PAGE.name} block {number}", "exec"), namespace)
    for claim in CLAIMED:
        assert claim in printed.getvalue(), f"the page claims {claim!r}; printed:\n{printed.getvalue()}"
    # the reply is the model's own greedy answer (transformers' generate as the reference)
    loaded, image = namespace["loaded"], namespace["image"]
    [reference] = answer_questions(loaded, [image], ["what color is the circle?"], 16)
    assert namespace["reply"].text == reference.text
    with Image.open(namespace["path"]) as png:
        assert png.format == "PNG" and min(png.size) > 100
