"""Datasets for fusionlens: easy-VQA and a generated fine-grained set, one Sample type.

>>> from analyses.data import load_dataset
>>> sample = load_dataset("easy-vqa", "test", limit=1)[0]
>>> sample.kind, sample.answer, sample.image.size, sample.boxes[0] == sample.target_boxes[0]
('shape', 'triangle', (64, 64), True)
"""

from analyses.data.dataset import Dataset
from analyses.data.palette import COLORS, SHAPES
from analyses.data.registry import available_datasets, load_dataset, register_dataset, vocabulary
from analyses.data.sample import Box, Sample

__all__ = [
    "COLORS",
    "SHAPES",
    "Box",
    "Dataset",
    "Sample",
    "available_datasets",
    "load_dataset",
    "register_dataset",
    "vocabulary",
]
