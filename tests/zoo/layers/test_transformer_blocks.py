import keras_hub
import numpy as np
import pytest
from keras import ops

from tests.zoo.layers.layer_checks import check_layer
from zoo.layers import TransformerDecoderBlock, TransformerEncoderBlock

BATCH, LENGTH, HIDDEN, HEADS = 2, 6, 16, 4
rng = np.random.default_rng(3)
x = rng.normal(size=(BATCH, LENGTH, HIDDEN)).astype("float32")
encoder_outputs = rng.normal(size=(BATCH, 4, HIDDEN)).astype("float32")


def numpy(t):
    return ops.convert_to_numpy(t)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_equals_keras_hub_transformer_encoder(norm_first):
    ours = TransformerEncoderBlock(HEADS, 32, activation="relu", norm_first=norm_first)
    padding = np.ones((BATCH, LENGTH), bool)
    padding[0, 4:] = False
    ours(x)
    reference = keras_hub.layers.TransformerEncoder(32, HEADS, activation="relu", normalize_first=norm_first)
    reference(x)
    qkv, qkv_bias = ours.attention.query_key_value_dense.get_weights()
    q, k, v = np.split(qkv, 3, axis=1)
    q_bias, k_bias, v_bias = np.split(qkv_bias, 3, axis=0)
    # keras.layers.MultiHeadAttention's order: query, key, value, output (kernel, then bias).
    reference._self_attention_layer.set_weights([q, q_bias, k, k_bias, v, v_bias, *ours.attention.output_dense.get_weights()])
    reference._self_attention_layer_norm.set_weights(ours.attention_norm.get_weights())
    reference._feedforward_layer_norm.set_weights(ours.feed_forward_norm.get_weights())
    reference._feedforward_intermediate_dense.set_weights(ours.feed_forward.intermediate_dense.get_weights())
    reference._feedforward_output_dense.set_weights(ours.feed_forward.output_dense.get_weights())
    np.testing.assert_allclose(
        numpy(ours(x, padding_mask=padding)), numpy(reference(x, padding_mask=padding)), atol=1e-5
    )


def test_feed_forward_dropout_only_where_asked():
    # BERT, GPT-2 and keras-hub put no dropout inside the feed-forward network: neither do we by default.
    plain = TransformerEncoderBlock(HEADS, 32, dropout=0.3)
    assert plain.feed_forward.dropout == 0.0 and plain.residual_dropout.rate == 0.3
    inner_only = TransformerEncoderBlock(HEADS, 32, dropout=0.0, feed_forward_dropout=0.5)
    inference = numpy(inner_only(x, training=False))
    assert not np.allclose(numpy(inner_only(x, training=True)), inference)
    no_dropout = TransformerEncoderBlock(HEADS, 32, dropout=0.0)
    np.testing.assert_allclose(numpy(no_dropout(x, training=True)), numpy(no_dropout(x, training=False)), atol=1e-6)
    restored = TransformerDecoderBlock.from_config(TransformerDecoderBlock(HEADS, 32, feed_forward_dropout=0.2).get_config())
    assert restored.feed_forward.dropout == 0.2


def test_decoder_block_is_causal():
    block = TransformerDecoderBlock(HEADS, 32)
    before = numpy(block(x))
    for t in range(LENGTH - 1):
        changed = x.copy()
        changed[:, t + 1 :] += rng.normal(size=changed[:, t + 1 :].shape)
        np.testing.assert_allclose(numpy(block(changed))[:, : t + 1], before[:, : t + 1], atol=1e-5)


def test_encoder_block_padding_does_not_leak():
    block = TransformerEncoderBlock(HEADS, 32)
    padding = np.ones((BATCH, LENGTH), bool)
    padding[:, 4:] = False
    changed = x.copy()
    changed[:, 4:] = 50 * rng.normal(size=changed[:, 4:].shape)
    np.testing.assert_allclose(
        numpy(block(changed, padding_mask=padding))[:, :4], numpy(block(x, padding_mask=padding))[:, :4], atol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs", [{}, {"num_key_value_heads": 2, "use_rotary": True, "normalization": "rms_norm", "activation": "swiglu"}]
)
def test_decoder_block_kv_cache_equals_full_pass(kwargs):
    block = TransformerDecoderBlock(HEADS, 32, **kwargs)
    full = numpy(block(x))
    kv_heads = kwargs.get("num_key_value_heads", HEADS)
    cache = ops.zeros((BATCH, 2, LENGTH, kv_heads, HIDDEN // HEADS))
    steps = []
    for index in range(LENGTH):
        out, cache = block(x[:, index : index + 1], cache=cache, cache_index=index)
        steps.append(numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_decoder_block_with_cross_attention_uses_only_real_encoder_tokens():
    block = TransformerDecoderBlock(HEADS, 32, cross_attention=True)
    encoder_padding = np.ones((BATCH, 4), bool)
    encoder_padding[:, 3:] = False
    changed = encoder_outputs.copy()
    changed[:, 3:] = 10.0
    base = numpy(block(x, encoder_outputs, encoder_padding_mask=encoder_padding))
    np.testing.assert_allclose(numpy(block(x, changed, encoder_padding_mask=encoder_padding)), base, atol=1e-5)
    assert not np.allclose(numpy(block(x, changed)), numpy(block(x, encoder_outputs)), atol=1e-3)
    with pytest.raises(ValueError, match="encoder_outputs"):
        block(x)


def test_layer_contracts(tmp_path):
    padding = np.ones((BATCH, LENGTH), "int32")
    for norm_first in (False, True):
        check_layer(
            TransformerEncoderBlock,
            {"num_heads": 2, "intermediate_dim": 32, "norm_first": norm_first},
            {"inputs": x, "padding_mask": padding},
            tmp_path,
        )
    check_layer(TransformerDecoderBlock, {"num_heads": 2, "intermediate_dim": 32}, {"inputs": x}, tmp_path)
    check_layer(
        TransformerDecoderBlock,
        {"num_heads": 2, "intermediate_dim": 32, "cross_attention": True, "normalization": "rms_norm"},
        {"inputs": x, "encoder_outputs": encoder_outputs},
        tmp_path,
    )
