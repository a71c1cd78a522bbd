"""Image corruptions (imagecorruptions) and the corrupted copies of a split."""

from quantdet.corruptions.corrupted_split import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTIONS,
    HELDOUT_CORRUPTIONS,
    SEVERITIES,
    corrupt_image,
    corrupt_split,
)

__all__ = [
    "BENCHMARK_CORRUPTIONS", "CORRUPTIONS", "HELDOUT_CORRUPTIONS", "SEVERITIES", "corrupt_image", "corrupt_split",
]
