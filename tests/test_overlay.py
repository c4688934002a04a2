"""figures.overlay on the three tiny families: a map that is 1 on exactly the tokens whose
cells overlap a box (the existing boxes -> patches code) is drawn over that box in the
original image, on square and non-square images, checked against the box itself and a bound
on the token cell size read from each family's processor settings or output (not from the
adapter's layout), and on the rendered pixels of the figure."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import TINY_FAMILIES
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from test_adapter_llava import _llava_config, _llava_processor
from test_adapter_llava_next import _real_config, _real_image_processor
from test_adapter_llava_onevision import real_config, real_image_processor
from test_adapter_qwen2_5_vl import _qwen2_5_vl_7b_config, _qwen_processor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

import figures
from figures.attention_evolution import cell_boxes
from figures.overlay import raster
from probes.inputs import build_inputs, token_boxes
from probes.models.adapters import (
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen2_5_VLAdapter,
)
from probes.models.adapters.grids import ImageTokens
from probes.models.loading import load_model
from probes.quick import record_attention

FAMILIES = list(TINY_FAMILIES)
SIZES = [(64, 64), (100, 70), (70, 100)]
BOX = (30, 20, 60, 50)  # inside every size, and inside LLaVA's centre crop of each


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in FAMILIES}


def _object_map(loaded, size):
    """Inputs of a ``size`` image with BOX, and the map: 1 on the object's tokens, else 0."""
    inputs = build_inputs(loaded, Image.new("RGB", size, (40, 40, 40)), "what is it?", box=BOX)
    groups = inputs.groups[0]
    values = np.isin(groups.image, groups.object).astype(float)
    return inputs, values


def _largest_cell(loaded, inputs, size) -> tuple[float, float]:
    """An upper bound on a token cell's (width, height) in original pixels, from the
    processor's settings or output alone."""
    width, height = size
    vision = loaded.model.config.vision_config
    if loaded.adapter.family == "llava":  # shortest edge resized to `shortest_edge`, one grid
        side = min(width, height) * vision.patch_size / loaded.adapter.image_processor.size["shortest_edge"]
        return side, side
    if loaded.adapter.family in ("llava-next", "llava-onevision"):  # base view squashed; tiles
        # at least as fine (OneVision's downsampled tiles still hold 9 tiles' worth of cells)
        side = max(width, height) * vision.patch_size / vision.image_size
        return side, side
    if loaded.adapter.family == "internvl":  # the thumbnail squashes the image to one view
        view = loaded.adapter.image_processor.size["height"]
        token = vision.patch_size[0] / loaded.model.config.downsample_ratio
        return width * token / view, height * token / view
    if loaded.adapter.family in ("smolvlm", "idefics3"):  # the global view: squashed to one
        view = loaded.adapter.image_processor.max_image_size["longest_edge"]
        token = vision.patch_size * loaded.model.config.scale_factor
        return width * token / view, height * token / view
    if loaded.adapter.family == "gemma3":  # squashed to a square of sqrt(mm_tokens) cells a side
        side = int(loaded.model.config.mm_tokens_per_image ** 0.5)
        return width / side, height / side
    if loaded.adapter.family == "mistral3":  # resized (height, width); tokens merge patches
        resized_h, resized_w = inputs.batch["image_sizes"][0].tolist()
        cell = vision.patch_size * loaded.model.config.spatial_merge_size
        return width / (resized_w / cell), height / (resized_h / cell)
    _, rows, cols = inputs.batch["image_grid_thw"][0].tolist()  # in patches; tokens merge 2x2
    merge = vision.spatial_merge_size
    return width / (cols / merge), height / (rows / merge)


def _centres(size):
    width, height = size
    return np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_object_map_is_drawn_over_the_box(models, name, size):
    loaded = models[name]
    inputs, values = _object_map(loaded, size)
    painted = raster(values, token_boxes(inputs), size)
    assert painted.shape == (size[1], size[0])
    lit = np.nan_to_num(painted) > 0
    x, y = _centres(size)
    x0, y0, x1, y1 = BOX
    inside = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    layout = inputs.images[0].layout
    # pixels no token sees: only LLaVA-OneVision's, whose tower input is no multiple of its
    # patch (a strip at the end of the base view and of every tile)
    seen = _union(layout, range(layout.n_tokens), x, y)
    assert seen[inside].all() or name == "tiny-random-llava-onevision"
    assert seen[inside].mean() > 0.9
    assert lit[inside & seen].all(), "every seen pixel of the box lies in a lit token cell"
    cell_w, cell_h = _largest_cell(loaded, inputs, size)
    near = (x > x0 - cell_w) & (x < x1 + cell_w) & (y > y0 - cell_h) & (y < y1 + cell_h)
    assert not (lit & ~near).any(), "a lit pixel lies farther from the box than one cell"
    # exactly the union of the lit tokens' cells, by a per-pixel loop over the layout
    np.testing.assert_array_equal(lit, _union(layout, np.flatnonzero(values), x, y))


def _union(layout, tokens, x, y) -> np.ndarray:
    """The pixels (centres ``x``, ``y``) inside the cell of any of ``tokens``."""
    union = np.zeros(x.shape, dtype=bool)
    for k in tokens:
        box = layout.token_box(k)
        if box is not None:
            cx0, cy0, cx1, cy1 = box
            union |= (x >= cx0) & (x < cx1) & (y >= cy0) & (y < cy1)
    return union


def _real_7b(family: str, size):
    """(adapter, largest token cell (w, h) in original pixels) at the 7B checkpoints' settings;
    the bound comes from the processor's settings or output alone."""
    width, height = size
    if family == "llava":  # CLIP 336: shortest edge to 336, centre crop
        return LlavaAdapter(_llava_config(), _llava_processor()), (min(size) * 14 / 336,) * 2
    if family == "llava-pad":  # padded to a square first, then resized to 336
        processor = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 336},
                                           crop_size={"height": 336, "width": 336})
        return LlavaAdapter(_llava_config(), processor), (max(size) * 14 / 336,) * 2
    if family == "llava-next":  # base view squashed to 336, tiles at least as fine
        return LlavaNextAdapter(_real_config(), _real_image_processor()), (max(size) * 14 / 336,) * 2
    if family == "llava-onevision":  # base view squashed to 384 (27 patches of 14 px)
        return LlavaOnevisionAdapter(real_config(), real_image_processor()), (max(size) * 14 / 384,) * 2
    processor = _qwen_processor()
    _, rows, cols = processor(Image.new("RGB", size), return_tensors="pt")["image_grid_thw"][0].tolist()
    return Qwen2_5_VLAdapter(_qwen2_5_vl_7b_config(), processor), (width / (cols / 2), height / (rows / 2))


@pytest.mark.parametrize("family", ["llava", "llava-pad", "llava-next", "llava-onevision",
                                    "qwen2_5_vl"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (500, 333)])
def test_real_7b_geometries_draw_over_the_box(family, size):
    box = (200, 150, 330, 300)
    adapter, (cell_w, cell_h) = _real_7b(family, size)
    layout = adapter.image_layout(size)
    tokens = ImageTokens(positions=np.arange(layout.n_tokens), layout=layout)
    values = np.zeros(layout.n_tokens)
    values[layout.tokens_in_box(box)] = 1.0
    boxes = token_boxes(SimpleNamespace(images=(tokens,)))
    # NaN: LLaVA-NeXT's row newlines and cells wholly in padding; none for a crop or Qwen
    assert np.isnan(boxes).any() == (family in ("llava-pad", "llava-next", "llava-onevision"))
    lit = np.nan_to_num(raster(values, boxes, size)) > 0
    x, y = _centres(size)
    x0, y0, x1, y1 = box
    assert lit[(x > x0) & (x < x1) & (y > y0) & (y < y1)].all()
    near = (x > x0 - cell_w) & (x < x1 + cell_w) & (y > y0 - cell_h) & (y < y1 + cell_h)
    assert not (lit & ~near).any()


def _rendered(image_size, values, boxes, scale: int = 2) -> np.ndarray:
    """The overlay drawn on a black image with opaque colours, on axes filling a canvas of
    ``scale`` canvas pixels per image pixel; RGB [H * scale, W * scale]."""
    width, height = image_size
    figure = Figure(figsize=(width * scale / 100, height * scale / 100), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1))
    black = np.zeros((height, width, 3), dtype=np.uint8)
    assert figures.overlay(black, values, boxes, ax=axes, alpha=1.0, vmin=0, vmax=1,
                           cmap="viridis") is figure
    axes.set_axis_off()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES[1:])
def test_rendered_overlay_colours_the_box(models, name, size):
    loaded = models[name]
    inputs, values = _object_map(loaded, size)
    rgb = _rendered(size, values, token_boxes(inputs))
    assert rgb.shape[:2] == (size[1] * 2, size[0] * 2)
    zero = np.array(colormaps["viridis"](0.0)[:3]) * 255
    coloured = (np.abs(rgb - zero).sum(-1) > 30) & (rgb.sum(-1) > 30)  # neither 0 nor uncovered
    expected = np.nan_to_num(raster(values, token_boxes(inputs), size)) > 0
    expected = expected.repeat(2, 0).repeat(2, 1)
    # the canvas may round an edge by one canvas pixel (half an image pixel), never more
    differ = coloured != expected
    assert differ.mean() < 0.02
    inner = np.zeros_like(expected)
    inner[1:-1, 1:-1] = (expected[1:-1, 1:-1] & expected[:-2, 1:-1] & expected[2:, 1:-1]
                         & expected[1:-1, :-2] & expected[1:-1, 2:])
    outer = ~expected
    outer[1:-1, 1:-1] = ~(expected[1:-1, 1:-1] | expected[:-2, 1:-1] | expected[2:, 1:-1]
                          | expected[1:-1, :-2] | expected[1:-1, 2:])
    assert coloured[inner].all() and not coloured[outer].any()


def test_mean_and_max_where_tokens_share_pixels():
    boxes = np.array([[0, 0, 8, 8], [4, 0, 8, 4]], dtype=float)  # a coarse cell, a fine one on it
    mean = raster(np.array([1.0, 3.0]), boxes, (8, 8))
    assert mean[0, 0] == 1.0 and mean[0, 5] == 2.0 and mean[6, 6] == 1.0
    assert raster(np.array([1.0, 3.0]), boxes, (8, 8), combine="max")[0, 5] == 3.0
    with pytest.raises(ValueError, match="one pixel box per token"):
        raster(np.ones(3), boxes, (8, 8))


def test_large_images_are_drawn_at_a_bounded_resolution():
    boxes = np.array([[0, 0, 1500, 1000], [1500, 1000, 3000, 2000]], dtype=float)
    painted = raster(np.array([1.0, 2.0]), boxes, (3000, 2000), scale=1024 / 3000)
    assert painted.shape == (683, 1024)
    assert painted[0, 0] == 1.0 and painted[-1, -1] == 2.0 and np.isnan(painted[0, -1])
    figure = figures.overlay(np.zeros((2000, 3000, 3), np.uint8), np.array([1.0, 2.0]), boxes)
    assert figure.axes[0].images[1].get_array().shape == (683, 1024)


def test_recording_boxes_match_token_boxes(models):
    loaded = models["tiny-random-llava-next"]
    inputs, _ = _object_map(loaded, (100, 70))
    recording = record_attention(loaded, inputs, queries="last", keys="image", layers=[1])
    np.testing.assert_array_equal(recording.boxes, token_boxes(inputs))
    newlines = np.setdiff1d(inputs.groups[0].image, inputs.groups[0].image_patches)
    assert newlines.size and np.isnan(token_boxes(inputs, newlines)).all()
    assert recording.values(1).shape == (inputs.groups[0].image.size,)


def test_attention_evolution_thumbnails_place_the_first_grid():
    cells = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]])
    geometry = np.array([2, 2, -0.25, 0.0, 0.75, 0.5])  # padded left of the image
    boxes = cell_boxes(cells, geometry, 64)
    np.testing.assert_allclose(boxes[:3], [[0, 0, 32, 32], [32, 0, 64, 32], [32, 32, 64, 64]])
    assert np.isnan(boxes[3]).all()
