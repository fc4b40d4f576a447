"""Drop-in nn.Modules: they hold parameters and call the ops."""

from mirasol.layers.attention import ChunkedCausalSelfAttention, CrossModalAttention
from mirasol.layers.rotary import RotaryEmbedding

__all__ = ["ChunkedCausalSelfAttention", "CrossModalAttention", "RotaryEmbedding"]
