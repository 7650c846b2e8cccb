"""Data for minivae: built-in procedural shapes, and MNIST-style datasets with verified downloads.

    from minivae.data import load_dataset, binarize_batch
    ds = load_dataset("mnist")                 # or "fashion-mnist", "binarized-mnist", "shapes"
    xb = binarize_batch(ds.train[:128], rng)   # dynamic binarisation of one batch

shapes.py   make_shapes: square / ellipse / triangle / heart images from known factors
formats.py  read_idx, read_amat: pure-NumPy parsers that check every size before allocating
datasets.py the registry (files, sha256, mirrors), cache and download, splits, binarisation
user.py     your own data: Dataset.from_arrays, load_path (.npy, .npz, folders of images)
"""
from .datasets import DATASETS, Dataset, binarize_batch, load_dataset
from .formats import read_amat, read_idx
from .shapes import make_shapes
from .user import from_arrays, load_path

__all__ = ["make_shapes", "read_idx", "read_amat", "load_dataset", "Dataset", "binarize_batch",
           "DATASETS", "from_arrays", "load_path"]
