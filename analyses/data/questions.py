"""The four question kinds of ``fine-grained``: each draws its answer first, then a scene.

Drawing the answer uniformly and building the scene to fit it is what keeps every kind
balanced. Each builder returns a :class:`Scene` whose target indexes its ``objects``.

>>> from analyses.data.fine_grained import FineGrainedParams
>>> scene = BUILDERS["count"](np.random.default_rng(3), FineGrainedParams())
>>> scene.question, scene.answer, len(scene.target)
('how many circles are there ?', 'four', 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analyses.data.palette import COLORS, SHAPES
from analyses.data.sample import Box
from analyses.data.scene import SceneObject, place

if TYPE_CHECKING:
    from analyses.data.fine_grained import FineGrainedParams

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven")
RELATION_AXES = {"x": ("left of", "right of"), "y": ("above", "below")}
SIZE_WORD_RATIO = 2.0  # the "large" twin has at least this many times the "small" one's pixels
# Every word the templates below use besides shapes, colours and numbers; tests check this.
_TEMPLATE_WORDS = "what color shape is the small large object objects how many are there ? yes no"
_RELATION_WORDS = "left right of above below"
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {
            *_TEMPLATE_WORDS.split(),
            *_RELATION_WORDS.split(),
            *SHAPES,
            *(s + "s" for s in SHAPES),
            *COLORS,
            *NUMBER_WORDS,
        }
    )
)

Size = tuple[int, int]  # (width, height)
Spec = tuple[str, str, Size]  # (shape, colour, size) of an object not yet placed


@dataclass(frozen=True)
class Scene:
    """A generated question before rendering; ``target`` indexes ``objects``."""

    objects: tuple[SceneObject, ...]
    question: str
    answer: str
    kind: str
    target: tuple[int, ...]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_count(rng: np.random.Generator, p: FineGrainedParams, at_least: int) -> int:
    return int(rng.integers(max(p.min_objects, at_least), p.max_objects + 1))


def object_size(rng: np.random.Generator, p: FineGrainedParams, shape: str) -> Size:
    """Log-uniform longest side in [min_size, max_size]; rectangles get an aspect in [0.5, 1]."""
    side = math.exp(rng.uniform(math.log(p.min_size), math.log(p.max_size + 1)))
    side = min(int(side), p.max_size)
    if shape != "rectangle":
        return side, side
    short = max(4, round(side * rng.uniform(0.5, 1.0)))
    return (side, short) if rng.random() < 0.5 else (short, side)


def _pixel_count(shape: str, size: Size) -> int:
    return SceneObject(shape, "red", Box(0, 0, *size)).pixel_count


def _twin_sizes(rng: np.random.Generator, p: FineGrainedParams, shape: str) -> tuple[Size, Size]:
    """(small, large) sizes of two same-shape objects whose pixel counts differ >= 2x."""
    for _ in range(20):
        a, b = object_size(rng, p, shape), object_size(rng, p, shape)
        small, large = sorted((a, b), key=lambda size: _pixel_count(shape, size))
        if _pixel_count(shape, large) >= SIZE_WORD_RATIO * _pixel_count(shape, small):
            return small, large
    # max_size >= 2 * min_size (validated) puts these two ~4x apart
    return (p.min_size, p.min_size), (p.max_size, p.max_size)


def _distractors(
    rng: np.random.Generator,
    p: FineGrainedParams,
    count: int,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = COLOR_NAMES,
    avoid: Sequence[tuple[str, str]] = (),
) -> list[Spec]:
    """``count`` random objects from the allowed shapes and colours, no (shape, colour) in avoid."""
    specs: list[Spec] = []
    while len(specs) < count:
        shape, color = _pick(rng, shapes), _pick(rng, colors)
        if (shape, color) not in avoid:
            specs.append((shape, color, object_size(rng, p, shape)))
    return specs


def _lay_out(
    specs: Sequence[Spec],
    rng: np.random.Generator,
    p: FineGrainedParams,
    accept: Callable[[list[Box]], bool] | None = None,
) -> tuple[SceneObject, ...]:
    boxes = place([size for _, _, size in specs], p.canvas, p.gap, rng, accept)
    return tuple(
        SceneObject(shape, color, box) for (shape, color, _), box in zip(specs, boxes, strict=True)
    )


def color_question(rng: np.random.Generator, p: FineGrainedParams) -> Scene:
    """Ask "what color is the [small|large] <shape> ?" about the only (or one of two) <shape>."""
    answer, shape = _pick(rng, COLOR_NAMES), _pick(rng, SHAPES)
    count = _object_count(rng, p, at_least=1)
    others = [s for s in SHAPES if s != shape]
    size_word = ""
    if count >= 2 and rng.random() < 1 / 3:
        small, large = _twin_sizes(rng, p, shape)
        size_word = _pick(rng, ("small", "large"))
        target_size, twin_size = (small, large) if size_word == "small" else (large, small)
        specs = [(shape, answer, target_size), (shape, _pick(rng, COLOR_NAMES), twin_size)]
        size_word += " "
    else:
        specs = [(shape, answer, object_size(rng, p, shape))]
    specs += _distractors(rng, p, count - len(specs), shapes=others)
    question = f"what color is the {size_word}{shape} ?"
    return Scene(_lay_out(specs, rng, p), question, answer, "color", (0,))


def shape_question(rng: np.random.Generator, p: FineGrainedParams) -> Scene:
    """Ask "what shape is the <color> object ?" about the only object of that colour."""
    answer, color = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
    specs = [(answer, color, object_size(rng, p, answer))]
    others = [c for c in COLOR_NAMES if c != color]
    specs += _distractors(rng, p, _object_count(rng, p, 1) - 1, colors=others)
    question = f"what shape is the {color} object ?"
    return Scene(_lay_out(specs, rng, p), question, answer, "shape", (0,))


def count_question(rng: np.random.Generator, p: FineGrainedParams) -> Scene:
    """Ask "how many <shape>s are there ?" or "how many <color> objects are there ?"."""
    answer = int(rng.integers(0, p.max_count + 1))
    count = _object_count(rng, p, at_least=max(answer, 1))
    if rng.random() < 0.5:
        shape = _pick(rng, SHAPES)
        counted = _distractors(rng, p, answer, shapes=[shape])
        rest = _distractors(rng, p, count - answer, shapes=[s for s in SHAPES if s != shape])
        question = f"how many {shape}s are there ?"
    else:
        color = _pick(rng, COLOR_NAMES)
        counted = _distractors(rng, p, answer, colors=[color])
        rest = _distractors(rng, p, count - answer, colors=[c for c in COLOR_NAMES if c != color])
        question = f"how many {color} objects are there ?"
    objects = _lay_out(counted + rest, rng, p)
    return Scene(objects, question, NUMBER_WORDS[answer], "count", tuple(range(answer)))


def _order_on_axis(a: Box, b: Box, axis: str, gap: int) -> int:
    """-1 if ``a`` is at least ``gap`` px before ``b`` on the axis, 1 if after, 0 if neither."""
    a0, a1, b0, b1 = (a.x0, a.x1, b.x0, b.x1) if axis == "x" else (a.y0, a.y1, b.y0, b.y1)
    return -1 if a1 + gap <= b0 else 1 if b1 + gap <= a0 else 0


def relation_question(rng: np.random.Generator, p: FineGrainedParams) -> Scene:
    """Ask "is the <color> <shape> <relation> the <color> <shape> ?", unambiguous geometry."""
    first = (_pick(rng, SHAPES), _pick(rng, COLOR_NAMES))
    second = first
    while second == first:
        second = (_pick(rng, SHAPES), _pick(rng, COLOR_NAMES))
    axis, answer = _pick(rng, ("x", "y")), _pick(rng, ("yes", "no"))
    specs = [(shape, color, object_size(rng, p, shape)) for shape, color in (first, second)]
    rest = _object_count(rng, p, at_least=2) - 2
    specs += _distractors(rng, p, rest, avoid=(first, second))

    def separated_on_axis(boxes: list[Box]) -> bool:
        return _order_on_axis(boxes[0], boxes[1], axis, p.gap) != 0

    objects = _lay_out(specs, rng, p, accept=separated_on_axis)
    before, after = RELATION_AXES[axis]
    true_word = before if _order_on_axis(objects[0].box, objects[1].box, axis, p.gap) < 0 else after
    word = true_word if answer == "yes" else (after if true_word == before else before)
    question = f"is the {first[1]} {first[0]} {word} the {second[1]} {second[0]} ?"
    return Scene(objects, question, answer, "relation", (0, 1))


BUILDERS: dict[str, Callable[[np.random.Generator, FineGrainedParams], Scene]] = {
    "color": color_question,
    "shape": shape_question,
    "count": count_question,
    "relation": relation_question,
}
