"""The Ray Data side: open parquet splits (local paths, globs, ``s3://`` prefixes, bundled
``datasets://`` sets), check them from their footers, count labels, and hand them to Ray as lazy
Datasets; ``prepare`` and ``inspect`` behind ``raydeep data``; S3 access in ``storage``.

Never imports ``raydeep.trainers``: workers receive a ``FeatureSpec`` (as a dict), not this package's objects.
"""

from raydeep.datasets.digits import ensure_digits_lt, long_tail_counts
from raydeep.datasets.manifest import MANIFEST_NAME, read_manifest, write_manifest, write_split
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.sources import (
    ParquetSplit,
    check_finite,
    default_cache_dir,
    label_histogram,
    open_split,
    to_ray_dataset,
)
from raydeep.datasets.storage import StorageConfig, resolve_storage, s3_filesystem
from raydeep.datasets.synthetic import ensure_synthetic_text, write_synthetic_text

__all__ = [
    "MANIFEST_NAME",
    "FeatureSpec",
    "ParquetSplit",
    "StorageConfig",
    "check_finite",
    "default_cache_dir",
    "ensure_digits_lt",
    "ensure_synthetic_text",
    "label_histogram",
    "long_tail_counts",
    "open_split",
    "read_manifest",
    "resolve_storage",
    "s3_filesystem",
    "to_ray_dataset",
    "write_manifest",
    "write_split",
    "write_synthetic_text",
]
