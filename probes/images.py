"""Reading images from disk into the RGB PIL images every processor expects."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from probes.errors import UserError

MIN_IMAGE_SIDE = 8  # below this no vision tower has a patch to see; refuse rather than upscale noise


def to_rgb(image: Image.Image, source: str = "the image") -> Image.Image:
    """Return ``image`` as RGB: grayscale is replicated, transparency is composited on white.

    >>> to_rgb(Image.new("LA", (16, 16), (0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise UserError(
            f"{source} is {width}x{height} pixels; fusionlens needs at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}."
        )
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, or raise a one-sentence :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file {str(path)!r} does not exist.")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read {str(path)!r} as an image ({type(err).__name__}).") from err
    return to_rgb(image, source=repr(str(path)))
