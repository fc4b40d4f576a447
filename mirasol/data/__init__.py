"""Data utilities: a download-free byte-level tokenizer."""

from mirasol.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer"]
