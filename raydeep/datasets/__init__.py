"""raydeep's data: open parquet splits (local paths, globs, ``s3://`` prefixes, bundled
``datasets://`` sets) and check them from their footers (``splits``), scan their labels
(``scan``), and get them to the workers, held in memory (``memory``) or streamed through Ray Data
(``streaming``, which imports Ray and so is not re-exported here); ``prepare`` and ``inspect``
behind ``raydeep data``; S3 access in ``storage``.

Never imports ``raydeep.trainers``: workers receive a ``FeatureSpec`` (as a dict), not this package's objects.
"""

from raydeep.datasets.bundled import default_cache_dir
from raydeep.datasets.bundled.digits import ensure_digits_lt, long_tail_counts
from raydeep.datasets.bundled.synthetic import ensure_synthetic_text, write_synthetic_text
from raydeep.datasets.manifest import MANIFEST_NAME, read_manifest, write_manifest, write_split
from raydeep.datasets.scan import check_finite, label_histogram
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.splits import ParquetSplit, open_split
from raydeep.datasets.storage import StorageConfig, resolve_storage, s3_filesystem

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
    "write_manifest",
    "write_split",
    "write_synthetic_text",
]
