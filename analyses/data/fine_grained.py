"""``fine-grained``: generated scenes of several small shapes, in the spirit of V* and CountBench.

Every sample is a fresh scene on an off-white canvas (default 128x128) of 3..7 non-touching
circles, rectangles and triangles in easy-VQA's eight colours, 8..32 px across with
log-uniform sizes, so small targets sit among larger distractors. Four question kinds
(see :mod:`analyses.data.questions`) take turns by index, ``kinds[index % len(kinds)]``;
each has one template of lowercase words ending in a ``?`` word, and its answers are drawn
uniformly: colour 1/8, shape 1/3, count zero..four 1/5, relation yes/no 1/2.

Sample ``index`` of a split depends only on (seed, split, index, the other parameters), so
a smaller ``size`` or a ``limit`` gives a prefix of the same data, and samples are built on
access (under 1 ms each) rather than stored.

>>> ds = load_fine_grained("test", size=4)
>>> [s.kind for s in ds]
['color', 'shape', 'count', 'relation']
>>> s = ds[3]
>>> s.image.size, len(s.target), bool(s.mask.any()), s.answer in ("yes", "no")
((128, 128), 2, True, True)
>>> ds[0].image.tobytes() == load_fine_grained("test", size=1)[0].image.tobytes()
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from PIL import Image

from analyses.data.dataset import Dataset
from analyses.data.palette import COLORS, SHAPES, random_background
from analyses.data.questions import BUILDERS, NUMBER_WORDS, Scene
from analyses.data.sample import Sample
from analyses.data.scene import objects_mask, render

NAME = "fine-grained"
VERSION = "1"  # bump whenever a change here or in questions/scene alters generated samples
KINDS: tuple[str, ...] = tuple(BUILDERS)
SPLIT_STREAMS = {"train": 0, "test": 1}  # mixed into every seed, so splits never coincide
DEFAULT_SIZES = {"train": 20_000, "test": 1_000}


@dataclass(frozen=True)
class FineGrainedParams:
    """Everything that defines a split besides its name. ``size`` None = the split's default."""

    seed: int = 0
    size: int | None = None
    canvas: int = 128
    min_objects: int = 3
    max_objects: int = 7
    min_size: int = 8
    max_size: int = 32
    gap: int = 2
    max_count: int = 4
    kinds: tuple[str, ...] = KINDS

    def validate(self) -> None:
        """Raise a one-sentence ValueError for parameters no scene can satisfy."""
        checks = [
            (self.size is None or self.size >= 0, "size must be >= 0"),
            (self.canvas >= 32, "canvas must be >= 32"),
            (2 <= self.max_objects <= 12, "max_objects must be in 2..12"),
            (1 <= self.min_objects <= self.max_objects, "min_objects must be in 1..max_objects"),
            (self.min_size >= 6, "min_size must be >= 6 (smaller shapes are unrecognisable)"),
            (self.max_size >= 2 * self.min_size, "max_size must be >= 2 * min_size"),
            (self.max_size <= self.canvas // 2, "max_size must be <= canvas / 2"),
            (self.gap >= 1, "gap must be >= 1 so that objects never touch"),
            (
                1 <= self.max_count <= min(self.max_objects, len(NUMBER_WORDS) - 1),
                "max_count must be in 1..min(max_objects, 7)",
            ),
            (
                len(self.kinds) > 0 and set(self.kinds) <= set(KINDS),
                f"kinds must be a non-empty subset of {', '.join(KINDS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid {NAME} parameters: {message}.")


def generate_scene(
    params: FineGrainedParams, split: str, index: int
) -> tuple[Scene, tuple[int, int, int]]:
    """Sample ``index`` as a :class:`Scene` plus its background colour, without rendering."""
    rng = np.random.default_rng([params.seed, SPLIT_STREAMS[split], index])
    background = random_background(rng)
    scene = BUILDERS[params.kinds[index % len(params.kinds)]](rng, params)
    # Shuffle so a target's position in ``boxes`` says nothing about it; targets keep the
    # order the question names them in.
    order = rng.permutation(len(scene.objects))
    new_index = {int(old): new for new, old in enumerate(order)}
    objects = tuple(scene.objects[i] for i in order)
    target = tuple(new_index[i] for i in scene.target)
    if scene.kind == "count":
        target = tuple(sorted(target))
    shuffled = Scene(objects, scene.question, scene.answer, scene.kind, target)
    return shuffled, background


def render_sample(params: FineGrainedParams, split: str, index: int) -> Sample:
    """Sample ``index`` of ``split``, image and mask included."""
    scene, background = generate_scene(params, split, index)
    mask = objects_mask(scene.objects, scene.target, params.canvas)
    mask.setflags(write=False)
    sample_id = f"{NAME}/{split}/{params.seed}/{index}"
    return Sample(
        id=sample_id,
        image=Image.fromarray(render(scene.objects, background, params.canvas)),
        question=scene.question,
        answer=scene.answer,
        kind=scene.kind,
        boxes=tuple(obj.box for obj in scene.objects),
        target=scene.target,
        mask=mask,
        dataset=NAME,
        image_id=sample_id,
    )


PAIRED_KINDS = ("color", "shape")  # the kinds counterfactual() makes a twin of


def counterfactual(sample: Sample, params: dict, split: str, index: int) -> Sample | None:
    """The twin of ``sample`` (sample ``index`` of the split with ``params``) that differs only
    in the asked attribute: its target drawn in another colour (colour questions) or as another
    shape in the same box (shape questions), the question and every other object as they are;
    None for the other kinds. Drawn from a stream of its own, so the sample is unchanged.

    >>> ds = load_fine_grained("test", size=2)
    >>> twin = counterfactual(ds[0], ds.params, "test", 0)
    >>> twin.question == ds[0].question, twin.answer != ds[0].answer, twin.boxes == ds[0].boxes
    (True, True, True)
    """
    resolved = FineGrainedParams(**{**params, "kinds": tuple(params["kinds"])})
    scene, background = generate_scene(resolved, split, index)
    if scene.kind not in PAIRED_KINDS:
        return None
    rng = np.random.default_rng([resolved.seed, SPLIT_STREAMS[split], index, 1])
    target = scene.target[0]
    obj = scene.objects[target]
    if scene.kind == "color":
        answer = str(rng.choice([c for c in COLORS if c != obj.color]))
        changed = replace(obj, color=answer)
    else:
        answer = str(rng.choice([s for s in SHAPES if s != obj.shape]))
        changed = replace(obj, shape=answer)
    objects = tuple(changed if i == target else o for i, o in enumerate(scene.objects))
    mask = objects_mask(objects, scene.target, resolved.canvas)
    mask.setflags(write=False)
    return replace(sample, id=f"{sample.id}/twin", answer=answer, mask=mask,
                   image=Image.fromarray(render(objects, background, resolved.canvas)))


def load_fine_grained(split: str = "test", limit: int | None = None, **params) -> Dataset:
    """The ``fine-grained`` split; ``params`` override :class:`FineGrainedParams` fields."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r} for {NAME}; known splits: train, test.")
    known = {f.name for f in fields(FineGrainedParams)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"unknown {NAME} parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )
    if "kinds" in params:  # accept one kind name or any sequence; tuples keep params hashable
        kinds = params["kinds"]
        params["kinds"] = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    resolved = FineGrainedParams(**params)
    resolved.validate()
    size = DEFAULT_SIZES[split] if resolved.size is None else resolved.size
    size = size if limit is None else min(size, limit)
    resolved = FineGrainedParams(**{**asdict(resolved), "size": size})

    def make_text(index: int) -> tuple[str, str]:
        scene, _ = generate_scene(resolved, split, index)
        return scene.question, scene.answer

    def make_sample(index: int) -> Sample:
        return render_sample(resolved, split, index)

    return Dataset(
        NAME, split, asdict(resolved), size, make_sample, make_text, content=f"version {VERSION}"
    )
