"""Drop-in nn.Modules: they hold parameters and call the ops."""

from mirasol.layers.attention import ChunkedCausalSelfAttention
from mirasol.layers.rotary import RotaryEmbedding

__all__ = ["ChunkedCausalSelfAttention", "RotaryEmbedding"]
