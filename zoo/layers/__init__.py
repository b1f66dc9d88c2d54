"""Reusable transformer layers, written in `keras.ops` only (TensorFlow and JAX backends)."""

from zoo.layers.feed_forward import FeedForward
from zoo.layers.multi_head_attention import MultiHeadAttention
from zoo.layers.position_embedding import PositionEmbedding
from zoo.layers.rotary_embedding import RotaryEmbedding
from zoo.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding
from zoo.layers.token_and_position_embedding import TokenAndPositionEmbedding
from zoo.layers.transformer_decoder_block import TransformerDecoderBlock
from zoo.layers.transformer_encoder_block import TransformerEncoderBlock

__all__ = [
    "FeedForward",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
]
