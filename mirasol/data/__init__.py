"""Data for the model: a download-free byte-level tokenizer, the synthetic audio-video QA
task, decoding of real clips (PyAV) and manifests of them. Builds on :mod:`mirasol.model`
(clips come in a model's format); the model never imports this package."""

from mirasol.data.manifest import ManifestDataset, ManifestEntry, ManifestExample, read_manifest
from mirasol.data.media import (Media, MediaChunk, MediaError, load_media, media_args,
                                sample_clip_path, stream_media)
from mirasol.data.synthetic import SyntheticAVQA, SyntheticConfig, ablate, collate, make_example
from mirasol.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "ManifestDataset", "ManifestEntry", "ManifestExample", "Media",
           "MediaChunk", "MediaError", "SyntheticAVQA", "SyntheticConfig", "ablate", "collate",
           "load_media", "make_example", "media_args", "read_manifest", "sample_clip_path",
           "stream_media"]
