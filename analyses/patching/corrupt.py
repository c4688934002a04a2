"""The corrupt run of each sample (``--corrupt``):

- ``pair``: the data names each sample's counterfactual: a field ``pair`` holding the id of
  another sample (own data: a ``pair`` column, which lands in ``meta``), whose image and
  question are asked; the generated ``fine-grained`` set makes each colour and shape
  question's twin, which differs only in the asked attribute
  (:func:`analyses.data.fine_grained.counterfactual`);
- ``noise``: Gaussian noise on the image embeddings (the stream entering the first layer at
  the image tokens), ``scale`` x their standard deviation, seeded per sample;
- ``blank``: a blank (mid-grey) image of the same size;
- ``swap``: the image of the next sample (in data order, wrapping around) whose answer
  differs, preferring one asked the same question, then one of the same kind.

A counterpart image is resized to the sample's own image size, so both runs have the same
token positions; a counterfactual whose question tokenizes to another length is skipped
(``misaligned``), as is a sample whose corruption leaves the model's answer unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from analyses.data import fine_grained
from probes.errors import UserError

CORRUPTIONS = ("pair", "noise", "blank", "swap")
BLANK_GREY = (128, 128, 128)


def pair_id(sample) -> str | None:
    """The id of the sample's counterfactual, as its data names it (None: not named)."""
    found = sample.meta.get("pair") if sample.meta else None
    return None if found is None or found == "" else str(found)


def partners(samples, corrupt: str) -> dict[int, int]:
    """Sample index -> its counterpart's index in ``samples`` (a dataset) for ``pair`` and
    ``swap`` (empty otherwise, and for generated twins); refused in one sentence when a named
    pair does not exist, or no sample has one."""
    if corrupt == "pair" and samples.name == fine_grained.NAME:
        kinds = set(samples.params.get("kinds", ()))
        if not kinds & set(fine_grained.PAIRED_KINDS):
            paired = " and ".join(fine_grained.PAIRED_KINDS)
            raise UserError(f"--corrupt pair makes twins of fine-grained {paired} questions "
                            "only; this data has none.")
        return {}  # generated: counterpart() makes each twin
    if corrupt == "pair":
        ids = {sample.id: index for index, sample in enumerate(samples)}
        found = {}
        for index, sample in enumerate(samples):
            named = pair_id(sample)
            if named is None:
                continue
            # own data's ids are "FILE/ID": a pair names the ID of a row of the same file
            same_file = f"{sample.id.rpartition('/')[0]}/{named}"
            named = named if named in ids else same_file
            if named not in ids:
                named = pair_id(sample)
                raise UserError(f"sample {sample.id!r} names the pair {named!r}, which is not a "
                                f"sample id of this data (with --limit, both must be within it).")
            found[index] = ids[named]
        if not found:
            raise UserError("--corrupt pair needs data whose samples name their counterfactual "
                            "in a 'pair' field (the id of another sample); this data has none.")
        return found
    if corrupt == "swap":
        asked = [(sample.answer, sample.question, sample.kind) for sample in samples]
        found = {}
        for index, (answer, question, kind) in enumerate(asked):
            others = [(index + step) % len(asked) for step in range(1, len(asked))]
            differing = [j for j in others if asked[j][0] != answer]
            # an image that answers the same question otherwise, else one of the same kind
            for chosen in ([j for j in differing if asked[j][1] == question],
                           [j for j in differing if asked[j][2] == kind], differing):
                if chosen:
                    found[index] = chosen[0]
                    break
        if not found:
            raise UserError("--corrupt swap needs samples with different answers; every sample "
                            "of this data has the same answer.")
        return found
    return {}


def counterpart(samples, found: dict[int, int], corrupt: str, index: int, sample):
    """The sample whose image (and, for ``pair``, question) the corrupt run of ``sample``
    (sample ``index`` of ``samples``) asks; None where it has none."""
    if corrupt == "pair" and samples.name == fine_grained.NAME:
        return fine_grained.counterfactual(sample, samples.params, samples.split, index)
    return None if index not in found else samples[found[index]]


def counterpart_image(sample, corrupt: str, counterpart=None) -> Image.Image:
    """The image the corrupt run of ``sample`` sees (``blank``, ``swap``, ``pair``), at the
    sample's own image size."""
    size = sample.image.size
    if corrupt == "blank":
        return Image.new("RGB", size, BLANK_GREY)
    image = counterpart.image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.BILINEAR)


def noised(embeddings: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """``embeddings`` [tokens, hidden] plus Gaussian noise of ``scale`` x their standard
    deviation (over every entry), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(embeddings.shape, generator=generator, dtype=torch.float32)
    return embeddings.float() + scale * float(embeddings.float().std()) * noise


def sample_seed(seed: int, index: int) -> int:
    """Each sample's noise seed: a pure function of (run seed, sample index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
