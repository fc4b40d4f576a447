"""Drop-in nn.Modules: they hold parameters and call the ops. Every fast layer has a
``backend`` attribute; :func:`set_backend` sets it throughout a model."""

from torch import nn

from mirasol.layers.attention import ChunkedCausalSelfAttention, CrossModalAttention
from mirasol.layers.combiner import TransformerCombiner, TTMCombiner
from mirasol.layers.decoder import CausalSelfAttention, DecoderLayer, KVCache
from mirasol.layers.kv_cache import ChunkKVCache
from mirasol.layers.rotary import RotaryEmbedding
from mirasol.layers.token_learner import TokenLearner
from mirasol.layers.transformer import Block, Mlp


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Route every fast layer inside ``module`` to ``backend``; returns the module."""
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return module


__all__ = ["Block", "CausalSelfAttention", "ChunkKVCache", "ChunkedCausalSelfAttention",
           "CrossModalAttention", "DecoderLayer", "KVCache", "Mlp", "RotaryEmbedding",
           "TokenLearner", "TransformerCombiner", "TTMCombiner", "set_backend"]
