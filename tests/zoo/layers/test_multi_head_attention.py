import keras
import numpy as np
import pytest
from keras import ops

from tests.zoo.layers.layer_checks import check_layer
from zoo.layers import MultiHeadAttention

BATCH, LENGTH, HIDDEN, HEADS = 2, 7, 16, 4
rng = np.random.default_rng(0)
x = rng.normal(size=(BATCH, LENGTH, HIDDEN)).astype("float32")
source = rng.normal(size=(BATCH, 5, 12)).astype("float32")


def numpy(t):
    return ops.convert_to_numpy(t)


def keras_reference(ours, cross=False):
    """keras.layers.MultiHeadAttention holding the same weights as `ours`."""
    reference = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=HIDDEN // HEADS)
    if cross:
        reference(x, source)
        kv, kv_bias = numpy(ours.key_value_kernel), numpy(ours.key_value_bias)
        q, q_bias = numpy(ours.query_kernel), numpy(ours.query_bias)
        k, v, k_bias, v_bias = kv[:, :HEADS], kv[:, HEADS:], kv_bias[:HEADS], kv_bias[HEADS:]
    else:
        reference(x, x)
        qkv, qkv_bias = numpy(ours.qkv_kernel), numpy(ours.qkv_bias)
        q, k, v = np.split(qkv, 3, axis=1)
        q_bias, k_bias, v_bias = np.split(qkv_bias, 3, axis=0)
    reference._query_dense.set_weights([q, q_bias])
    reference._key_dense.set_weights([k, k_bias])
    reference._value_dense.set_weights([v, v_bias])
    reference._output_dense.set_weights([numpy(ours.output_kernel), numpy(ours.output_bias)])
    return reference


def test_equals_keras_attention_without_masks():
    ours = MultiHeadAttention(num_heads=HEADS)
    actual = numpy(ours(x))
    np.testing.assert_allclose(actual, numpy(keras_reference(ours)(x, x)), atol=1e-5)


def test_equals_keras_attention_with_padding_and_causal_masks():
    ours = MultiHeadAttention(num_heads=HEADS, causal=True)
    padding = np.ones((BATCH, LENGTH), bool)
    padding[1, 4:] = False
    actual = numpy(ours(x, padding_mask=padding))
    reference = keras_reference(ours)
    expected = numpy(reference(x, x, attention_mask=np.broadcast_to(padding[:, None, :], (BATCH, LENGTH, LENGTH)), use_causal_mask=True))
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_equals_keras_attention_with_explicit_attention_mask():
    ours = MultiHeadAttention(num_heads=HEADS)
    mask = rng.random((BATCH, LENGTH, LENGTH)) > 0.3
    mask[:, :, 0] = True  # every query keeps at least one key
    np.testing.assert_allclose(
        numpy(ours(x, attention_mask=mask)), numpy(keras_reference(ours)(x, x, attention_mask=mask)), atol=1e-5
    )


def test_cross_attention_equals_keras_attention():
    ours = MultiHeadAttention(num_heads=HEADS)
    padding = np.ones((BATCH, 5), bool)
    padding[0, 3:] = False
    actual = numpy(ours(x, source, padding_mask=padding))
    mask = np.broadcast_to(padding[:, None, :], (BATCH, LENGTH, 5))
    np.testing.assert_allclose(actual, numpy(keras_reference(ours, cross=True)(x, source, attention_mask=mask)), atol=1e-5)


@pytest.mark.parametrize("use_rotary", [False, True])
def test_causality(use_rotary):
    layer = MultiHeadAttention(num_heads=HEADS, causal=True, use_rotary=use_rotary)
    before = numpy(layer(x))
    for t in range(LENGTH - 1):
        changed = x.copy()
        changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
        after = numpy(layer(changed))
        np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-6)
        assert not np.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-3)


def test_padded_positions_do_not_leak_into_real_positions():
    layer = MultiHeadAttention(num_heads=HEADS)
    padding = np.ones((BATCH, LENGTH), bool)
    padding[:, 5:] = False
    changed = x.copy()
    changed[:, 5:] = 100 * rng.normal(size=changed[:, 5:].shape)
    np.testing.assert_allclose(
        numpy(layer(changed, padding_mask=padding))[:, :5], numpy(layer(x, padding_mask=padding))[:, :5], atol=1e-5
    )


@pytest.mark.parametrize("num_key_value_heads,use_rotary", [(None, False), (2, True), (1, False)])
def test_kv_cache_decoding_equals_full_causal_pass(num_key_value_heads, use_rotary):
    layer = MultiHeadAttention(num_heads=HEADS, num_key_value_heads=num_key_value_heads, causal=True, use_rotary=use_rotary)
    full = numpy(layer(x))
    kv_heads = num_key_value_heads or HEADS
    cache = ops.zeros((BATCH, 2, LENGTH, kv_heads, HIDDEN // HEADS))
    # Prefill the first 3 positions at once, then decode one token at a time.
    prefill, cache = layer(x[:, :3], cache=cache, cache_index=0)
    outputs = [numpy(prefill)]
    for index in range(3, LENGTH):
        step, cache = layer(x[:, index : index + 1], cache=cache, cache_index=index)
        outputs.append(numpy(step))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_grouped_query_attention_equals_attention_with_repeated_key_value_heads():
    grouped = MultiHeadAttention(num_heads=HEADS, num_key_value_heads=2)
    grouped(x)
    full = MultiHeadAttention(num_heads=HEADS)
    full(x)
    qkv, bias = numpy(grouped.qkv_kernel), numpy(grouped.qkv_bias)
    # Query head h uses key/value head h // 2.
    repeat = lambda a: np.repeat(a, 2, axis=0 if a.ndim == 2 else 1)  # noqa: E731
    q, k, v = qkv[:, :HEADS], qkv[:, HEADS : HEADS + 2], qkv[:, HEADS + 2 :]
    qb, kb, vb = bias[:HEADS], bias[HEADS : HEADS + 2], bias[HEADS + 2 :]
    full.set_weights([
        np.concatenate([q, repeat(k), repeat(v)], axis=1),
        np.concatenate([qb, repeat(kb), repeat(vb)], axis=0),
        numpy(grouped.output_kernel),
        numpy(grouped.output_bias),
    ])
    np.testing.assert_allclose(numpy(grouped(x)), numpy(full(x)), atol=1e-5)


def test_attention_dropout_only_in_training():
    layer = MultiHeadAttention(num_heads=HEADS, dropout=0.5)
    np.testing.assert_allclose(numpy(layer(x)), numpy(layer(x, training=False)))
    assert not np.allclose(numpy(layer(x, training=True)), numpy(layer(x)))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        MultiHeadAttention(num_heads=4, num_key_value_heads=3)
    layer = MultiHeadAttention(num_heads=HEADS, causal=True)
    with pytest.raises(ValueError, match="cache_index"):
        layer(x, cache=ops.zeros((BATCH, 2, LENGTH, HEADS, 4)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 2, "causal": True},
        {"num_heads": 4, "num_key_value_heads": 2, "use_rotary": True, "use_bias": False},
    ],
)
def test_layer_contract_self_attention(kwargs, tmp_path):
    padding = np.ones((BATCH, LENGTH), "int32")
    check_layer(MultiHeadAttention, kwargs, {"query": x, "padding_mask": padding}, tmp_path)


def test_layer_contract_cross_attention(tmp_path):
    check_layer(MultiHeadAttention, {"num_heads": 2, "output_dim": 6}, {"query": x, "value": source}, tmp_path)
