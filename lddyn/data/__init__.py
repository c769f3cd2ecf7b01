"""Data: long-tail splits, sources, in-memory sets, index streams and tensor augmentation."""

from lddyn.data.longtail import longtail_counts, split_labeled_unlabeled
from lddyn.data.sets import SSLData, build_data, class_prior, split_counts

__all__ = [
    "SSLData",
    "build_data",
    "class_prior",
    "longtail_counts",
    "split_counts",
    "split_labeled_unlabeled",
]
