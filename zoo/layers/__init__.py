"""Reusable transformer layers, written in `keras.ops` only (TensorFlow and JAX backends)."""

from zoo.layers.classification_head import ClassificationHead
from zoo.layers.feed_forward import FeedForward
from zoo.layers.masked_lm_head import MaskedLMHead
from zoo.layers.multi_head_attention import MultiHeadAttention
from zoo.layers.position_embedding import PositionEmbedding
from zoo.layers.rotary_embedding import RotaryEmbedding
from zoo.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding
from zoo.layers.token_and_position_embedding import TokenAndPositionEmbedding
from zoo.layers.transformer_decoder_block import TransformerDecoderBlock
from zoo.layers.transformer_encoder_block import TransformerEncoderBlock

__all__ = [
    "ClassificationHead",
    "FeedForward",
    "MaskedLMHead",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
]
