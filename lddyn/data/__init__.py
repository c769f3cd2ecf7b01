"""Data: long-tail splits, sources, in-memory sets, index streams and tensor augmentation."""

from lddyn.data import builders as _builders  # noqa: F401  (registers every data.dataset)
from lddyn.data.errors import DataFileError
from lddyn.data.longtail import longtail_counts, split_labeled_unlabeled
from lddyn.data.sets import DATASETS, SSLData, build_data, class_prior, split_counts

__all__ = [
    "DATASETS",
    "DataFileError",
    "SSLData",
    "build_data",
    "class_prior",
    "longtail_counts",
    "split_counts",
    "split_labeled_unlabeled",
]
