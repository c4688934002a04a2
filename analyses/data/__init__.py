"""Datasets for fusionlens: easy-VQA, a generated fine-grained set, public benchmarks read
offline (V*, MMStar, RealWorldQA, TextVQA, CountBench, POPE, GQA, RefCOCO/+/g) and users' own
files, one Sample type.

>>> from analyses.data import load_dataset
>>> sample = load_dataset("easy-vqa", "test", limit=1)[0]
>>> sample.kind, sample.answer, sample.image.size, sample.boxes[0] == sample.target_boxes[0]
('shape', 'triangle', (64, 64), True)
"""

from analyses.data.dataset import Dataset
from analyses.data.palette import COLORS, SHAPES
from analyses.data.prompts import default_template
from analyses.data.registry import available_datasets, load_dataset, register_dataset, vocabulary
from analyses.data.sample import Box, Sample

__all__ = [
    "COLORS",
    "SHAPES",
    "Box",
    "Dataset",
    "Sample",
    "available_datasets",
    "default_template",
    "load_dataset",
    "register_dataset",
    "vocabulary",
]
