"""Reading images from disk into the RGB PIL images every processor expects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from probes.errors import UserError

T = TypeVar("T")
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


def open_image(source: Any, where: str, use: Callable[[Image.Image], T]) -> T:
    """``use(image)`` on the image PIL opens from ``source`` (a path or a binary file), the
    one guard around every read of a user's image: whatever PIL raises for a bad file (not
    only OSError: its decompression-bomb guard, ``SyntaxError``, ``struct.error``, ...)
    becomes one :class:`UserError` sentence naming ``where``, so a bad image fails only the
    sample it belongs to.

    >>> import io
    >>> open_image(io.BytesIO(b"GIF89a"), "sample 3", lambda image: image.size)
    Traceback (most recent call last):
    ...
    probes.errors.UserError: cannot read the image of sample 3: no image format PIL knows.
    """
    try:
        with Image.open(source) as opened:
            return use(opened)
    except UserError:
        raise
    except UnidentifiedImageError as err:
        raise UserError(f"cannot read the image of {where}: no image format PIL knows.") from err
    except Image.DecompressionBombError as err:  # its header promises too many pixels
        raise UserError(f"cannot read the image of {where}: PIL refuses it as a possible "
                        f"decompression bomb ({str(err).rstrip('.')}).") from err
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a damaged file
        raise UserError(f"cannot read the image of {where}: its file is damaged or cut short "
                        f"({type(err).__name__}).") from err


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, or raise a one-sentence :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file {str(path)!r} does not exist.")

    def decoded(opened: Image.Image) -> Image.Image:
        opened.load()
        return opened.copy()

    return to_rgb(open_image(path, repr(str(path)), decoded), source=repr(str(path)))
