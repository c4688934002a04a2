"""A bad image fails only itself, through the one guard every image read passes
(:func:`probes.images.open_image`): the decompression-bomb guard and damaged files are one
sentence with exit code 2 in ``probes.models answer`` and ``probes.lens crosscheck`` (checked
before any model loads), and one failed sample in a dataset."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image
from test_fuzz_data import BAD_IMAGES, BOMB, png

from probes.cli import run_cli
from probes.errors import UserError
from probes.images import load_image


def cut_png() -> bytes:
    """A 64x64 PNG of noise cut in half: its header reads, its pixels do not."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = png(Image.fromarray(noise))
    return data[: len(data) // 2]


@pytest.mark.parametrize("command", [
    ("probes.models", ["answer"]),
    ("probes.lens", ["crosscheck"]),
])
@pytest.mark.parametrize("image,expected", [
    (BOMB, "PIL refuses it as a possible decompression bomb (Image size (900000000 pixels) "
           "exceeds limit of 178956970 pixels, could be decompression bomb DOS attack)."),
    (cut_png(), "its file is damaged or cut short (OSError)."),
])
def test_a_bad_image_is_one_sentence_before_the_model(command, image, expected, tmp_path, capsys):
    module, argv = command
    path = tmp_path / "picture.png"
    path.write_bytes(image)
    main = importlib.import_module(f"{module}.__main__").main
    assert run_cli(main, [*argv, "--image", str(path), "--question", "what is it?"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot read the image of {str(path)!r}: {expected}"]


def test_every_bad_image_kind_is_a_user_error(tmp_path):
    for name, data in sorted(BAD_IMAGES.items()):
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        if name in ("gif", "bmp", "tiff", "jpeg"):  # good files of other formats
            assert load_image(path).size == (16, 16)
            continue
        with pytest.raises(UserError):
            load_image(path)
