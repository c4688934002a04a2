"""Duplicate ids and shared image keys, run end to end: a user's file whose ids repeat is
refused in one sentence naming them (a benchmark's repeated ids are numbered), and every sample
is measured on its own image (the pixels the
model was given are compared, sample by sample, with the image its row holds)."""

from __future__ import annotations

import importlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from benchmark_fixtures import build_pope, hub_cache
from PIL import Image

from analyses.data import load_dataset
from probes.cli import run_cli
from probes.models.adapters.base import Adapter

SIDE = 32


def colour(row: int) -> tuple[int, int, int]:
    return (40 * row % 256, 255 - 50 * row % 256, 90 + 30 * row % 150)


def png(row: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), colour(row)).save(buffer, format="PNG")
    return buffer.getvalue()


def own_parquet(tmp_path, ids):
    """Rows with images of their own colour, embedded as bytes, and the given ids."""
    path = tmp_path / "mine.parquet"
    rows = [{"id": sample_id, "image": {"bytes": png(r), "path": f"{r}.png"},
             "question": f"what colour is picture {r}?", "answer": "red"}
            for r, sample_id in enumerate(ids)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def layer_masking(argv, out):
    main = importlib.import_module("analyses.layer_masking.__main__").main
    return run_cli(main, [*argv, "--all-samples", "--bootstrap", "20", "--out", str(out)])


@pytest.fixture
def measured(monkeypatch):
    """question -> the pixels of every image the model was given with it."""
    seen: dict[str, list[np.ndarray]] = {}
    build = Adapter.build_inputs

    def spy(self, images, questions):
        for image, question in zip(images, questions):
            seen.setdefault(question, []).append(np.asarray(image.convert("RGB")))
        return build(self, images, questions)

    monkeypatch.setattr(Adapter, "build_inputs", spy)
    return seen


def test_duplicate_ids_are_refused_in_one_sentence_end_to_end(tmp_path, capsys, measured):
    path = own_parquet(tmp_path, ["a", "b", "a", "c", "b"])
    assert layer_masking(["--data", str(path)], tmp_path / "run") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: mine.parquet has several samples with the ids 'mine.parquet/a', "
                     "'mine.parquet/b'; every sample needs an id of its own (in your own file: a "
                     "unique 'id' per row, or no 'id' column, to number the rows)."]
    assert not measured  # refused before any sample reached the model


def test_every_sample_is_measured_on_its_own_rows_pixels(tmp_path, measured):
    path = own_parquet(tmp_path, ["r0", "r1", "r2", "r3"])
    assert layer_masking(["--data", str(path)], tmp_path / "run") == 0
    assert sorted(measured) == [f"what colour is picture {r}?" for r in range(4)]
    for r in range(4):
        for pixels in measured[f"what colour is picture {r}?"]:
            assert pixels.shape == (SIDE, SIDE, 3)
            assert (pixels == np.array(colour(r), dtype=np.uint8)).all(), r


def test_rows_that_share_an_image_key_keep_their_own_images(tmp_path, monkeypatch, measured):
    """POPE names each row's image (``image_source``); a file where two rows name the same
    image but hold different bytes gets each row's own bytes, not a cached neighbour's."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path)))
    folder = build_pope(tmp_path)
    parquet = next(folder.rglob("*.parquet"))
    table = pq.read_table(parquet).to_pylist()[:4]
    for r, row in enumerate(table):
        row.update(image={"bytes": png(r), "path": "same.png"}, image_source="same",
                   question=f"Is there a thing in picture {r}?", question_id="7")
    pq.write_table(pa.Table.from_pylist(table), parquet)
    dataset = load_dataset(f"pope:{folder}")
    # a benchmark's repeated ids are numbered, not refused: the file is not the user's to mend
    assert [s.id for s in dataset] == ["pope/random/7", "pope/random/7#2", "pope/random/7#3",
                                       "pope/random/7#4"]
    assert [s.image.getpixel((0, 0)) for s in dataset] == [colour(r) for r in range(4)]
    assert layer_masking(["--data", f"pope:{folder}"], tmp_path / "run") == 0
    for r in range(4):
        [asked] = [q for q in measured if f"picture {r}?" in q]
        for pixels in measured[asked]:
            assert (pixels == np.array(colour(r), dtype=np.uint8)).all(), r
