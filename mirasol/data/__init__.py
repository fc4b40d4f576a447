"""Data utilities: a download-free byte-level tokenizer."""

from mirasol.data.manifest import ManifestDataset, ManifestEntry, ManifestExample, read_manifest
from mirasol.data.media import Media, load_media, sample_clip_path
from mirasol.data.synthetic import SyntheticAVQA, SyntheticConfig, ablate, collate, make_example
from mirasol.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "ManifestDataset", "ManifestEntry", "ManifestExample", "Media",
           "SyntheticAVQA", "SyntheticConfig", "ablate", "collate", "load_media",
           "make_example", "read_manifest", "sample_clip_path"]
